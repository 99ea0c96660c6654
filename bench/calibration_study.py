#!/usr/bin/env python3
"""How to decide a single choice from the model's distribution: the study behind `labeling/calibration.py`.

Collect (needs the local model, ``scripts/local_model.sh``): for each item of a set, our prompt in
the forward and the reversed listed order of the choices, with ``top_logprobs=20``, and the same
prompt for content-free texts; every reply's tokens and alternatives are saved to JSON.
Analyse (no model): per listed order, for each rule, accuracy, score AUROC and ECE, accuracy on
batches 80 % one class (skew80), and the share of items whose answer changes between the orders:
- generated: the answer the model wrote (constrained decoding);
- raw: the argmax of the choice distribution read from the answer's first-token alternatives;
- batch a: Batch Calibration, the batch's mean (25 tasks, 2 pseudo-tasks of uniform) divided out
  with exponent a;
- content-free a: the content-free prior (mixed with 20 % uniform) divided out with exponent a;
- both orders: the two orders' content-free 0.5 distributions averaged (what asking a choice a
  second time, in the other order, would buy).

Entities (``--set entities``): our prompt on Faker entity sentences, each reply's tokens and
alternatives saved; analysing compares span scores against the span being exactly right (its
start, end and label): the joint product of the text's and label's tokens (the score before
2026-12-01), the text's geometric mean, P(label among the labels) from the label token's
alternatives, and their products. It also re-decides each found entity's type from its label
token's alternatives with the mean label distribution divided out (as `calibration` does for a
choice) and counts the types right. The seed picks the sentences, so one seed can choose a rule
and another check it.

Requests are sent as the backend sends them to llama.cpp (`LLM_REPEAT_PENALTY=auto`: repeat_penalty
1.0), to a server this script starts or to ``--base-url``.

Usage: .venv/bin/python bench/calibration_study.py collect --set topics --n 100 --out topics.json
       .venv/bin/python bench/calibration_study.py collect --set sentiment --n 200 --base-url URL --out s.json
       .venv/bin/python bench/calibration_study.py analyse topics.json
       .venv/bin/python bench/calibration_study.py collect --set entities --n 40 --seed 1 --out e1.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import (  # noqa: E402
    auroc,
    auroc_interval,
    ece,
    entity_set,
    partial_entity_set,
    prompt_order_reversed,
    sentiment_set,
    topic_set,
)
from my_ml_backend.labeling.calibration import (  # noqa: E402
    CONTENT_FREE,
    calibrate,
    choice_distribution,
    content_free_prior,
)
from my_ml_backend.labeling.controls.base import ordered  # noqa: E402
from my_ml_backend.labeling.parsing import parse_reply  # noqa: E402
from my_ml_backend.labeling.prompts import answer_schema, build_prompt, prompt_language  # noqa: E402
from my_ml_backend.labeling.results import build_results  # noqa: E402
from my_ml_backend.labeling.scoring import distribution_at, label_before, mean_probability, token_at  # noqa: E402
from my_ml_backend.predicting.factory import schema_for  # noqa: E402
from tests.real_model.local_model import LocalModelServer, install  # noqa: E402


def _ask(client: object, model: str, schema: object, task: dict, max_tokens: int) -> tuple[list, str]:
    """Our prompt for one task as the backend sends it to llama.cpp: its tokens with 20 alternatives, and its text."""
    fmt = {"type": "json_object", "schema": answer_schema(schema, task, confidence=False)}
    reply = client.chat.completions.create(  # type: ignore[attr-defined]
        model=model, messages=build_prompt(schema, task, confidence=False), temperature=0,
        max_tokens=max_tokens, logprobs=True, top_logprobs=20, response_format=fmt,
        extra_body={"repeat_penalty": 1.0},  # as the backend sends it (LLM_REPEAT_PENALTY=auto)
    )
    content = reply.choices[0].logprobs.content
    tokens = [(t.token, t.logprob, [(a.token, a.logprob) for a in t.top_logprobs]) for t in content]
    return tokens, reply.choices[0].message.content


@contextmanager
def _server(base_url: str) -> Iterator[tuple[object, str]]:
    """(an OpenAI client, the model name) for `base_url`, or for a local model server started here."""
    import openai

    if base_url:
        yield openai.OpenAI(base_url=base_url, api_key="sk-local", timeout=600), "local"
        return
    with LocalModelServer() as server:
        yield openai.OpenAI(base_url=server.base_url, api_key="sk-local", timeout=600), server.model


def collect(args: argparse.Namespace) -> None:
    paths = install()
    if args.set.startswith("entities"):
        return collect_entities(args, Path(paths["cache"]), paths["python"])
    build = topic_set if args.set == "topics" else sentiment_set
    data = build(Path(paths["cache"]), paths["python"], args.n, args.seed)
    if args.label_prefix:  # choices whose names share their first tokens (e.g. "评价正面" / "评价负面")
        data = replace(data, values=[args.label_prefix + v for v in data.values],
                       items=[replace(i, gold=args.label_prefix + i.gold) for i in data.items])
    key = "topic" if args.set == "topics" else "sentiment"
    rows = []
    with _server(args.base_url) as (client, model):
        for order in ("forward", "reversed") if args.order == "both" else (args.order,):
            schema = schema_for(data.config(data.values))
            texts = [(item.text, item.gold) for item in data.items]
            lang = prompt_language({"text": texts[0][0]})
            texts += [(text, None) for text in CONTENT_FREE[lang]]
            with prompt_order_reversed() if order == "reversed" else nullcontext():
                listed = ordered(data.values)
                for text, gold in texts:
                    tokens, reply = _ask(client, model, schema, {"text": text}, 40)
                    rows.append({"order": order, "listed": listed, "gold": gold, "tokens": tokens, "reply": reply})
    Path(args.out).write_text(json.dumps({"key": key, "values": ordered(data.values), "rows": rows},
                                         ensure_ascii=False), encoding="utf-8")


def collect_entities(args: argparse.Namespace, cache: Path, python: str) -> None:
    data = (partial_entity_set if args.set == "entities-partial" else entity_set)(cache, python, args.n, args.seed)
    schema = schema_for(data.config(data.values))
    rows = []
    with _server(args.base_url) as (client, model):
        for item in data.items:
            tokens, reply = _ask(client, model, schema, {"text": item.text}, 200)
            results, _ = build_results(schema, parse_reply(reply, ["ner"]), {"text": item.text})
            rows.append({"text": item.text, "gold": item.gold, "tokens": tokens, "reply": reply, "results": results})
    Path(args.out).write_text(json.dumps({"key": "ner", "values": data.values, "rows": rows}, ensure_ascii=False),
                              encoding="utf-8")


def _span_rules(tokens: list[tuple], value: dict, labels: list[str], after: int) -> tuple[dict[str, float], int]:
    """Each span-score rule's score for one entity (its text first found at or after `after`), and where it ended.

    The label is read where the reply wrote it: just before the text (its own object written type first,
    prompt v6) or just after it (name first, v5).
    """
    joined = "".join(t[0] for t in tokens)

    def covering(start: int, length: int) -> list[int]:
        first, last = token_at(tokens, start), token_at(tokens, start + length - 1)
        return list(range(first, last + 1)) if length and first is not None and last is not None else []

    at = joined.find(value["text"], after)
    at = at if at >= 0 else joined.find(json.dumps(value["text"], ensure_ascii=False)[1:-1], after)
    label = value["labels"][0]
    text_tokens = covering(at, len(value["text"])) if at >= 0 else []
    before = label_before(joined, label, after, at) if at >= 0 else -1
    first = before >= 0
    label_at = before if first else joined.find(label, max(at, after) + len(value["text"]))
    label_tokens = covering(label_at, len(label)) if label_at >= 0 else []
    if not text_tokens or not label_tokens:
        return {}, after
    text_lp = [tokens[i][1] for i in text_tokens]
    label_lp = [tokens[i][1] for i in label_tokens]
    dist = distribution_at(tokens[label_tokens[0]], labels)
    p_label = dist[labels.index(label)] if dist else math.exp(sum(label_lp))
    geo = mean_probability(text_lp) or 1.0
    end = at + len(value["text"]) if first else label_at + len(label)
    return {
        "joint product of text and label tokens": math.exp(sum(text_lp + label_lp)),
        "geometric mean of text and label tokens": mean_probability(text_lp + label_lp) or 1.0,
        "first text token x label tokens": math.exp(text_lp[0] + sum(label_lp)),
        "first text token": math.exp(text_lp[0]),
        "first text token x text tokens' geometric mean": math.exp(text_lp[0]) * geo,
        "text tokens' geometric mean": geo,
        "P(label among labels)": p_label,
        "P(label among labels) x text tokens' product": p_label * math.exp(sum(text_lp)),
        "P(label among labels) x text tokens' geometric mean": p_label * geo,
    }, end


def analyse_entities(saved: dict, name: str) -> None:
    labels = ordered(saved["values"])
    scored: dict[str, list[tuple[float, bool]]] = {}
    for row in saved["rows"]:
        gold = {(row["text"].index(m), row["text"].index(m) + len(m), lab) for m, lab in row["gold"]}
        tokens = [(t[0], t[1], [tuple(a) for a in t[2]]) for t in row["tokens"]]
        after = 0
        for result in row["results"]:
            value = result["value"]
            rules, after = _span_rules(tokens, value, labels, after)
            right = (value["start"], value["end"], value["labels"][0]) in gold
            for rule, score in rules.items():
                scored.setdefault(rule, []).append((score, right))
    spans = len(next(iter(scored.values()), []))
    print(f"## {name}: {len(saved['rows'])} sentences, {spans} entities answered\n")
    print("| span score | exactly right | mean score | AUROC | ECE |")
    print("|---|---|---|---|---|")
    for rule, pairs in scored.items():
        scores, right = [s for s, _ in pairs], [r for _, r in pairs]
        print(f"| {rule} | {sum(right) / len(right):.1%} | {sum(scores) / len(scores):.3f} "
              f"| {_f(auroc(scores, right))} | {_f(ece(scores, right))} |")
    _retyped(saved, labels)


def _retyped(saved: dict, labels: list[str]) -> None:
    """Types right among the entities found (their text is a gold mention): as written, and re-decided from the
    label token's alternatives with the mean label distribution divided out (all items, or the first item's
    own mean for first items), exponent 0.5 and 1."""
    found = []  # (item index in its list, written label, gold label, distribution at the label token)
    for row in saved["rows"]:
        gold = dict(row["gold"])
        tokens = [(t[0], t[1], [tuple(a) for a in t[2]]) for t in row["tokens"]]
        joined, after = "".join(t[0] for t in tokens), 0
        for n, result in enumerate(row["results"]):
            value = result["value"]
            at = joined.find(json.dumps(value["text"], ensure_ascii=False), after)
            label_at = label_before(joined, value["labels"][0], after, at) if at >= 0 else -1
            if label_at < 0:
                continue
            after = at
            dist = distribution_at(tokens[token_at(tokens, label_at)], labels)
            if dist and value["text"] in gold:
                found.append((n, value["labels"][0], gold[value["text"]], dist))
    if not found:
        return
    mean = content_free_prior([f[3] for f in found], shrink=0)  # the plain mean of the distributions
    first = content_free_prior([f[3] for f in found if f[0] == 0] or [mean], shrink=0)
    print(f"\n{len(found)} entities found; mean label distribution {dict(zip(labels, map(_f, mean), strict=True))}\n")
    print("| type | right |\n|---|---|")
    print(f"| as written | {sum(w == g for _, w, g, _ in found)} |")
    for strength in (0.5, 1.0):
        for name, prior_of in (("mean", lambda n: mean),
                               ("first item's mean for first items", lambda n: first if n == 0 else mean)):
            right = 0
            for n, _, g, dist in found:
                c = calibrate(dist, prior_of(n), strength)
                right += labels[max(range(len(labels)), key=c.__getitem__)] == g
            print(f"| re-decided, {name} divided out ({strength}) | {right} |")


def _batches(n: int, size: int, seed: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i : i + size] for i in range(0, n, size)]


def analyse(args: argparse.Namespace) -> None:
    runs = [json.loads(Path(path).read_text(encoding="utf-8")) for path in args.paths]
    saved = {**runs[0], "rows": [row for run in runs for row in run["rows"]]}  # e.g. one file per listed order
    name = " + ".join(Path(path).name for path in args.paths)
    if saved["key"] == "ner":
        return analyse_entities(saved, name)
    key, values = saved["key"], saved["values"]
    k = len(values)
    by_order: dict[str, dict[str, list]] = {}
    for row in saved["rows"]:
        part = by_order.setdefault(row["order"], {"items": [], "free": []})
        dist = choice_distribution([tuple(t) for t in row["tokens"]], key, values) or [1 / k] * k
        written = json.loads(row["reply"]).get(key)
        if row["gold"] is None:
            part["free"].append(dist)
        else:
            part["items"].append((values.index(row["gold"]), dist, written))

    def batch_rule(strength: float) -> Callable[[list[list[float]], list[int], list], list[list[float]]]:
        def rule(dists: list[list[float]], members: list[int], _free: list) -> list[list[float]]:
            inside = [dists[i] for i in members]
            prior = [(sum(d[j] for d in inside) + 2 / k) / (len(inside) + 2) for j in range(k)]
            return [calibrate(dists[i], prior, strength) for i in members]
        return rule

    def free_rule(strength: float) -> Callable[[list[list[float]], list[int], list], list[list[float]]]:
        def rule(dists: list[list[float]], members: list[int], free: list) -> list[list[float]]:
            prior = [0.8 * sum(d[j] for d in free) / len(free) + 0.2 / k for j in range(k)]
            return [calibrate(dists[i], prior, strength) for i in members]
        return rule

    rules: dict[str, Callable | None] = {"generated": None, "raw": batch_rule(0.0)}
    for strength in (0.5, 1.0):
        rules[f"batch {strength}"] = batch_rule(strength)
        rules[f"content-free {strength}"] = free_rule(strength)
    print(f"## {name}: {len(by_order['forward']['items'])} items, choices {values}\n")
    print("| rule | listed order | accuracy | AUROC | ECE | skew80 accuracy | order test: changed |")
    print("|---|---|---|---|---|---|---|")
    for name, rule in rules.items():
        answers: dict[str, list[int]] = {}
        for order, part in by_order.items():
            gold = [g for g, _, _ in part["items"]]
            dists = [d for _, d, _ in part["items"]]
            if rule is None:
                picks = [values.index(w) if w in values else -1 for _, _, w in part["items"]]
                scores = [1.0] * len(picks)
            else:
                settled = {}
                for members in _batches(len(dists), 25, 0):
                    settled.update(zip(members, rule(dists, members, part["free"]), strict=True))
                picks = [max(range(k), key=settled[i].__getitem__) for i in range(len(dists))]
                scores = [settled[i][p] for i, p in enumerate(picks)]
            right = [p == g for p, g in zip(picks, gold, strict=True)]
            answers[order] = picks
            skew = _skew80(rule, dists, gold, part["free"], k) if rule is not None else None
            print(f"| {name} | {order} | {sum(right) / len(right):.1%} | {_f(auroc(scores, right))} "
                  f"| {_f(ece(scores, right))} | {'-' if skew is None else f'{skew:.1%}'} ", end="")
            changed = sum(a != b for a, b in zip(answers["forward"], picks, strict=True)) / len(picks)
            print(f"| {'' if order == 'forward' else f'{changed:.1%}'} |")
    if len(by_order) == 2:
        _both_orders(by_order, free_rule(0.5), k)
    part = by_order.get("forward") or next(iter(by_order.values()))  # the backend's rule, in the order it lists
    dists = [d for _, d, _ in part["items"]]
    settled = free_rule(0.5)(dists, list(range(len(dists))), part["free"])
    picks = [max(range(k), key=d.__getitem__) for d in settled]
    right = [p == g for p, (g, _, _) in zip(picks, part["items"], strict=True)]
    interval = auroc_interval([d[p] for d, p in zip(settled, picks, strict=True)], right)
    if interval is not None:
        print(f"\nThe backend's rule (content-free 0.5) over all {len(dists)} items at once: AUROC 95 % bootstrap "
              f"interval [{interval[0]:.3f}, {interval[1]:.3f}] (2,000 resamples)")


def _both_orders(by_order: dict[str, dict[str, list]], rule: Callable, k: int) -> None:
    """The row for a choice asked in both listed orders: the two content-free 0.5 distributions averaged."""
    settled = []
    for part in by_order.values():
        dists = [d for _, d, _ in part["items"]]
        settled.append(rule(dists, list(range(len(dists))), part["free"]))
    mean = [[(a + b) / 2 for a, b in zip(x, y, strict=True)] for x, y in zip(*settled, strict=True)]
    gold = [g for g, _, _ in by_order["forward"]["items"]]
    picks = [max(range(k), key=d.__getitem__) for d in mean]
    scores = [d[p] for d, p in zip(mean, picks, strict=True)]
    right = [p == g for p, g in zip(picks, gold, strict=True)]
    print(f"| both orders, content-free 0.5 averaged (2 calls) | both | {sum(right) / len(right):.1%} "
          f"| {_f(auroc(scores, right))} | {_f(ece(scores, right))} | - | - |")


def _skew80(rule: Callable, dists: list, gold: list[int], free: list, k: int) -> float:
    """Mean accuracy over batches made of all of one class's items plus a quarter as many others."""
    accuracies = []
    for c in range(k):
        members = [i for i, g in enumerate(gold) if g == c]
        members += [i for i, g in enumerate(gold) if g != c][: max(1, len(members) // 4)]
        settled = rule(dists, members, free)
        right = sum(max(range(k), key=d.__getitem__) == gold[i] for i, d in zip(members, settled, strict=True))
        accuracies.append(right / len(members))
    return sum(accuracies) / len(accuracies)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--set", choices=["topics", "sentiment", "entities", "entities-partial"], default="topics")
    c.add_argument("--n", type=int, default=100)
    c.add_argument("--seed", type=int, default=0, help="which items (the benchmark's --seed)")
    c.add_argument("--base-url", default="", help="a running local model server (default: start one)")
    c.add_argument("--order", default="both", choices=["both", "forward", "reversed"],
                   help="choices: the listed orders to ask in (one per process: --merge the files)")
    c.add_argument("--label-prefix", default="", help="choices: put this before every choice name")
    c.add_argument("--out", required=True)
    a = sub.add_parser("analyse")
    a.add_argument("paths", nargs="+", help="saved collections of one set (several: their rows together)")
    args = parser.parse_args(argv)
    collect(args) if args.command == "collect" else analyse(args)


if __name__ == "__main__":
    main()
