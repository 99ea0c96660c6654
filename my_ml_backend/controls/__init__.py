"""One small handler per Label Studio control: how to ask for it and how to read the answer.

A handler is a prompt fragment plus a parser (the split spacy-llm uses), so adding a
control type means adding one module here and registering it in `HANDLERS`.
"""

from __future__ import annotations

from .base import ControlHandler
from .choices import ChoicesHandler
from .textarea import TextAreaHandler

HANDLERS: dict[str, ControlHandler] = {h.tag: h for h in (ChoicesHandler(), TextAreaHandler())}
SUPPORTED_TAGS: frozenset[str] = frozenset(HANDLERS)

__all__ = ["HANDLERS", "SUPPORTED_TAGS", "ControlHandler"]
