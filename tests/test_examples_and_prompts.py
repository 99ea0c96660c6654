"""Annotations as examples, few-shot selection, and the project's own words in the prompt."""

from __future__ import annotations

from my_ml_backend.labeling.controls import OBJECT_TAGS
from my_ml_backend.labeling.prompts import PromptGuidance, build_prompt
from my_ml_backend.labeling.results import build_results
from my_ml_backend.labeling.schema import parse_schema
from my_ml_backend.learning.examples import Example, answers_from_results, example_from_annotation
from my_ml_backend.learning.retrieval import FewShotExamples, FewShotForm, choose, render_examples
from tests.test_controls import CONFIG as ALL_CONTROLS

SENTIMENT = """<View>
  <Header value="判断用户评论的情感倾向"/>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text" hint="只看对商品本身的评价">
    <Choice value="正面" hint="满意、推荐"/><Choice value="负面"/>
  </Choices>
  <TextArea name="prompt" toName="text"/>
  <TextArea name="summary" toName="text"/>
</View>"""


def test_every_control_round_trips_from_answer_to_results_and_back() -> None:
    """to_answer is the inverse of to_values: a human's results shown as an example mean the same."""
    schema = parse_schema(ALL_CONTROLS, OBJECT_TAGS)
    text = "张三 3 月 5 日在北京花了 300 元买了 AI 芯片，五星好评。"
    answers = {
        "ner": [{"text": "张三", "label": "PER"}, {"text": "北京", "label": "LOC"}],
        "stars": 5,
        "price": 300,
        "when": "2024-03-05",
        "topic": ["科技 / AI"],
    }
    results, _ = build_results(schema, answers, {"text": text})
    assert answers_from_results(schema, results) == answers
    again, _ = build_results(schema, answers_from_results(schema, results), {"text": text})
    assert [r["value"] for r in again] == [r["value"] for r in results]


def test_annotation_becomes_an_example_of_predicted_controls_only() -> None:
    schema = parse_schema(SENTIMENT, OBJECT_TAGS)
    assert schema.prompt_controls == ("prompt",)
    assert [t.name for t in schema.targets] == ["sentiment", "summary"]  # the prompt TextArea is input
    results = [
        {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": ["负面"]}},
        {"from_name": "prompt", "to_name": "text", "type": "textarea", "value": {"text": ["不要管物流"]}},
    ]
    example = example_from_annotation(schema, {"id": 7, "data": {"text": "太差了"}}, results, 4000)
    assert example == Example(task_id=7, texts={"text": "太差了"}, answers={"sentiment": "负面"})
    assert example_from_annotation(schema, {"id": 8, "data": {"text": "x"}}, [], 4000) is None  # cancelled/empty


def pool() -> list[Example]:
    texts = [
        ("物流很快，包装完好，很满意", "正面"),
        ("物流很快，但是商品有划痕", "负面"),
        ("物流很快，包装也不错", "正面"),
        ("客服态度差，退货很麻烦", "负面"),
        ("这本书的内容很有启发", "正面"),
    ]
    return [Example(i, {"text": t}, {"sentiment": label}) for i, (t, label) in enumerate(texts, start=1)]


def select_examples(pool: list[Example], texts: dict[str, str], k: int, budget_chars: int) -> list[Example]:
    """The examples the block form shows for a task from a plain pool (what the evaluation command builds)."""
    examples = FewShotExamples.of_pool(pool, FewShotForm(k, "block"), budget_chars)
    return choose(examples.index, texts, examples.form, examples.budget_chars)


def test_selection_prefers_similar_texts_and_covers_each_answer() -> None:
    chosen = select_examples(pool(), {"text": "物流很快，包装完好"}, k=2, budget_chars=1000)
    assert [e.task_id for e in chosen] == [1, 2]  # most similar 正面, then the most similar 负面 (not 3)
    assert [e.task_id for e in select_examples(pool(), {"text": "物流很快，包装完好"}, k=3, budget_chars=1000)] == [
        1,
        2,
        3,
    ]


def test_selection_respects_k_budget_and_never_shows_the_task_itself() -> None:
    assert select_examples(pool(), {"text": "x"}, k=0, budget_chars=1000) == []
    assert select_examples([], {"text": "x"}, k=3, budget_chars=1000) == []
    small = select_examples(pool(), {"text": "物流很快"}, k=5, budget_chars=60)
    assert 1 <= len(small) < 5
    itself = select_examples(pool(), {"text": "物流很快，包装完好，很满意"}, k=5, budget_chars=10_000)
    assert 1 not in [e.task_id for e in itself] and len(itself) == 4


def test_prompt_carries_headers_hints_instructions_language_and_examples() -> None:
    schema = parse_schema(SENTIMENT, OBJECT_TAGS)
    guidance = PromptGuidance(instructions="忽略物流相关内容", language="English")
    examples = render_examples(pool()[:1])
    user = "\n".join(m["content"] for m in build_prompt(schema, {"text": "还行"}, guidance, examples))
    for expected in (
        "判断用户评论的情感倾向",
        "只看对商品本身的评价",
        "正面: 满意、推荐",
        "忽略物流相关内容",
        "文字类答案使用 English 书写",
        '答案 (answer): {"sentiment": "正面"}',
    ):
        assert expected in user, expected
    assert user.index("忽略物流相关内容") < user.index("示例 1") < user.index("还行")
    assert '"prompt"' not in user  # the annotator's instruction box is never asked for
    plain = "\n".join(m["content"] for m in build_prompt(schema, {"text": "还行"}))
    assert "项目要求" not in plain and "示例" not in plain


def test_guidance_fingerprint_and_added_instruction() -> None:
    assert PromptGuidance().fingerprint() == ""
    base = PromptGuidance(instructions="A")
    assert base.fingerprint() != PromptGuidance(instructions="B").fingerprint()
    assert base.with_instruction("  ").instructions == "A"
    assert base.with_instruction("B").instructions == "A\nB"
    assert PromptGuidance().with_instruction("B").instructions == "B"
