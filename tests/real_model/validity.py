"""What a valid pre-annotation is, beyond what LabelInterface checks; configs for every control.

Shared by the real-model tests and ``bench/real_model_bench.py``. ``LabelInterface`` checks
names, types and label/choice values; it does not check that a span's text is the task's
text at its offsets, that a Number is within min/max, that a DateTime has the control's
format, or that a Taxonomy path exists in the tree. Label Studio users rely on all of these.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from label_studio_sdk.label_interface import LabelInterface

# Label Studio's DateTime formats per `only` value.
DATETIME_FORMATS = {"date": "%Y-%m-%d", "time": "%H:%M", "month": "%Y-%m", "year": "%Y"}

NER_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Labels name="ner" toName="text">
    <Label value="人名"/>
    <Label value="地名"/>
    <Label value="组织"/>
  </Labels>
</View>"""

RATING_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Rating name="stars" toName="text" maxRating="5"/>
</View>"""

NUMBER_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Number name="price" toName="text" min="0" max="100000"/>
</View>"""

DATETIME_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <DateTime name="date" toName="text" only="date"/>
</View>"""

TAXONOMY_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Taxonomy name="topic" toName="text">
    <Choice value="科技">
      <Choice value="人工智能"/>
      <Choice value="手机"/>
    </Choice>
    <Choice value="体育">
      <Choice value="足球"/>
      <Choice value="篮球"/>
    </Choice>
  </Taxonomy>
</View>"""

# Several objects (two Text, one Paragraphs) and every control type at once, plus a perRegion
# control that must be left to the annotator.
MIXED_CONFIG = """<View>
  <Header value="新闻稿审核"/>
  <Text name="title" value="$title"/>
  <Text name="body" value="$body"/>
  <Paragraphs name="dialogue" value="$dialogue" layout="dialogue" nameKey="author" textKey="text"/>
  <Choices name="tone" toName="title" choice="single">
    <Choice value="正面"/>
    <Choice value="负面"/>
    <Choice value="中性"/>
  </Choices>
  <Labels name="entities" toName="body">
    <Label value="人名"/>
    <Label value="地名"/>
    <Label value="组织"/>
  </Labels>
  <TextArea name="summary" toName="dialogue" rows="2" placeholder="用一句话总结对话"/>
  <Rating name="quality" toName="body" maxRating="5"/>
  <Number name="year" toName="body" min="1900" max="2100"/>
  <DateTime name="published" toName="body" only="date"/>
  <Taxonomy name="topic" toName="body">
    <Choice value="科技">
      <Choice value="人工智能"/>
    </Choice>
    <Choice value="经济"/>
  </Taxonomy>
  <TextArea name="region_note" toName="body" perRegion="true"/>
</View>"""


@dataclass
class ControlInfo:
    """What a result for one control may contain, read from the config's XML."""

    tag: str
    to_names: tuple[str, ...]
    attrs: dict[str, str]
    values: frozenset[str] = frozenset()
    paths: frozenset[tuple[str, ...]] = field(default_factory=frozenset)


def controls_of(label_config: str) -> dict[str, ControlInfo]:
    """The config's controls by name: tag, targets, attributes, allowed values, taxonomy paths."""
    root = ET.fromstring(label_config)
    controls: dict[str, ControlInfo] = {}
    for el in root.iter():
        if el.tag not in {"Choices", "Labels", "TextArea", "Rating", "Number", "DateTime", "Taxonomy"}:
            continue
        paths: set[tuple[str, ...]] = set()

        def walk(node: ET.Element, prefix: tuple[str, ...], paths: set[tuple[str, ...]] = paths) -> None:
            for child in node:
                if child.tag == "Choice":
                    path = (*prefix, child.get("value", ""))
                    paths.add(path)
                    walk(child, path)

        walk(el, ())
        values = frozenset(c.get("value", "") for c in el.iter() if c.tag in {"Choice", "Label"})
        controls[el.get("name", "")] = ControlInfo(
            tag=el.tag.lower(),
            to_names=tuple(el.get("toName", "").split(",")),
            attrs=dict(el.attrib),
            values=values,
            paths=frozenset(paths),
        )
    return controls


