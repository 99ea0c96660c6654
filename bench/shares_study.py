"""The review score without logprobs from saved replies: self-reported, weighed by answer shares, and two orders.

Reads runs saved by `bench/quality.py --save` (no model needed) and prints, per set, the score's ranking
(AUROC with its 95 % bootstrap interval), ECE raw and after the score map fitted on the first 40 tasks
(`learning.scorefit.fit`, as a project's annotations would), and the share of tasks on the most common score,
for:
- `self-reported`: the score as the run saved it (1 call);
- `shares`: that score weighed by `predicting.answer_shares.AnswerShares`, fed the answers in /predict batches of
  `--batch` in item order, as the backend serves them (1 call, no extra);
- with `--second RUN:SYSTEM` (e.g. the same prompt with the label list reversed): `agreement`, 2 calls, the
  shares score halved where the two answers differ, and `two orders`: the answer where both agree, else the one
  whose label is less over-represented (its accuracy paired against the first run's, with McNemar's counts).

    python bench/shares_study.py --first modelscope.json:"ours @modelscope" --second reversed.json:"variant reversed"
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.paired import paired  # noqa: E402
from bench.quality import auroc, auroc_interval, ece, news_set, sentiment_set  # noqa: E402
from my_ml_backend.labeling.answers import TaskAnswer  # noqa: E402
from my_ml_backend.learning.scorefit import fit  # noqa: E402
from my_ml_backend.predicting.answer_shares import AnswerShares, share_bound  # noqa: E402

FIT_ON = 40  # annotated tasks the score map is fitted on
BUILDERS = {"news": news_set, "sentiment": sentiment_set}


def saved_answers(spec: str) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """`path:system` -> the system's saved answers per set, and the run's seed."""
    path, _, system = spec.partition(":")
    run = json.loads(Path(path).read_text(encoding="utf-8"))
    return {name: systems[system]["answers"] for name, systems in run["sets"].items() if system in systems}, run["seed"]


def chosen(answer: dict[str, Any]) -> str | None:
    return next((r["value"]["choices"][0] for r in answer["results"] if r.get("type") == "choices"), None)


def weighed(answers: list[dict[str, Any]], labels: int, batch: int) -> list[float]:
    """The saved scores weighed by answer shares, batch by batch, as `Predictor.answer_batch` does."""
    typed = []
    for a in answers:
        regions = [r for r in a["results"] if r.get("type") == "choices"]
        typed.append(TaskAnswer(regions, a["score"] or 0.0, 1.0 if regions else 0.0, ""))
    control = next((r[0]["from_name"] for r in (t.regions for t in typed) if r), "")
    shares, out = AnswerShares(), []
    for start in range(0, len(typed), batch):
        part = [({"id": i}, typed[i]) for i in range(start, min(start + batch, len(typed)))]
        out += [a.score for a in shares.weigh_batch(part, {control: labels})]
    return out


def fitted_ece(scores: list[float], right: list[bool]) -> float | None:
    found = fit(list(zip(scores[:FIT_ON], right[:FIT_ON], strict=True)), "study")
    rest = scores[FIT_ON:]
    return ece([found(s) for s in rest] if found is not None else rest, right[FIT_ON:])


def row(name: str, method: str, calls: int, scores: list[float], right: list[bool]) -> str:
    low, high = auroc_interval(scores, right)
    common = max(Counter(scores).values()) / len(scores)
    fitted = fitted_ece(scores, right)
    return (f"| {name} | {method} | {calls} | {sum(right) / len(right):.1%} | {auroc(scores, right):.3f} "
            f"[{low:.3f}, {high:.3f}] | {common:.0%} | {ece(scores, right):.3f} | "
            f"{'-' if fitted is None else f'{fitted:.3f}'} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first", required=True, help="RUN.json:SYSTEM, e.g. modelscope.json:'ours @modelscope'")
    parser.add_argument("--second", default="", help="RUN.json:SYSTEM answering the same items another way")
    parser.add_argument("--weighed", action="store_true", help="the first run's scores are weighed already")
    parser.add_argument("--batch", type=int, default=25, help="tasks per /predict the backend served")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cache = Path(os.environ.get("LOCAL_MODEL_CACHE") or Path.home() / ".cache" / "llm-preannotation" / "local-model")
    first, seed = saved_answers(args.first)
    second = saved_answers(args.second)[0] if args.second else {}
    print("| set | score | calls/task | accuracy | AUROC [95 %] | most common score | ECE raw | ECE fitted on 40 |")
    print("|---|---|---|---|---|---|---|---|")
    verdicts = []
    for name, answers in first.items():
        data = BUILDERS[name](cache, sys.executable, len(answers), seed)
        gold = [item.gold for item in data.items]
        labels = [chosen(a) for a in answers]
        right = [got == g for got, g in zip(labels, gold, strict=True)]
        own = [a["score"] or 0.0 for a in answers]
        shares = own if args.weighed else weighed(answers, len(data.values), args.batch)
        if not args.weighed:
            print(row(name, "self-reported", 1, own, right))
        print(row(name, "shares", 1, shares, right))
        if name not in second:
            continue
        other = [chosen(a) for a in second[name]]
        agree = [a == b and a is not None for a, b in zip(labels, other, strict=True)]
        print(row(name, "shares × agreement of two orders", 2,
                  [s * (1.0 if same else 0.5) for s, same in zip(shares, agree, strict=True)], right))
        counts = Counter(x for x in labels + other if x)
        total, k = sum(counts.values()), len(data.values)
        both = [a if a == b or b is None else b if a is None else
                max((a, b), key=lambda c: share_bound(counts[c], total, k)) for a, b in zip(labels, other, strict=True)]
        both_right = [got == g for got, g in zip(both, gold, strict=True)]
        verdicts.append((name, both_right, right))
        print(f"| {name} | two orders' answer: accuracy | 2 | {sum(both_right) / len(both_right):.1%} | | | | |")
    for name, both_right, right in verdicts:
        print(f"- {name}: two orders' answer − first run's: {paired([both_right], [right]).describe()}")
    if len(verdicts) > 1:
        print(f"- pooled: {paired([v[1] for v in verdicts], [v[2] for v in verdicts]).describe()}")


if __name__ == "__main__":
    main()
