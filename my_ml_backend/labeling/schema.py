"""What a project asks for: its Text-like objects and the controls attached to them.

Parsed once per labeling config with `label_studio_sdk`'s `LabelInterface` (never by
hand), so that prompt building and result mapping share one view of the config.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from label_studio_sdk.label_interface import LabelInterface
from label_studio_sdk.label_interface.control_tags import ControlTag
from label_studio_sdk.label_interface.object_tags import ObjectTag

logger = logging.getLogger(__name__)

# Object tags whose task data is text we can put in a prompt.
TEXT_OBJECT_TAGS = frozenset({"text", "hypertext", "paragraphs"})
# A TextArea with one of these names holds the annotator's instruction for interactive
# pre-annotation (Label Studio's own LLM example calls it `prompt`): input, not output.
PROMPT_CONTROL_NAMES = frozenset({"prompt", "instruction", "instructions"})


@dataclass(frozen=True)
class TextSource:
    """A text object of the config and the task data key it reads (`$text` -> `text`)."""

    name: str
    tag: str
    data_key: str

    def read(self, data: dict[str, Any]) -> str | None:
        """The object's text in a task, or None when the task does not carry it."""
        value = data.get(self.data_key)
        if value is None:
            return None
        if isinstance(value, list):  # Paragraphs: [{"author": ..., "text": ...}, ...]
            lines = []
            for item in value:
                if isinstance(item, dict):
                    who = item.get("author") or item.get("name") or ""
                    said = item.get("text") or item.get("content") or ""
                    lines.append(f"{who}: {said}" if who else str(said))
                else:
                    lines.append(str(item))
            value = "\n".join(lines)
        text = str(value)
        return text if text.strip() else None


@dataclass(frozen=True)
class Target:
    """One control to answer, with the text objects it labels (one prompt part each)."""

    control: ControlTag
    sources: tuple[TextSource, ...]
    # Taxonomy only: every selectable path from the root, e.g. ("动物", "猫").
    paths: tuple[tuple[str, ...], ...] = ()
    # The labels in the order a prompt lists them when not the canonical one (a second opinion's reversed list).
    listed_order: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.control.name

    @property
    def tag(self) -> str:
        return self.control.tag.lower()


@dataclass(frozen=True)
class LabelingSchema:
    """The parsed config: the interface (for validation) and the controls we can answer."""

    interface: LabelInterface
    sources: tuple[TextSource, ...]
    targets: tuple[Target, ...]
    config_hash: str
    # `<Header value>` texts of the config: the project's own words about the task.
    headers: tuple[str, ...] = ()
    # Controls the annotator fills in to steer interactive pre-annotation (never predicted).
    prompt_controls: tuple[str, ...] = ()

    @property
    def data_keys(self) -> list[str]:
        return [s.data_key for s in self.sources]


def _source(obj: ObjectTag) -> TextSource | None:
    if obj.tag.lower() not in TEXT_OBJECT_TAGS or not obj.value_is_variable:
        return None
    return TextSource(name=obj.name, tag=obj.tag, data_key=obj.value_name)


def _tags(collection: Any) -> list[Any]:
    """LabelInterface returns tags as a dict, or as its values, depending on the config."""
    return list(collection.values()) if isinstance(collection, dict) else list(collection)


def config_hash(label_config: str) -> str:
    return hashlib.sha256(label_config.encode("utf-8")).hexdigest()[:16]


def taxonomy_paths(interface: LabelInterface, name: str) -> tuple[tuple[str, ...], ...]:
    """All paths of a `<Taxonomy>`'s nested `<Choice>` tree (the SDK flattens its labels)."""
    root = next((el for el in interface._tree.iter("Taxonomy") if el.get("name") == name), None)
    paths: list[tuple[str, ...]] = []

    def walk(element: Any, prefix: tuple[str, ...]) -> None:
        for child in element:
            if child.tag == "Choice" and child.get("value"):
                path = (*prefix, child.get("value"))
                paths.append(path)
                walk(child, path)

    if root is not None:
        walk(root, ())
    return tuple(paths)


@lru_cache(maxsize=64)
def parse_schema(label_config: str, object_tags: frozenset[tuple[str, frozenset[str]]]) -> LabelingSchema:
    """Parse `label_config`; keep the controls we answer: `object_tags` maps each supported
    control tag to the object tags it may label (`controls.OBJECT_TAGS`).

    Controls of other types, `perRegion` controls and controls on non-text objects are
    left alone (they stay for the human annotator) and do not break the task.
    """
    allowed_by_tag = dict(object_tags)
    interface = LabelInterface(label_config)
    sources: dict[str, TextSource] = {}
    for obj in _tags(interface.objects):
        src = _source(obj)
        if src:
            sources[src.name] = src
    targets = []
    prompt_controls = []
    for control in _tags(interface.controls):
        if control.tag.lower() == "textarea" and control.name.lower() in PROMPT_CONTROL_NAMES:
            prompt_controls.append(control.name)  # the annotator's instruction, as in Label Studio's LLM example
            continue
        if control.tag.lower() not in allowed_by_tag:
            logger.debug("Control %s (%s) is not pre-annotated", control.name, control.tag)
            continue
        if str(control.attr.get("perRegion", "")).lower() == "true":
            logger.debug("Control %s is perRegion: left to the annotator", control.name)
            continue
        allowed_objects = allowed_by_tag[control.tag.lower()]
        linked = tuple(
            sources[n] for n in control.to_name or [] if n in sources and sources[n].tag.lower() in allowed_objects
        )
        if linked:
            paths = taxonomy_paths(interface, control.name) if control.tag.lower() == "taxonomy" else ()
            targets.append(Target(control=control, sources=linked, paths=paths))
    return LabelingSchema(
        interface=interface,
        sources=tuple(sources.values()),
        targets=tuple(targets),
        config_hash=config_hash(label_config),
        headers=tuple(h for h in (el.get("value", "").strip() for el in interface._tree.iter("Header")) if h),
        prompt_controls=tuple(prompt_controls),
    )
