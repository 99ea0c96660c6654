"""The answer strategy chosen per project, measured on saved replies: is the automatic choice close to the best?

Two parts, both without the model (`bench/quality.py --save` keeps every reply; at temperature 0 a prompt
gets the same reply again, so a fake server answering each prompt with its saved reply stands in for it):

1. **Served**: every item of each set predicted through the backend's own `Predictor` on the ModelScope
   kind's settings, once per strategy: JSON (our replies) and the plain answer (the llm_interactive-style
   baseline's replies, read by our free-text reader). Prints accuracy with its 95 % interval and the paired
   difference, so the plain strategy's figure can be checked against the baseline's.
2. **The choice on 40 annotations**, `--draws` times per set and endpoint kind: 40 items drawn at random play
   the project's annotated tasks, the backend's own rule (`learning.strategy_choice`, on its label-stratified
   sample within `ANSWER_EVAL_CALLS`) picks a strategy from them, and the pick is scored on the other items
   against the best single strategy there. Prints how often each strategy is picked, the automatic choice's
   mean accuracy, the best single strategy's, and the share of draws within 2 points of it.

    python bench/strategy_study.py --modelscope modelscope.json:"ours @modelscope" \
        --logprobs logprobs.json:"ours @logprobs" --baseline modelscope.json:"llm_interactive style"
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.paired import accuracy_interval, paired  # noqa: E402
from bench.replay_study import BUILDERS, chosen, saved_run  # noqa: E402
from my_ml_backend.learning.autotune import Judged  # noqa: E402
from my_ml_backend.learning.examples import Example  # noqa: E402
from my_ml_backend.learning.index import ExampleIndex  # noqa: E402
from my_ml_backend.learning.strategy_choice import STRATEGIES, evaluate_strategies  # noqa: E402
from my_ml_backend.predicting.factory import build_predictor  # noqa: E402
from my_ml_backend.settings import load_settings  # noqa: E402
from tests.fake_llm import server as fake  # noqa: E402

_JSON_TEXT = re.compile(r"<<<\n(.*?)\n>>>", re.S)
_PLAIN_TEXT = re.compile(r"Text: (.*)\Z", re.S)


class Replay:
    """Answers a JSON prompt with our saved reply for its text, a plain prompt with the baseline's."""

    def __init__(self, texts: list[str], structured: list[dict], plain: list[dict]) -> None:
        self.index = {text: i for i, text in enumerate(texts)}
        self.structured, self.plain = structured, plain
        self.missing = 0

    def __call__(self, body: dict) -> fake.Reply:
        content = body["messages"][-1]["content"]
        found = _JSON_TEXT.search(content)
        saved = self.structured
        if found is None:
            found, saved = _PLAIN_TEXT.search(content), self.plain
        i = self.index.get(found.group(1).strip()) if found else None
        if i is None:
            self.missing += 1
            return fake.error(500, "no saved reply for this prompt")
        return fake.chat(saved[i].get("reply") or "")


def served(llm: fake.FakeLLMServer, data: Any, replay: Replay, strategy: str, max_chars: int) -> list[bool]:
    """Each item predicted through the backend's predictor under `strategy`: right or not."""
    llm.reset()
    llm.set_responder(replay)
    settings = load_settings({
        "MODELSCOPE_API_KEY": "sk-replay", "MODELSCOPE_API_URL": llm.base_url, "MODELSCOPE_MODEL": "replay",
        "LLM_LOGPROBS": "off", "LLM_OUTPUT_MODE": "json_object", "LLM_REPEAT_PENALTY": "off", "LLM_CACHE": "off",
        "FEWSHOT_EXAMPLES": "0", "LLM_CONCURRENCY": "1", "LLM_TEMPERATURE": "0", "LLM_MAX_RETRIES": "0",
        "ML_TIMEOUT_PREDICT": "36000", "MAX_INPUT_CHARS": str(max_chars), "LLM_ANSWER_STRATEGY": strategy,
        "DATA_DIR": str(Path(os.environ.get("TMPDIR", "/tmp")) / "strategy_study"),
    })
    predictor = build_predictor(data.config(data.values), settings)
    items: list[dict] = []
    for start in range(0, len(data.items), 25):
        tasks = [{"id": start + i, "data": {"text": item.text}} for i, item in enumerate(data.items[start:start + 25])]
        items += predictor.predict_batch(tasks)
    return [chosen(item.get("result") or []) == item_.gold for item, item_ in zip(items, data.items, strict=True)]


class SavedJudge:
    """Judges an annotated item by the saved served answer of that strategy, counting one call per judgement."""

    def __init__(self, right: dict[str, list[bool]]) -> None:
        self.right, self.calls = right, 0

    def __call__(self, example: Example, strategy: str) -> Judged:
        self.calls += 1
        return Judged(self.right[strategy][example.task_id])

    def spent(self) -> int:
        return self.calls


