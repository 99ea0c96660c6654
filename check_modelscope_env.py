#!/usr/bin/env python3
"""Check that this machine can run the backend and reach the model API.

Usage: python check_modelscope_env.py [--offline]
Prints ✅/⚠️/❌ lines and exits non-zero when something is wrong. The API key is only
ever shown masked. The endpoint check lists models (GET /models); it makes no chat call.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from urllib.parse import urlparse

from my_ml_backend.jobs.diagnostics import Report, describe, force_utf8_stdout, settings_from_env
from my_ml_backend.server.stack import web_stack
from my_ml_backend.telemetry.logs import mask

PACKAGES = {
    "label_studio_ml": "label-studio-ml",
    "label_studio_sdk": "label-studio-sdk",
    "openai": "openai",
    "dotenv": "python-dotenv",
    "flask": "Flask",
    "gunicorn": "gunicorn",
    "redis": "redis",
    "rq": "rq",
}


def check_python(report: Report) -> None:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info >= (3, 11):  # noqa: UP036 - users may run an older Python
        report.ok(f"Python {version}")
    else:
        report.fail(f"Python {version}: 需要 3.11 或更高 (Python 3.11+ required)")


def check_packages(report: Report) -> None:
    for module, dist in PACKAGES.items():
        try:
            importlib.import_module(module)
            report.ok(f"{dist} {importlib.metadata.version(dist)}")
        except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
            reason = f"{type(exc).__name__}: {exc}"
            report.fail(f"{dist}: 无法导入 (cannot import: {reason}); pip install -r requirements.txt")


def check_web_stack(report: Report) -> None:
    """Versions of the web stack against the advisories they fix (label-studio-ml pins 2021 releases)."""
    for dist, installed, floor, ok in web_stack():
        if ok:
            report.ok(f"{dist} {installed} (>= {floor.minimum})")
        else:
            report.warn(
                f"{dist} {installed or '未安装 (not installed)'}: 低于 {floor.minimum}，有已公开漏洞 "
                f"(older than {floor.minimum}: {floor.advisories}); "
                "用 scripts/setup_venv.sh 或 `uv pip install -r requirements.txt --override overrides.txt` 安装"
            )


def check_env(report: Report, settings) -> None:  # noqa: ANN001
    if settings.api_key:
        report.ok(f"MODELSCOPE_API_KEY = {mask(settings.api_key)}")
    else:
        report.fail("MODELSCOPE_API_KEY 未设置 (not set): 在 .env 或环境变量中设置 (set it in .env or the environment)")
    url = urlparse(settings.base_url)
    if url.scheme in ("http", "https") and url.netloc:
        report.ok(f"MODELSCOPE_API_URL = {settings.base_url}")
    else:
        report.fail(f"MODELSCOPE_API_URL 格式不对 (malformed URL): {settings.base_url!r}")
    report.ok(f"模型 (model) = {settings.model}, temperature={settings.temperature}, timeout={settings.timeout:g}s")


def check_endpoint(report: Report, settings) -> None:  # noqa: ANN001
    import openai

    from my_ml_backend.llm.errors import classify

    timeout = min(settings.timeout, 15)
    client = openai.OpenAI(
        api_key=settings.api_key or "missing", base_url=settings.base_url, timeout=timeout, max_retries=0
    )
    try:
        models = [m.id for m in client.models.list()]
    except openai.NotFoundError:
        report.warn("端点不提供 /models 列表 (endpoint has no /models); 请运行 test_openai_client.py")
        return
    except Exception as exc:  # noqa: BLE001
        err = classify(exc, model=settings.model, base_url=settings.base_url, timeout=settings.timeout)
        report.fail(f"端点检查失败 (endpoint check failed): {err}")
        return
    report.ok(f"端点可访问 (endpoint answers): {len(models)} 个模型 (models)")
    if models and settings.model not in models:
        report.warn(f"模型 {settings.model} 不在 /models 列表中 (not listed by the endpoint); 请确认名称")


def main() -> int:
    force_utf8_stdout()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offline", action="store_true", help="skip the endpoint check")
    args = parser.parse_args()
    report = Report()
    check_python(report)
    check_packages(report)
    check_web_stack(report)
    settings = settings_from_env()
    print(f"   {describe(settings)}")
    check_env(report, settings)
    if not args.offline:
        check_endpoint(report, settings)
    print("全部通过 (all checks passed)" if report.exit_code == 0 else f"{report.failed} 项失败 (checks failed)")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
