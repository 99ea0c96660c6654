#!/usr/bin/env python3
"""Run the five example task types through the backend's own predict path.

Usage: python check_modelscope_text.py [NAME ...]
NAME is one of: text_classification, code_comments, text_analysis, technical_qa,
error_debugging (default: all five; one API call each). Prints the Label Studio
results and whether they validate against the config. Exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from label_studio_sdk.label_interface import LabelInterface

from my_ml_backend.jobs.cli import settings_from_env
from my_ml_backend.jobs.diagnostics import Report, describe, force_utf8_stdout, plain
from my_ml_backend.llm.errors import PredictionError
from my_ml_backend.model import NewModel
from my_ml_backend.predicting.items import prediction_item

EXAMPLES = Path(__file__).resolve().parent / "examples"


def main() -> int:
    force_utf8_stdout()
    tasks = json.loads((EXAMPLES / "tasks.json").read_text(encoding="utf-8"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"one of {', '.join(tasks)} (default: all)")
    names = parser.parse_args().names or list(tasks)  # --help exits here, before any call
    if unknown := [n for n in names if n not in tasks]:
        parser.error(f"未知任务类型 (unknown task type) {', '.join(unknown)}; choose from {', '.join(tasks)}")
    NewModel.settings = settings_from_env()  # this script is the process entry: settings read once, here
    print(describe(NewModel.settings))
    report = Report()
    for name in names:
        config = (EXAMPLES / "configs" / f"{name}.xml").read_text(encoding="utf-8")
        print(f"\n=== {name} ===")
        predictor = NewModel(label_config=config).predictor
        try:
            answer = predictor.answer_task({"id": 1, **tasks[name]}, predictor.prompt_inputs())
        except PredictionError as err:
            report.fail(f"[{name}] {plain(str(err))}")
            if err.fatal:  # no key, bad key, no permission, unknown model, quota: every other task fails alike
                print("其余任务会因同样原因失败，已停止 (stopped: the other tasks would fail the same way)")
                break
            continue
        prediction = prediction_item(answer, predictor.model_version)
        print(json.dumps(prediction, ensure_ascii=False, indent=2))
        if not prediction["result"]:
            report.warn(f"{name}: 模型回答中没有可用的标注 (no usable label in the reply)")
        elif errors := LabelInterface(config).validate_prediction(prediction, return_errors=True):
            report.fail(f"{name}: 结果未通过校验 (invalid result): {errors}")
        else:
            report.ok(f"{name}: {len(prediction['result'])} 个结果, score={prediction['score']}")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
