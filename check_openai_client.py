#!/usr/bin/env python3
"""One tiny chat call through the backend's own `openai` client, with its error messages.

Usage: python check_openai_client.py ["your prompt"]
Spends exactly one API call (plus retries on throttling/5xx). Exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import sys
import time

from my_ml_backend.jobs.cli import settings_from_env
from my_ml_backend.jobs.diagnostics import Report, describe, force_utf8_stdout
from my_ml_backend.llm.client import LLMClient
from my_ml_backend.llm.errors import PredictionError


def main() -> int:
    force_utf8_stdout()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="?", default="用一句话介绍你自己。(Introduce yourself in one sentence.)")
    prompt = parser.parse_args().prompt  # --help exits here, before any call
    settings = settings_from_env()
    print(describe(settings))
    report = Report()
    started = time.monotonic()
    try:
        reply = LLMClient(settings).chat([{"role": "user", "content": prompt}])
    except PredictionError as err:
        report.fail(str(err))
        return report.exit_code
    seconds = time.monotonic() - started
    report.ok(f"调用成功 (call succeeded) in {seconds:.2f}s")
    print(f"   tokens: {reply.usage.prompt_tokens} prompt + {reply.usage.completion_tokens} completion")
    if reply.quota_remaining is not None:
        print(f"   剩余配额 (quota remaining): {reply.quota_remaining}")
    print(f"   回复 (reply): {reply.text}")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
