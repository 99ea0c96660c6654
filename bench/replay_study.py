"""Saved model replies served again through the backend's own predictor: score methods measured without a model.

`bench/quality.py --save` keeps each of our replies; at temperature 0 the model gives the same reply to the same
prompt, so a fake server that answers each prompt with its saved reply stands in for the model. This runs the
real `Predictor` (/predict batches of `--batch`, the answer-shares tally, second opinions, settlement) against it,
for each `--score` setting, on the ModelScope kind's settings (no logprobs, `json_object`), and prints per set:
accuracy with its 95 % interval, paired against the single call and against the llm_interactive-style baseline of
the first run, the score's AUROC with its interval, ECE raw and fitted on the first 40 tasks, the share of tasks
on the most common score, and calls per task. A prompt with no saved reply fails its task (counted).

    python bench/replay_study.py --forward modelscope.json:"ours @modelscope" \
        --reversed reversed.json:"ours+reversed @modelscope" --max-input-chars 1200 \
        --score auto:0 orders:1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.paired import accuracy_interval, paired  # noqa: E402
from bench.quality import auroc, auroc_interval, ece, news_set, sentiment_set  # noqa: E402
from bench.shares_study import fitted_ece  # noqa: E402
from my_ml_backend.predicting.factory import build_predictor  # noqa: E402
from my_ml_backend.settings import load_settings  # noqa: E402
from tests.fake_llm import server as fake  # noqa: E402

BUILDERS = {"news": news_set, "sentiment": sentiment_set}
_TEXT = re.compile(r"<<<\n(.*?)\n>>>", re.S)


def saved_run(spec: str) -> tuple[dict[str, dict[str, Any]], int]:
    """`path:system` -> per set, that system's saved run; and the run's seed."""
    path, _, system = spec.partition(":")
    run = json.loads(Path(path).read_text(encoding="utf-8"))
    return {name: systems[system] for name, systems in run["sets"].items() if system in systems}, run["seed"]


def listed_labels(system_prompt: str) -> tuple[str, ...]:
    return tuple(line.strip()[2:].split(":")[0] for line in system_prompt.splitlines()
                 if line.startswith("   - "))


class Replay:
    """A responder answering each prompt with the reply saved for its text in its label order."""

    def __init__(self, texts: list[str], forward: list[dict], reversed_: list[dict] | None) -> None:
        self.index = {text: i for i, text in enumerate(texts)}
        self.forward, self.reversed = forward, reversed_
        self.canonical: tuple[str, ...] | None = None
        self.missing = 0

    def __call__(self, body: dict) -> fake.Reply:
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        found = _TEXT.search(user)
        i = self.index.get(found.group(1)) if found else None
        order = listed_labels(system)
        self.canonical = self.canonical or order  # the predictor asks the canonical order first
        saved = self.forward if order == self.canonical else self.reversed
        reply = saved[i].get("reply") if i is not None and saved is not None else None
        if reply is None:
            self.missing += 1
            return fake.error(500, "no saved reply for this prompt")
        return fake.chat(reply)


def chosen(result: list[dict[str, Any]]) -> str | None:
    return next((r["value"]["choices"][0] for r in result if r.get("type") == "choices"), None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forward", required=True, help="RUN.json:SYSTEM, our replies in the canonical order")
    parser.add_argument("--reversed", default="", help="RUN.json:SYSTEM, our replies with the list reversed")
    parser.add_argument("--baseline", default="llm_interactive style", help="the first run's baseline system")
    parser.add_argument("--score", nargs="+", default=["auto:0"], help="LLM_SCORE:LLM_SCORE_CALLS settings")
    parser.add_argument("--max-input-chars", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=25)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cache = Path(os.environ.get("LOCAL_MODEL_CACHE") or Path.home() / ".cache" / "llm-preannotation" / "local-model")
    forward, seed = saved_run(args.forward)
    reversed_runs = saved_run(args.reversed)[0] if args.reversed else {}
    first_path = args.forward.partition(":")[0]
    baseline = {name: systems[args.baseline]["answers"] for name, systems in
                json.loads(Path(first_path).read_text(encoding="utf-8"))["sets"].items() if args.baseline in systems}
    print("| set | LLM_SCORE | calls/task | accuracy [95 %] | vs one call | vs baseline | AUROC [95 %] | ECE raw | "
          "ECE fitted on 40 | most common score | no saved reply |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    pooled: dict[str, list[tuple[list[bool], list[bool], list[bool]]]] = {}  # setting -> (right, single, base)
    with fake.FakeLLMServer() as llm:
        for name, run in forward.items():
            data = BUILDERS[name](cache, sys.executable, len(run["answers"]), seed)
            gold = [item.gold for item in data.items]
            texts = [item.text[: args.max_input_chars] for item in data.items]
            single = [chosen(a["results"]) == g for a, g in zip(run["answers"], gold, strict=True)]
            base = [chosen(a["results"]) == g for a, g in zip(baseline.get(name, []), gold, strict=False)]
            for setting in args.score:
                method, _, calls = setting.partition(":")
                llm.reset()
                replay = Replay(texts, run["answers"], reversed_runs.get(name, {}).get("answers"))
                llm.set_responder(replay)
                settings = load_settings({
                    "MODELSCOPE_API_KEY": "sk-replay", "MODELSCOPE_API_URL": llm.base_url, "MODELSCOPE_MODEL": "replay",
                    "LLM_LOGPROBS": "off", "LLM_OUTPUT_MODE": "json_object", "LLM_REPEAT_PENALTY": "off",
                    "LLM_CACHE": "off", "FEWSHOT_EXAMPLES": "0", "LLM_CONCURRENCY": "1", "LLM_TEMPERATURE": "0",
                    "LLM_MAX_RETRIES": "0", "ML_TIMEOUT_PREDICT": "36000",
                    "MAX_INPUT_CHARS": str(args.max_input_chars), "LLM_SCORE": method, "LLM_SCORE_CALLS": calls or "0",
                    "DATA_DIR": str(Path(os.environ.get("TMPDIR", "/tmp")) / "replay_study"),
                })
                predictor = build_predictor(data.config(data.values), settings)
                items: list[dict[str, Any]] = []
                for start in range(0, len(texts), args.batch):
                    tasks = [{"id": start + i, "data": {"text": item.text}}
                             for i, item in enumerate(data.items[start: start + args.batch])]
                    items += predictor.predict_batch(tasks)
                right = [chosen(item.get("result") or []) == g for item, g in zip(items, gold, strict=True)]
                scores = [float(item.get("score") or 0.0) for item in items]
                low, high = accuracy_interval(right)
                a_low, a_high = auroc_interval(scores, right)
                fitted = fitted_ece(scores, right)
                common = max(Counter(scores).values()) / len(scores)
                vs_base = paired([right], [base]).describe() if len(base) == len(right) else "-"
                pooled.setdefault(setting, []).append((right, single, base))
                print(f"| {name} | {setting} | {llm.chat_calls / len(texts):.2f} | {sum(right) / len(right):.1%} "
                      f"[{low:.1%}, {high:.1%}] | {paired([right], [single]).describe()} | {vs_base} | "
                      f"{auroc(scores, right):.3f} [{a_low:.3f}, {a_high:.3f}] | {ece(scores, right):.3f} | "
                      f"{'-' if fitted is None else f'{fitted:.3f}'} | {common:.0%} | {replay.missing} |")

    for setting, sets in pooled.items():
        if len(sets) > 1:
            print(f"- {setting}, pooled: vs one call {paired([s[0] for s in sets], [s[1] for s in sets]).describe()}; "
                  f"vs baseline {paired([s[0] for s in sets], [s[2] for s in sets]).describe()}")


if __name__ == "__main__":
    main()
