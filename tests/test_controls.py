"""Each control handler with hand-written configs and replies, adversarial ones included."""

from __future__ import annotations

from label_studio_sdk.label_interface import LabelInterface

from my_ml_backend.labeling.controls import OBJECT_TAGS
from my_ml_backend.labeling.parsing import parse_reply
from my_ml_backend.labeling.prompts import build_prompt
from my_ml_backend.labeling.results import build_results
from my_ml_backend.labeling.schema import parse_schema

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Labels name="ner" toName="text">
    <Label value="PER" hint="人名"/><Label value="ORG"/><Label value="LOC"/>
  </Labels>
  <Rating name="stars" toName="text" maxRating="5"/>
  <Number name="price" toName="text" min="0" max="1000"/>
  <DateTime name="when" toName="text" only="date"/>
  <Taxonomy name="topic" toName="text">
    <Choice value="科技"><Choice value="AI"/><Choice value="芯片"/></Choice>
    <Choice value="体育"/>
  </Taxonomy>
  <HyperText name="html" value="$html"/>
  <Labels name="html_ner" toName="html"><Label value="X"/></Labels>
</View>"""
SCHEMA = parse_schema(CONFIG, OBJECT_TAGS)
LI = LabelInterface(CONFIG)


def run(answers: dict, text: str) -> dict[str, list[dict]]:
    results, _ = build_results(SCHEMA, answers, {"text": text})
    assert LI.validate_prediction({"result": results}, return_errors=True) == []
    out: dict[str, list[dict]] = {}
    for r in results:
        out.setdefault(r["from_name"], []).append(r["value"])
    return out


def spans(answers: list, text: str) -> list[tuple[int, int, str, str]]:
    values = run({"ner": answers}, text).get("ner", [])
    for v in values:
        assert text[v["start"] : v["end"]] == v["text"]
    return [(v["start"], v["end"], v["text"], v["labels"][0]) for v in values]


def test_spans_in_chinese_without_spaces() -> None:
    text = "张三在北京大学工作，李四也在北京。"
    got = spans(
        [{"text": "张三", "label": "PER"}, {"text": "北京大学", "label": "ORG"}, {"text": "北京", "label": "LOC"}], text
    )
    assert (0, 2, "张三", "PER") in got and (3, 7, "北京大学", "ORG") in got
    assert (3, 5, "北京", "LOC") in got and (14, 16, "北京", "LOC") in got  # every mention labelled


def test_astral_characters_before_entity_use_code_points() -> None:
    text = "😀😀 𠮷野家 hired Alice"
    got = spans([{"text": "Alice", "label": "PER"}, {"text": "𠮷野家", "label": "ORG"}], text)
    assert (text.index("Alice"), text.index("Alice") + 5, "Alice", "PER") in got
    assert (3, 6, "𠮷野家", "ORG") in got


def test_hint_picks_the_mention_the_model_pointed_at() -> None:
    text = "Apple pie. Apple Inc. makes phones."
    assert spans([{"text": "Apple", "label": "ORG", "start": 12}], text) == [(11, 16, "Apple", "ORG")]


def test_adversarial_entities_are_dropped_or_fixed() -> None:
    text = "Bob met alice."
    got = spans(
        [
            {"text": "Carol", "label": "PER"},  # not in the text
            {"text": "Bob", "label": "Person"},  # label not in config
            {"text": "ALICE", "label": " per "},  # case differs: matched, offsets from the real text
            {"text": "", "label": "PER"},
            "garbage",
            {"text": "Bob met", "label": "PER"},
            {"text": "Bob", "label": "PER"},  # overlaps a longer span of the same label
        ],
        text,
    )
    assert got == [(0, 7, "Bob met", "PER"), (8, 13, "alice", "PER")]


def test_span_answer_shapes() -> None:
    text = "李雷和韩梅梅"
    assert spans({"PER": ["李雷", "韩梅梅"]}, text) == [(0, 2, "李雷", "PER"), (3, 6, "韩梅梅", "PER")]
    assert spans([["李雷", "PER"]], text) == [(0, 2, "李雷", "PER")]


def test_labels_only_on_text_objects() -> None:
    assert "html_ner" not in [t.name for t in SCHEMA.targets]


def test_scalars() -> None:
    text = "x"
    assert run({"stars": 4, "price": "约 12.5 元", "when": "2024年3月5日"}, text) == {
        "stars": [{"rating": 4}],
        "price": [{"number": 12.5}],
        "when": [{"datetime": "2024-03-05"}],
    }
    assert run({"stars": 9, "price": 5000, "when": "someday"}, text) == {}  # out of range / unparsable
    assert run({"stars": "4 stars", "price": [3]}, text) == {"stars": [{"rating": 4}], "price": [{"number": 3}]}


def test_taxonomy_paths() -> None:
    assert run({"topic": ["科技 / AI"]}, "x") == {"topic": [{"taxonomy": [["科技", "AI"]]}]}
    assert run({"topic": ["芯片", "体育", "烹饪"]}, "x") == {"topic": [{"taxonomy": [["科技", "芯片"], ["体育"]]}]}
    assert run({"topic": "科技>AI"}, "x") == {"topic": [{"taxonomy": [["科技", "AI"]]}]}


def test_prompt_and_parser_cover_all_controls() -> None:
    user = "\n".join(m["content"] for m in build_prompt(SCHEMA, {"text": "abc"}))
    for name in ("ner", "stars", "price", "when", "topic", "人名", "科技 / AI", "2024-03-05"):
        assert name in user
    reply = '```json\n{"ner": [{"text": "abc", "label": "ORG"}], "stars": 3}\n```'
    assert parse_reply(reply, [t.name for t in SCHEMA.targets]) == {
        "ner": [{"text": "abc", "label": "ORG"}],
        "stars": 3,
    }
