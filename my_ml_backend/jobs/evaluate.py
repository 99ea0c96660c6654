"""The evaluation command: how good are the pre-labels, per control and per label?

Sources: a Label Studio JSON export (`--export`) or a project read through
`label-studio-sdk` (`--project`). By default it scores the predictions stored with
the tasks; with `--predict` it runs the backend's engine now on every annotated
task, and `--examples K` shows it K annotated examples chosen from the other tasks
(leave-one-out), so `--predict --compare 0 3` prints the few-shot gain.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..learning.examples import Example, example_from_annotation
from ..learning.retrieval import FixedShots, Form, Shots
from ..predicting.factory import build_predictor, schema_for
from ..settings import load_env_file, load_settings
from ..telemetry.logs import configure_logging
from .evaluation import Evaluation, write_chart

logger = logging.getLogger(__name__)


def latest_annotation(task: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The newest non-cancelled annotation's results (what the human settled on)."""
    kept = [a for a in task.get("annotations") or [] if not a.get("was_cancelled") and a.get("result")]
    if not kept:
        return None
    newest = max(kept, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))
    return newest["result"]


def stored_prediction(task: dict[str, Any], model_version: str | None) -> list[dict[str, Any]]:
    """The task's stored prediction of `model_version` (default: its newest one)."""
    predictions = [p for p in task.get("predictions") or [] if isinstance(p, dict)]
    if model_version:
        predictions = [p for p in predictions if p.get("model_version") == model_version]
    if not predictions:
        return []
    newest = max(predictions, key=lambda p: (str(p.get("created_at") or ""), p.get("id") or 0))
    return newest.get("result") or []


def load_export(path: Path) -> list[dict[str, Any]]:
    """Tasks of a Label Studio JSON export (the config is not in it: pass --config)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of tasks (Label Studio's JSON export)")
    return data


def load_project(url: str, api_key: str, project: int) -> tuple[list[dict[str, Any]], str]:
    from label_studio_sdk import LabelStudio

    client = LabelStudio(base_url=url.rstrip("/"), api_key=api_key)
    label_config = client.projects.get(id=project).label_config
    tasks = []
    for task in client.tasks.list(project=project, fields="all", page_size=100):
        raw = task.dict() if hasattr(task, "dict") else dict(task)
        tasks.append({k: raw.get(k) for k in ("id", "data", "annotations", "predictions")})
    return tasks, label_config


def evaluate_stored(label_config: str, tasks: Sequence[dict[str, Any]], model_version: str | None) -> Evaluation:
    evaluation = Evaluation(schema_for(label_config))
    for task in tasks:
        if (gold := latest_annotation(task)) is not None:
            evaluation.add(gold, stored_prediction(task, model_version))
    return evaluation


def evaluate_fresh(label_config: str, tasks: Sequence[dict[str, Any]], k: int) -> Evaluation:
    """Predict every annotated task now, with `k` few-shot examples from the other annotated tasks."""
    settings = dataclasses.replace(load_settings(), fewshot_k=k, fewshot_auto=False)
    schema = schema_for(label_config)
    annotated = [(t, gold) for t in tasks if (gold := latest_annotation(t)) is not None]
    pool: list[Example] = [
        e for t, gold in annotated if (e := example_from_annotation(schema, t, gold, settings.max_input_chars))
    ]
    form = Form(k, settings.fewshot_form)
    shots = Shots.of_pool(pool, form, settings.fewshot_max_chars) if k else None
    predictor = build_predictor(label_config, settings, examples=FixedShots(shots), count=len(pool), form=form)
    tasks_now = [{"id": t.get("id"), "data": t.get("data") or {}} for t, _ in annotated]
    predictions = predictor.predict_batch(tasks_now, deadline=None)  # a command line: no Label Studio waiting
    evaluation = Evaluation(schema)
    for (_, gold), prediction in zip(annotated, predictions, strict=True):
        evaluation.add(gold, prediction.get("result") or [])
    return evaluation


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="evaluate.py", description="对比预测与人工标注 (score predictions against human annotations)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--export", type=Path, help="Label Studio JSON export (needs --config)")
    source.add_argument("--project", type=int, help="Label Studio project ID (LABEL_STUDIO_URL / _API_KEY)")
    parser.add_argument("--config", type=Path, help="labeling config XML file (for --export)")
    parser.add_argument("--url", default=os.environ.get("LABEL_STUDIO_URL", "http://localhost:8080"))
    parser.add_argument("--api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"))
    parser.add_argument("--model-version", help="score the stored predictions of this version (default: newest)")
    parser.add_argument("--predict", action="store_true", help="predict the annotated tasks now instead")
    parser.add_argument("--compare", type=int, nargs="+", metavar="K",
                        help="with --predict: run once per number of few-shot examples, e.g. --compare 0 3")
    parser.add_argument("--chart", type=Path, default=Path("evaluation.png"), help="PNG chart path")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    load_env_file()
    args = parse_args(argv)
    settings = load_settings()
    configure_logging(settings, secrets=[args.api_key or ""], console=sys.stderr, quiet=True)
    if args.export:
        if not args.config:
            print("--export 需要 --config 标注配置文件 (--export needs --config)", file=sys.stderr)
            return 2
        tasks = load_export(args.export)
        label_config = args.config.read_text(encoding="utf-8")
    else:
        if not args.api_key:
            print("缺少 LABEL_STUDIO_API_KEY / --api-key (missing Label Studio API key)", file=sys.stderr)
            return 2
        tasks, label_config = load_project(args.url, args.api_key, args.project)
    runs: dict[str, Evaluation] = {}
    if args.predict:
        if not settings.has_api_key:
            print("缺少 MODELSCOPE_API_KEY (missing the LLM API key)", file=sys.stderr)
            return 2
        for k in args.compare or [settings.fewshot_k]:
            runs[f"{k} examples"] = evaluate_fresh(label_config, tasks, k)
    else:
        runs[args.model_version or "stored predictions"] = evaluate_stored(label_config, tasks, args.model_version)
    for name, evaluation in runs.items():
        print("\n".join(evaluation.lines(f"=== {name} ===")))
        print()
    if any(e.tasks for e in runs.values()):
        legend = write_chart(runs, args.chart)
        print(f"图表 (chart): {args.chart}")
        if legend:
            print("图表标签 (chart labels): " + ", ".join(f"{k} = {v}" for k, v in legend.items()))
    return 0