def object_text(label_config: str, data: dict[str, Any], object_name: str) -> str:
    """The task text a span's offsets refer to (the Text object's data field, verbatim)."""
    for el in ET.fromstring(label_config).iter():
        if el.get("name") == object_name and el.get("value", "").startswith("$"):
            return str(data[el.get("value", "")[1:]])
    raise AssertionError(f"no object {object_name!r} in the config")


def region_problems(region: dict[str, Any], info: ControlInfo, text: str) -> list[str]:
    """What LabelInterface does not check but Label Studio users rely on; empty when fine."""
    value, problems = region["value"], []
    if region["to_name"] not in info.to_names:
        problems.append(f"to_name {region['to_name']!r} is not one of {info.to_names}")
    if info.tag == "labels":
        start, end = value["start"], value["end"]
        if not (0 <= start < end <= len(text)):
            problems.append(f"span [{start}, {end}) outside the text ({len(text)} code points)")
        if value.get("text") != text[start:end]:
            problems.append(f"span text {value.get('text')!r} != task_text[{start}:{end}] {text[start:end]!r}")
    elif info.tag == "textarea":
        if not value["text"] or not all(isinstance(t, str) and t.strip() for t in value["text"]):
            problems.append(f"empty TextArea value {value}")
    elif info.tag == "rating":
        if not isinstance(value["rating"], int) or not 1 <= value["rating"] <= int(info.attrs.get("maxRating", 5)):
            problems.append(f"rating {value['rating']!r} outside 1..{info.attrs.get('maxRating', 5)}")
    elif info.tag == "number":
        number = value["number"]
        low, high = float(info.attrs.get("min", "-inf")), float(info.attrs.get("max", "inf"))
        if not isinstance(number, int | float) or not low <= number <= high:
            problems.append(f"number {number!r} outside [{low}, {high}]")
    elif info.tag == "datetime":
        fmt = DATETIME_FORMATS[info.attrs.get("only", "date").split(",")[0]]
        try:
            datetime.strptime(value["datetime"], fmt)
        except (TypeError, ValueError):
            problems.append(f"datetime {value['datetime']!r} does not match {fmt}")
    elif info.tag == "taxonomy":
        bad = [p for p in value["taxonomy"] if tuple(p) not in info.paths]
        if bad:
            problems.append(f"taxonomy paths {bad} not in the tree")
    elif info.tag == "choices":
        if not set(value["choices"]) <= info.values:
            problems.append(f"choices {value['choices']} not in {sorted(info.values)}")
    return problems


def prediction_problems(label_config: str, task: dict[str, Any], prediction: dict[str, Any]) -> list[str]:
    """Everything wrong with one prediction of our backend for `task`; empty when it is valid.

    A failed task (an `error` and no `result`) is a problem too: these checks are for tasks
    the model was asked about.
    """
    if "result" not in prediction:
        return [f"no result: {prediction.get('error')}"]
    interface = LabelInterface(label_config)
    controls = controls_of(label_config)
    problems = list(interface.validate_prediction(prediction, return_errors=True))
    if not 0.0 <= prediction.get("score", -1) <= 1.0:
        problems.append(f"prediction score {prediction.get('score')!r} outside [0, 1]")
    for region in prediction["result"]:
        info = controls.get(region.get("from_name", ""))
        if info is None:
            problems.append(f"unknown control in {region}")
            continue
        if region.get("type") != info.tag:
            problems.append(f"type {region.get('type')!r} for a {info.tag} control")
        problems += interface.validate_region(region, return_errors=True)
        text = object_text(label_config, task["data"], region["to_name"]) if info.tag == "labels" else ""
        problems += region_problems(region, info, text)
        if not 0.0 <= region.get("score", 0.0) <= 1.0:
            problems.append(f"region score {region['score']!r} outside [0, 1]")
    return problems
