"""One small handler per Label Studio control: how to ask for it and how to read the answer.

A handler is a prompt fragment, a JSON schema and a parser (the split spacy-llm
uses), so adding a control type means adding one module here and registering it.
"""

from __future__ import annotations

from .base import ControlHandler
from .choices import ChoicesHandler
from .labels import LabelsHandler
from .scalars import DateTimeHandler, NumberHandler, RatingHandler
from .taxonomy import TaxonomyHandler
from .textarea import TextAreaHandler

HANDLERS: dict[str, ControlHandler] = {
    h.tag: h
    for h in (
        ChoicesHandler(),
        TextAreaHandler(),
        LabelsHandler(),
        RatingHandler(),
        NumberHandler(),
        DateTimeHandler(),
        TaxonomyHandler(),
    )
}
# Controls answered by a list of regions: leaving one out leaves the others a valid answer (`scorefit.fit_cut`).
LIST_TAGS: frozenset[str] = frozenset({"labels"})
# Which object tags each control may pre-annotate (e.g. Labels spans only on <Text>).
OBJECT_TAGS: frozenset[tuple[str, frozenset[str]]] = frozenset((t, h.object_tags) for t, h in HANDLERS.items())

__all__ = ["HANDLERS", "LIST_TAGS", "OBJECT_TAGS", "ControlHandler"]
