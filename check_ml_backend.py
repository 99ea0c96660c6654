#!/usr/bin/env python3
"""Call a running backend as Label Studio does: /health, /setup, then /predict.

Usage: python check_ml_backend.py [URL] [--user U --password P]
URL defaults to http://localhost:9090. The predict step spends one API call.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from my_ml_backend.jobs.diagnostics import Report, force_utf8_stdout, plain

EXAMPLES = Path(__file__).resolve().parent / "examples"


def call(url: str, body: dict | None, auth: str | None, timeout: float) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    request.add_header("Content-Type", "application/json")
    if auth:
        request.add_header("Authorization", f"Basic {auth}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")[:500]


def main() -> int:
    force_utf8_stdout()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", nargs="?", default="http://localhost:9090")
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()
    base = args.url.rstrip("/")
    auth = base64.b64encode(f"{args.user}:{args.password}".encode()).decode() if args.user else None
    config = (EXAMPLES / "configs" / "text_classification.xml").read_text(encoding="utf-8")
    task = json.loads((EXAMPLES / "tasks.json").read_text(encoding="utf-8"))["text_classification"]
    report = Report()
    try:
        status, body = call(f"{base}/health", None, auth, 5)
    except OSError as exc:
        report.fail(f"无法连接 {base} (cannot connect): {exc}. 后端启动了吗? (is the backend running?)")
        return report.exit_code
    (report.ok if status == 200 else report.fail)(f"/health {status}: {body}")
    status, body = call(f"{base}/setup", {"project": "1.0", "schema": config}, auth, 10)
    (report.ok if status == 200 else report.fail)(f"/setup {status}: {body}")
    payload = {"tasks": [{"id": 1, **task}], "project": "1.0", "label_config": config, "params": {"context": None}}
    status, body = call(f"{base}/predict", payload, auth, 120)
    if status != 200 or not isinstance(body, dict):
        report.fail(f"/predict {status}: {body}")
        return report.exit_code
    prediction = body["results"][0]
    print(json.dumps(prediction, ensure_ascii=False, indent=2))
    if "error" in prediction:
        report.fail(f"/predict: {plain(prediction['error'])}")
    else:
        count = len(prediction["result"])
        report.ok(f"/predict: {count} 个结果 (results), model_version={prediction['model_version']}")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
