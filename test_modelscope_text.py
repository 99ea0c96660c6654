#!/usr/bin/env python3
"""Run the five example task types through the backend's own predict path.

Usage: python test_modelscope_text.py [NAME ...]
NAME is one of: text_classification, code_comments, text_analysis, technical_qa,
error_debugging (default: all five; one API call each). Prints the Label Studio
results and whether they validate against the config. Exits non-zero on failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from label_studio_sdk.label_interface import LabelInterface

from my_ml_backend.jobs.diagnostics import Report, describe, force_utf8_stdout, settings_from_env
from my_ml_backend.model import NewModel

EXAMPLES = Path(__file__).resolve().parent / "examples"


def main() -> int:
    force_utf8_stdout()
    print(describe(settings_from_env()))
    tasks = json.loads((EXAMPLES / "tasks.json").read_text(encoding="utf-8"))
    names = sys.argv[1:] or list(tasks)
    report = Report()
    for name in names:
        if name not in tasks:
            report.fail(f"未知任务类型 (unknown task type) {name}; choose from {', '.join(tasks)}")
            continue
        config = (EXAMPLES / "configs" / f"{name}.xml").read_text(encoding="utf-8")
        print(f"\n=== {name} ===")
        [prediction] = NewModel(label_config=config).predict([{"id": 1, **tasks[name]}])
        print(json.dumps(prediction, ensure_ascii=False, indent=2))
        if "error" in prediction:
            report.fail(f"{name}: {prediction['error']}")
        elif not prediction["result"]:
            report.warn(f"{name}: 模型回答中没有可用的标注 (no usable label in the reply)")
        elif errors := LabelInterface(config).validate_prediction(prediction, return_errors=True):
            report.fail(f"{name}: 结果未通过校验 (invalid result): {errors}")
        else:
            report.ok(f"{name}: {len(prediction['result'])} 个结果, score={prediction['score']}")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
