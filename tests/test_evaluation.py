"""Evaluation metrics on hand-counted cases, and the command on a Label Studio export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from my_ml_backend.jobs.cli import evaluate_main
from my_ml_backend.jobs.evaluation_report import MISSING, Evaluation
from my_ml_backend.jobs.evaluation_runs import latest_annotation, stored_prediction
from my_ml_backend.labeling.controls import OBJECT_TAGS
from my_ml_backend.labeling.schema import parse_schema

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="正面"/><Choice value="负面"/><Choice value="中性"/></Choices>
  <Labels name="ner" toName="text"><Label value="PER"/><Label value="LOC"/></Labels>
  <TextArea name="summary" toName="text"/>
</View>"""
SCHEMA = parse_schema(CONFIG, OBJECT_TAGS)


def choice(value: str) -> dict:
    return {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [value]}}


def span(start: int, end: int, text: str, label: str) -> dict:
    value = {"start": start, "end": end, "text": text, "labels": [label]}
    return {"from_name": "ner", "to_name": "text", "type": "labels", "value": value}


def test_choices_accuracy_macro_f1_and_confusion() -> None:
    ev = Evaluation(SCHEMA)
    pairs = [("正面", "正面"), ("正面", "负面"), ("负面", "负面"), ("负面", None)]
    for gold, guess in pairs:
        ev.add([choice(gold)], [choice(guess)] if guess else [])
    report = ev.controls["sentiment"]
    assert report.tasks == 4 and report.accuracy == 0.5
    # 正面: tp1 fn1 -> P 1, R .5, F1 .667; 负面: tp1 fp1 fn1 -> .5/.5/.5; 中性: 0 -> macro (0.667+0.5+0)/3
    assert report.labels["正面"].f1 == pytest.approx(2 / 3)
    assert report.labels["负面"].f1 == pytest.approx(0.5)
    assert report.macro_f1 == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert report.confusion[("正面", "负面")] == 1 and report.confusion[("负面", MISSING)] == 1
    assert ev.controls["ner"].tasks == 0  # not annotated: not counted
    text = "\n".join(ev.lines())
    assert "准确率 (accuracy): 0.500" in text and "混淆表" in text


def test_spans_scored_on_exact_offsets_and_label() -> None:
    ev = Evaluation(SCHEMA)
    gold = [span(0, 2, "张三", "PER"), span(3, 5, "北京", "LOC")]
    guess = [span(0, 2, "张三", "PER"), span(3, 5, "北京", "PER"), span(6, 8, "上海", "LOC")]
    ev.add(gold, guess)
    report = ev.controls["ner"]
    assert (report.labels["PER"].tp, report.labels["PER"].fp, report.labels["PER"].fn) == (1, 1, 0)
    assert (report.labels["LOC"].tp, report.labels["LOC"].fp, report.labels["LOC"].fn) == (0, 1, 1)
    micro = report.micro
    assert micro.precision == pytest.approx(1 / 3) and micro.recall == pytest.approx(1 / 2)
    assert report.exact == 0


def test_latest_non_cancelled_annotation_and_prediction_by_version() -> None:
    task = {
        "annotations": [
            {"id": 1, "result": [choice("正面")], "updated_at": "2026-01-02"},
            {"id": 2, "result": [choice("负面")], "updated_at": "2026-01-03", "was_cancelled": True},
            {"id": 3, "result": [choice("中性")], "updated_at": "2026-01-01"},
        ],
        "predictions": [
            {"id": 1, "model_version": "a", "result": [choice("正面")], "created_at": "2026-01-01"},
            {"id": 2, "model_version": "b", "result": [choice("负面")], "created_at": "2026-01-02"},
        ],
    }
    assert latest_annotation(task) == [choice("正面")]
    assert stored_prediction(task, None) == [choice("负面")]
    assert stored_prediction(task, "a") == [choice("正面")]
    assert stored_prediction(task, "c") == []
    assert latest_annotation({"annotations": [{"result": [], "was_cancelled": False}]}) is None


def test_command_scores_an_export_and_writes_a_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = [
        {"id": i, "data": {"text": t}, "annotations": [{"id": i, "result": [choice(g)]}],
         "predictions": [{"id": i, "model_version": "v", "result": [choice(p)]}]}
        for i, (t, g, p) in enumerate([("好", "正面", "正面"), ("差", "负面", "正面"), ("还行", "中性", "中性")])
    ]
    (tmp_path / "export.json").write_text(json.dumps(export, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "config.xml").write_text(CONFIG, encoding="utf-8")
    chart = tmp_path / "out" / "eval.png"
    code = evaluate_main(["--export", str(tmp_path / "export.json"), "--config", str(tmp_path / "config.xml"),
                 "--chart", str(chart)])
    out = capsys.readouterr().out
    assert code == 0
    assert "评估任务数 (tasks evaluated): 3" in out and "准确率 (accuracy): 0.667" in out
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 5000
    assert "图表 (chart)" in out


def test_predict_mode_shows_the_few_shot_gain(
    llm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model that is right only when shown examples: 0 examples vs 2 must differ, through real HTTP."""
    gold = {"这家店很棒": "正面", "再也不来了": "负面", "服务一般": "中性", "东西不错": "正面"}

    def model(body: dict) -> object:
        from tests.fake_llm import server as fake

        prompt = body["messages"][-1]["content"]
        task_text = next(t for t in gold if f"<<<\n{t}\n>>>" in prompt)
        label = gold[task_text] if "示例 1" in prompt else "正面"
        return fake.chat(json.dumps({"sentiment": label}, ensure_ascii=False))

    llm.set_responder(model)
    for name, value in {"MODELSCOPE_API_KEY": "sk-test", "MODELSCOPE_API_URL": llm.base_url, "LLM_CACHE": "off",
                        "LOG_DIR": str(tmp_path / "logs"), "DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(name, value)
    export = [{"id": i, "data": {"text": t}, "annotations": [{"id": i, "result": [choice(g)]}]}
              for i, (t, g) in enumerate(gold.items(), start=1)]
    (tmp_path / "export.json").write_text(json.dumps(export, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "config.xml").write_text(CONFIG, encoding="utf-8")
    code = evaluate_main(["--export", str(tmp_path / "export.json"), "--config", str(tmp_path / "config.xml"),
                 "--predict", "--compare", "0", "2", "--chart", str(tmp_path / "c.png")])
    out = capsys.readouterr().out
    assert code == 0
    zero, two = out.split("=== 2 examples ===")
    assert "准确率 (accuracy): 0.500" in zero  # always 正面: right on 2 of 4
    assert "准确率 (accuracy): 1.000" in two
    assert llm.chat_calls == 8
