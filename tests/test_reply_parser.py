import pytest

from my_ml_backend.labeling.controls.matching import match_value, normalize
from my_ml_backend.labeling.parsing import parse_reply

NAMES = ["sentiment", "summary"]


@pytest.mark.parametrize(
    "reply",
    [
        '{"sentiment": "正面", "summary": "好"}',
        '```json\n{"sentiment": "正面", "summary": "好"}\n```',
        '结果如下：{"sentiment": "正面", "summary": "好"} 希望有帮助',
        "{“sentiment”： “正面”， “summary”： “好”}",
        '<think>嗯</think>{"sentiment": "正面", "summary": "好"}',
        '{"Sentiment": "正面", "SUMMARY": "好"}',
    ],
)
def test_tolerant_json(reply: str) -> None:
    assert parse_reply(reply, NAMES) == {"sentiment": "正面", "summary": "好"}


def test_braces_inside_strings() -> None:
    reply = 'Here: {"summary": "def f(): return {1: 2}", "sentiment": "负面"} done'
    assert parse_reply(reply, NAMES) == {"summary": "def f(): return {1: 2}", "sentiment": "负面"}


def test_unknown_keys_ignored_and_nothing_invented() -> None:
    assert parse_reply('{"other": 1}', NAMES) == {}
    assert parse_reply("I cannot help with that.", NAMES) == {}
    assert parse_reply("", NAMES) == {}


def test_plain_text_for_a_single_control() -> None:
    assert parse_reply("负面", ["sentiment"]) == {"sentiment": "负面"}
    assert parse_reply('{"label": "负面"}', ["sentiment"]) == {"sentiment": "负面"}


def test_matching_only_returns_allowed_values() -> None:
    allowed = ["正面", "负面", "中性", "Bug"]
    assert match_value("「正面」", allowed) == "正面"
    assert match_value("正面情感", allowed) == "正面"
    assert match_value(" bug ", allowed) == "Bug"
    assert match_value("ＢＵＧ", allowed) == "Bug"
    assert match_value("unrelated", allowed) is None
    assert match_value("正面还是负面", allowed) is None  # ambiguous: two values inside
    assert normalize("  “Hello  World” ") == "hello world"


LOOP = '{"ner": [{"label": "PER", "text": "张三"}, {"label": "ORG", "text": "腾讯"}, ' + (
    '{"label": "LOC", "text": "北京"}, ' * 60
)


@pytest.mark.parametrize("cut", ['{"label": "LOC", "te', '{"label": "LOC", "text": "北', "{", ""])
def test_a_reply_cut_at_max_tokens_keeps_its_complete_items(cut: str) -> None:
    answers = parse_reply(LOOP + cut, ["ner"])
    assert answers["ner"][:3] == [{"label": "PER", "text": "张三"}, {"label": "ORG", "text": "腾讯"},
                                  {"label": "LOC", "text": "北京"}]
    assert all(item.get("text") in ("张三", "腾讯", "北京") for item in answers["ner"])  # the cut item not guessed


def test_a_cut_value_is_never_completed() -> None:
    """Read back to the last complete object or list: a comma may sit inside a cut string ("Willis, Sheppard")."""
    assert parse_reply('{"sentiment": "正', NAMES) == {}
    assert parse_reply('{"summary": "好", "sentiment": "正', NAMES) == {}
    assert parse_reply('{"ner": [{"label": "ORG", "text": "Willis, Sheppard', ["ner"]) == {}
    assert parse_reply('{"ner": [{"label": "PER", "text": "张', ["ner"]) == {}
