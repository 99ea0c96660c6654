"""The command lines of the jobs: `batch_predict.py` (in-process, `--dry-run`, `--queue`), `evaluate.py`, and the
settings of the diagnostic scripts. Each reads the settings once here and passes them down to the library modules.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path

from label_studio_sdk import LabelStudio

from ..predicting.factory import build_predictor, project_evaluation
from ..settings import Settings, load_env_file, load_settings
from ..telemetry.logs import configure_logging, mask
from .batch import BatchJob, default_chunk_size
from .estimate import estimate
from .evaluation_report import Evaluation, write_chart
from .evaluation_runs import evaluate_fresh, evaluate_stored, load_export, load_project
from .queue import run_queued

USAGE_ERROR = 2
MISSING_LLM_KEY = "缺少 MODELSCOPE_API_KEY (missing the LLM API key)"


def settings_from_env() -> Settings:
    """Settings as the backend would see them, `.env` included (the diagnostic scripts' entry)."""
    load_env_file()
    return load_settings()


def start(
    parse: Callable[[list[str] | None], argparse.Namespace], argv: list[str] | None
) -> tuple[argparse.Namespace, Settings]:
    """A command's start: `.env` read first (argument defaults come from the environment), arguments, settings
    read once, logging set up with the Label Studio key masked."""
    load_env_file()
    args = parse(argv)
    settings = load_settings()
    configure_logging(settings, secrets=[args.api_key or ""], console=sys.stderr, quiet=True)
    return args, settings


def usage_error(message: str) -> int:
    print(message, file=sys.stderr)
    return USAGE_ERROR


def label_studio_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("LABEL_STUDIO_URL", "http://localhost:8080"),
                        help="Label Studio URL (env LABEL_STUDIO_URL)")
    parser.add_argument("--api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"),
                        help="Label Studio API key or personal access token (env LABEL_STUDIO_API_KEY)")


# -- batch_predict.py ------------------------------------------------------------------


def batch_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="batch_predict.py",
        description="为整个 Label Studio 项目生成预标注 (pre-annotate a whole Label Studio project)",
    )
    parser.add_argument("--project", type=int, required=True, help="Label Studio project ID")
    label_studio_arguments(parser)
    parser.add_argument("--chunk-size", type=int, default=0,
                        help="tasks per chunk (default: 4 x LLM_CONCURRENCY, at least 8, x tasks per call)")
    parser.add_argument("--limit", type=int, default=None, help="predict at most this many tasks in this run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--dry-run", action="store_true",
                        help="只估算调用次数、tokens、用时和今日额度，不调用模型 (estimate calls, tokens, time and "
                             "today's quota without calling the model)")
    parser.add_argument("--queue", action="store_true",
                        help="enqueue chunks as RQ jobs for `rq worker llm-preannotation` processes (needs REDIS_URL)")
    return parser.parse_args(argv)


def batch_predict_main(argv: list[str] | None = None) -> int:
    """Exit 0 when every task has a prediction, 1 when some failed or the run stopped early, 2 on bad usage."""
    args, settings = start(batch_arguments, argv)
    if not args.api_key:
        return usage_error(
            "缺少 Label Studio API key：设置 LABEL_STUDIO_API_KEY 或 --api-key (missing Label Studio API key)")
    if not settings.has_api_key:
        return usage_error(MISSING_LLM_KEY)
    client = LabelStudio(base_url=args.url.rstrip("/"), api_key=args.api_key)
    try:
        label_config = client.projects.get(id=args.project).label_config
    except Exception as exc:  # noqa: BLE001 - the user needs the reason, not a traceback
        return usage_error(f"无法读取项目 {args.project} (cannot read project) at {args.url} "
                           f"with key {mask(args.api_key)}: {type(exc).__name__}: {str(exc)[:300]}")
    evaluation = project_evaluation(label_config, settings, args.project)
    predictor = build_predictor(label_config, settings, evaluation=evaluation)
    job = BatchJob(client, args.project, predictor, args.chunk_size or default_chunk_size(predictor))
    if args.dry_run:
        for line in estimate(job, args.limit).lines():
            print(line)
        return 0
    if args.queue:
        if not settings.redis_url:
            return usage_error("--queue 需要 REDIS_URL (--queue needs REDIS_URL, shared with the workers)")
        summary = run_queued(client, args.project, predictor, settings, job.chunk_size, args.limit,
                             not args.no_progress)
    else:
        summary = job.run(args.limit, progress=not args.no_progress)
    for line in summary.lines():
        print(line)
    return 0 if not summary.failed and not summary.stopped else 1


# -- evaluate.py -----------------------------------------------------------------------


def evaluate_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="evaluate.py", description="对比预测与人工标注 (score predictions against human annotations)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--export", type=Path, help="Label Studio JSON export (needs --config)")
    source.add_argument("--project", type=int, help="Label Studio project ID (LABEL_STUDIO_URL / _API_KEY)")
    parser.add_argument("--config", type=Path, help="labeling config XML file (for --export)")
    label_studio_arguments(parser)
    parser.add_argument("--model-version", help="score the stored predictions of this version (default: newest)")
    parser.add_argument("--predict", action="store_true", help="predict the annotated tasks now instead")
    parser.add_argument("--compare", type=int, nargs="+", metavar="K",
                        help="with --predict: run once per number of few-shot examples, e.g. --compare 0 3")
    parser.add_argument("--chart", type=Path, default=Path("evaluation.png"), help="PNG chart path")
    return parser.parse_args(argv)


def evaluate_main(argv: list[str] | None = None) -> int:
    """Print the scores of each run and write the chart; exit 2 on bad usage."""
    args, settings = start(evaluate_arguments, argv)
    if args.export:
        if not args.config:
            return usage_error("--export 需要 --config 标注配置文件 (--export needs --config)")
        tasks = load_export(args.export)
        label_config = args.config.read_text(encoding="utf-8")
    else:
        if not args.api_key:
            return usage_error("缺少 LABEL_STUDIO_API_KEY / --api-key (missing Label Studio API key)")
        tasks, label_config = load_project(args.url, args.api_key, args.project)
    runs: dict[str, Evaluation] = {}
    if args.predict:
        if not settings.has_api_key:
            return usage_error(MISSING_LLM_KEY)
        for k in args.compare or [settings.fewshot_k]:
            run_settings = dataclasses.replace(settings, fewshot_k=k, fewshot_auto=False)
            runs[f"{k} examples"] = evaluate_fresh(label_config, tasks, run_settings)
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
