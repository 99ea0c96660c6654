from label_studio_sdk.label_interface import LabelInterface

from my_ml_backend.labeling.controls import OBJECT_TAGS
from my_ml_backend.labeling.prompts import build_prompt, read_texts
from my_ml_backend.labeling.results import build_results
from my_ml_backend.labeling.schema import parse_schema
from tests.conftest import config

MIXED = """<View>
  <Text name="text" value="$text"/>
  <Text name="title" value="$title"/>
  <Choices name="topic" toName="text" choice="multiple">
    <Choice value="Tech"/><Choice value="Sports"/><Choice value="Other"/>
  </Choices>
  <Choices name="mood" toName="title"><Choice value="好"/><Choice value="坏"/></Choices>
  <TextArea name="note" toName="text" placeholder="One-line summary"/>
  <Labels name="ner" toName="text"><Label value="PER"/></Labels>
  <Image name="img" value="$image"/>
  <Choices name="img_class" toName="img"><Choice value="cat"/></Choices>
  <TextArea name="per_region" toName="text" perRegion="true"/>
</View>"""


def schema(cfg: str = MIXED):
    return parse_schema(cfg, OBJECT_TAGS)


def test_schema_keeps_text_controls_only() -> None:
    s = schema()
    assert [src.data_key for src in s.sources] == ["text", "title"]
    assert [t.name for t in s.targets] == ["topic", "mood", "note", "ner"]  # no image, no perRegion


def test_prompt_has_one_part_per_pair_and_only_present_texts() -> None:
    s = schema()
    texts, truncated = read_texts(s, {"text": "abcdef", "title": "t"}, max_chars=3)
    assert texts == {"text": "abc", "title": "t"} and truncated == ["text"]
    user = "\n".join(m["content"] for m in build_prompt(s, texts))
    for part in ('"topic"', '"mood"', '"note"', "- Tech", "One-line summary", "abc"):
        assert part in user
    only_title = "\n".join(m["content"] for m in build_prompt(s, {"title": "t"}))
    assert '"mood"' in only_title and '"topic"' not in only_title


def test_results_validate_and_bad_answers_are_dropped() -> None:
    s = schema()
    answers = {"topic": ["tech", "Weather", "Other"], "mood": "不知道", "note": "short"}
    results, answered = build_results(s, answers, {"text": "x", "title": "y"})
    by_name = {r["from_name"]: r for r in results}
    assert by_name["topic"]["value"] == {"choices": ["Tech", "Other"]}
    assert "mood" not in by_name  # no valid choice named: no region rather than a wrong one
    assert by_name["note"]["value"] == {"text": ["short"]} and by_name["note"]["to_name"] == "text"
    assert answered == 2
    li = LabelInterface(MIXED)
    assert li.validate_prediction({"result": results}, return_errors=True) == []


def test_single_choice_keeps_one_value() -> None:
    s = schema(config("text_classification"))
    results, _ = build_results(s, {"sentiment": ["负面", "正面"]}, {"text": "x"})
    assert [r["value"] for r in results] == [{"choices": ["负面"]}]


def test_seed_configs_parse() -> None:
    for name in ("text_classification", "code_comments", "text_analysis", "technical_qa", "error_debugging"):
        s = schema(config(name))
        assert s.targets, name
