#!/usr/bin/env python3
"""Check that this machine can run the backend and reach the model API.

Usage: python check_modelscope_env.py [--offline]
Prints ✅/⚠️/❌ lines and exits non-zero when something is wrong. The API key is only
ever shown masked. The endpoint check lists models (GET /models); it makes no chat call. For each model of
the pool (MODELSCOPE_MODEL, MODELSCOPE_FALLBACK_MODELS) it says whether the endpoint lists it and what
quota the last answers reported (the quota ledger in DATA_DIR or Redis).
Runs with any Python 3: without the project's packages it names the missing ones and
the project's `.venv` instead of failing with a traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

from my_ml_backend.jobs.diagnostics import Report, force_utf8_stdout, plain  # standard library only

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
# Importable module -> distribution; the versions wanted come from requirements.txt and overrides.txt.
PACKAGES = {
    "label_studio_ml": "label-studio-ml",
    "label_studio_sdk": "label-studio-sdk",
    "openai": "openai",
    "dotenv": "python-dotenv",
    "pydantic_settings": "pydantic-settings",
    "packaging": "packaging",
    "jinja2": "Jinja2",
    "tzdata": "tzdata",
    "flask": "Flask",
    "gunicorn": "gunicorn",
    "redis": "redis",
    "rq": "rq",
}
MODELSCOPE_TOKEN = re.compile(r"ms-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
VENV_HINT = (
    f"请在项目的虚拟环境 {VENV} 中运行 (run it in the project's venv): "
    "source .venv/bin/activate 或 (or) .venv/bin/python check_modelscope_env.py；"
    "还没有 .venv 时 (no .venv yet): bash scripts/start.sh 或 (or) source scripts/setup_venv.sh requirements.txt"
)


def wanted_versions(requirements: str) -> dict[str, str]:
    """Distribution (lower case) -> version specifier, from requirements.txt's simple lines."""
    wanted = {}
    for line in requirements.splitlines():
        line = line.split("#", 1)[0].strip()
        if match := re.match(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*([<>=!~].*)?$", line):
            wanted[match.group(1).lower()] = (match.group(2) or "").replace(" ", "")
    return wanted


def satisfies(version: str, spec: str) -> bool:
    """Whether `version` meets `spec` (PEP 440 through `packaging` when present, else `==` pins only)."""
    if not spec:
        return True
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:
        pins = [part[2:] for part in spec.split(",") if part.startswith("==")]
        return all(version == pin for pin in pins)
    return SpecifierSet(spec).contains(version, prereleases=True)


def installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python(report: Report) -> None:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info >= (3, 11):  # noqa: UP036 - users may run an older Python
        report.ok(f"Python {version} ({sys.executable})")
    else:
        report.fail(f"Python {version}: 需要 3.11 或更高 (Python 3.11+ required)")
    in_venv = Path(sys.prefix).resolve() == VENV.resolve()
    if not in_venv:
        where = "存在 (exists)" if VENV.is_dir() else "还不存在 (does not exist yet)"
        report.warn(f"没有使用项目的 .venv (not the project's venv); {VENV} {where}")


def check_packages(report: Report) -> int:
    """✅ per package at the version the project installs; returns how many are missing."""
    wanted: dict[str, str] = {}
    for name in ("requirements.txt", "overrides.txt"):  # what scripts/setup_venv.sh installs, overrides last
        if (ROOT / name).is_file():
            wanted.update(wanted_versions((ROOT / name).read_text(encoding="utf-8")))
    missing = 0
    for module, dist in PACKAGES.items():
        version = installed(dist)
        if version is None or importlib.util.find_spec(module) is None:
            missing += 1
            report.fail(f"{dist}: 未安装 (not installed)")
            continue
        spec = wanted.get(dist.lower(), "")
        if satisfies(version, spec):
            report.ok(f"{dist} {version}")
        else:
            report.fail(f"{dist} {version}: 项目安装的是 (the project installs) {dist}{spec}; {VENV_HINT}")
    return missing


def check_web_stack(report: Report) -> None:
    """Versions of the web stack against the advisories they fix (label-studio-ml pins 2021 releases)."""
    from my_ml_backend.server.stack import web_stack

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
    from my_ml_backend.settings import reveal
    from my_ml_backend.settings.endpoint import MODELSCOPE
    from my_ml_backend.telemetry.logs import mask

    key = reveal(settings.api_key)
    if not key:
        report.fail("MODELSCOPE_API_KEY 未设置 (not set): 在 .env 或环境变量中设置 (set it in .env or the environment)")
    else:
        report.ok(f"MODELSCOPE_API_KEY = {mask(key)}")
        if settings.endpoint == MODELSCOPE and not MODELSCOPE_TOKEN.fullmatch(key):
            report.warn(
                "MODELSCOPE_API_KEY 看起来不像 ModelScope 的访问令牌 (does not look like a ModelScope token): "
                "应为 ms-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx，见 https://modelscope.cn/my/myaccesstoken "
                "(no quotes, spaces or 'Bearer ')"
            )
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
    from my_ml_backend.settings import reveal

    client = openai.OpenAI(
        api_key=reveal(settings.api_key) or "missing", base_url=settings.base_url, timeout=timeout, max_retries=0
    )
    try:
        models = [m.id for m in client.models.list()]
    except openai.NotFoundError:
        report.warn("端点不提供 /models 列表 (endpoint has no /models); 请运行 check_openai_client.py")
        check_pool(report, settings, [])
        return
    except Exception as exc:  # noqa: BLE001
        err = classify(exc, model=settings.model, base_url=settings.base_url, timeout=settings.timeout)
        report.fail(f"端点检查失败 (endpoint check failed): {plain(str(err))}")
        return
    report.ok(f"端点可访问 (endpoint answers): {len(models)} 个模型 (models)")
    if models and settings.model not in models:
        report.warn(f"模型 {settings.model} 不在 /models 列表中 (not listed by the endpoint); 请确认名称")
    check_pool(report, settings, models)


def check_pool(report: Report, settings, listed: list[str]) -> None:  # noqa: ANN001
    """Which pool models the endpoint lists, and the quota the last answers reported (from the ledger)."""
    from my_ml_backend.llm.pool import pool_models
    from my_ml_backend.llm.quota import ACCOUNT, open_ledger

    ledger = open_ledger(settings)
    today = ledger.today()
    print(f"   模型池 (model pool, tried in order); 额度日 (quota day) {ledger.clock.day()}, "
          f"下次恢复 (next reset) {ledger.clock.describe_reset()[1]}")
    if ACCOUNT in today:
        account = today[ACCOUNT]
        print(f"   账号今日剩余 (account, left today): {account.remaining}/{account.limit}")
    for model in pool_models(settings):
        quota = today.get(model)
        if quota is None:
            told = "今日尚无记录 (no answer recorded today)"
        elif quota.out:
            told = f"今日已停用 (out for today: {quota.out})"
        else:
            told = f"今日剩余 (left today) {quota.remaining}/{quota.limit}"
        known = model in listed if listed else None
        listing = {True: "端点已列出 (listed)", False: "端点未列出 (not listed)", None: "?"}[known]
        line = f"{model}: {listing}; {told}"
        if known is False or (quota is not None and quota.exhausted):
            report.warn(line)
        else:
            report.ok(line)


def main() -> int:
    force_utf8_stdout()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offline", action="store_true", help="skip the endpoint check")
    args = parser.parse_args()
    report = Report()
    check_python(report)
    if check_packages(report):
        print(f"缺少依赖，无法继续检查 (packages missing: stopping here). {VENV_HINT}")
        return 1
    check_web_stack(report)
    from my_ml_backend.jobs.cli import settings_from_env
    from my_ml_backend.jobs.diagnostics import describe
    from my_ml_backend.settings import SettingsError

    try:
        settings = settings_from_env()
    except SettingsError as exc:
        report.fail(f"配置错误 (configuration error): {exc}")
        return report.exit_code
    print(f"   {describe(settings)}")
    check_env(report, settings)
    if not args.offline:
        check_endpoint(report, settings)
    print("全部通过 (all checks passed)" if report.exit_code == 0 else f"{report.failed} 项失败 (checks failed)")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
