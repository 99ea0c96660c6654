"""How to ask an endpoint for JSON: the strongest mode it accepts, learned once.

Endpoints differ: vLLM, Ollama and llama.cpp's C++ server enforce a `json_schema` response
format; ModelScope answers `json_schema` with an empty 200 (the endpoint profile starts it at
`json_object`); DashScope's `json_object` needs the word "json" in the messages (our system
prompt has it); llama-cpp-python's server refuses `json_schema` but enforces a `schema` sent
inside `json_object`, hence the second rung. We start from the endpoint profile's mode and
step down (json_schema -> json_object with the schema -> json_object -> plain text) when the
endpoint refuses; the client remembers the mode so a refusal is paid only once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from ..settings import endpoint_profile


class OutputMode(StrEnum):
    JSON_SCHEMA = "json_schema"
    # `{"type": "json_object", "schema": ...}`: llama-cpp-python's (and Anyscale's) way of
    # asking for schema-constrained JSON. Reached only by stepping down from json_schema,
    # so that hosts starting at json_object (ModelScope) never see the extra key.
    JSON_OBJECT_SCHEMA = "json_object_schema"
    JSON_OBJECT = "json_object"
    TEXT = "text"


LADDER = (OutputMode.JSON_SCHEMA, OutputMode.JSON_OBJECT_SCHEMA, OutputMode.JSON_OBJECT, OutputMode.TEXT)

def initial_mode(base_url: str, configured: str = "auto") -> OutputMode:
    """`LLM_OUTPUT_MODE` if set, else the endpoint profile's starting mode."""
    if configured and configured != "auto":
        return OutputMode(configured)
    return OutputMode(endpoint_profile(base_url).output_mode)


def step_down(mode: OutputMode) -> OutputMode | None:
    index = LADDER.index(mode)
    return LADDER[index + 1] if index + 1 < len(LADDER) else None


def response_format(mode: OutputMode, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `response_format` request parameter for `mode` (None: send nothing)."""
    if mode is OutputMode.JSON_SCHEMA and schema is not None:
        return {"type": "json_schema", "json_schema": {"name": "annotation", "schema": schema, "strict": False}}
    if mode is OutputMode.JSON_OBJECT_SCHEMA and schema is not None:
        return {"type": "json_object", "schema": schema}
    if mode is not OutputMode.TEXT:
        return {"type": "json_object"}
    return None