def choice_draws(
    data: Any, right: dict[str, list[bool]], draws: int, annotated: int, budget: int
) -> tuple[Counter, list[float], list[float]]:
    """Per draw: the strategy the rule picks on `annotated` random items, its accuracy and the best one's on
    the other items."""
    name = data.config(data.values).split('Choices name="')[1].split('"')[0]
    best_on_set = max(right, key=lambda s: (sum(right[s]), -STRATEGIES.index(s)))
    picked: Counter = Counter()
    auto, best = [], []
    for draw in range(draws):
        rng = random.Random(draw)
        shown = set(rng.sample(range(len(data.items)), annotated))
        rest = [i for i in range(len(data.items)) if i not in shown]
        examples = [Example(i, {"text": data.items[i].text}, {name: data.items[i].gold}) for i in sorted(shown)]
        judge = SavedJudge(right)
        verdict = evaluate_strategies(ExampleIndex.from_examples(examples), budget, judge, judge.spent, seed=draw)
        picked[verdict.strategy] += 1
        auto.append(float(np.mean([right[verdict.strategy][i] for i in rest])))
        best.append(float(np.mean([right[best_on_set][i] for i in rest])))
    return picked, auto, best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modelscope", required=True, help="RUN.json:SYSTEM, our replies on the ModelScope kind")
    parser.add_argument("--logprobs", default="", help="RUN.json:SYSTEM, our answers on the logprobs kind")
    parser.add_argument("--baseline", required=True, help="RUN.json:SYSTEM, the llm_interactive-style replies")
    parser.add_argument("--max-input-chars", type=int, default=1200)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--annotated", type=int, default=40)
    parser.add_argument("--budget", type=int, default=80, help="ANSWER_EVAL_CALLS")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    cache = Path(os.environ.get("LOCAL_MODEL_CACHE") or Path.home() / ".cache" / "llm-preannotation" / "local-model")
    ours, seed = saved_run(args.modelscope)
    base = saved_run(args.baseline)[0]
    logprobs = saved_run(args.logprobs)[0] if args.logprobs else {}
    kinds: dict[str, dict[str, dict[str, list[bool]]]] = {"ModelScope kind": {}, "logprobs kind": {}}
    print("Served through the predictor (ModelScope kind), every item:\n")
    print("| set | strategy | accuracy [95 %] | free-text − structured, paired | baseline as scored by the bench |")
    print("|---|---|---|---|---|")
    with fake.FakeLLMServer() as llm:
        for name, run in ours.items():
            data = BUILDERS[name](cache, sys.executable, len(run["answers"]), seed)
            texts = [item.text[: args.max_input_chars].strip() for item in data.items]
            replay = Replay(texts, run["answers"], base[name]["answers"])
            right = {s: served(llm, data, replay, s, args.max_input_chars) for s in STRATEGIES}
            bench_base = [chosen(a["results"]) == item.gold for a, item in zip(base[name]["answers"], data.items,
                                                                                 strict=True)]
            diff = paired([right["free-text"]], [right["structured"]]).describe()
            for strategy, r in right.items():
                low, high = accuracy_interval(r)
                print(f"| {name} | {strategy} | {np.mean(r):.1%} [{low:.1%}, {high:.1%}] | "
                      f"{diff if strategy == 'free-text' else ''} | "
                      f"{f'{np.mean(bench_base):.1%}' if strategy == 'free-text' else ''} |")
            if replay.missing:
                print(f"  ({replay.missing} prompts had no saved reply)")
            kinds["ModelScope kind"][name] = right
            if name in logprobs:
                kinds["logprobs kind"][name] = {
                    "structured": [chosen(a["results"]) == item.gold
                                   for a, item in zip(logprobs[name]["answers"], data.items, strict=True)],
                    "free-text": right["free-text"],  # the plain answer reads no logprobs: the same answers
                }
            kinds.setdefault("_data", {})[name] = data  # type: ignore[assignment]
    datasets = kinds.pop("_data")
    print(f"\nThe automatic choice on {args.annotated} annotated tasks ({args.draws} draws, ANSWER_EVAL_CALLS="
          f"{args.budget}), scored on the other tasks:\n")
    print("| kind | set | picked structured / free-text | auto accuracy (mean) | best single strategy (mean) | "
          "auto − best (mean) | draws within 2 points | worst 5 % of draws |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, sets in kinds.items():
        for name, right in sets.items():
            picked, auto, best = choice_draws(datasets[name], right, args.draws, args.annotated, args.budget)
            gap = np.asarray(auto) - np.asarray(best)
            print(f"| {kind} | {name} | {picked['structured']} / {picked['free-text']} | {np.mean(auto):.1%} | "
                  f"{np.mean(best):.1%} | {np.mean(gap) * 100:+.1f} pts | {np.mean(gap >= -0.02):.0%} | "
                  f"{np.percentile(gap, 5) * 100:+.1f} pts |")


if __name__ == "__main__":
    main()
