"""`model_version` changes exactly when the answers could change.

Label Studio skips tasks holding a prediction of the current version: a version that
does not change after a prompt setting changed leaves stale predictions; one that
changes for nothing (concurrency, timeouts) re-predicts and duplicates everything.
"""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest

from my_ml_backend import versioning
from my_ml_backend.settings import Settings, load_settings

BASE = load_settings({"MODELSCOPE_API_KEY": "k"})


def test_same_inputs_give_the_same_readable_version() -> None:
    version = versioning.model_version(BASE, "cfg1")
    assert version == versioning.model_version(load_settings({"MODELSCOPE_API_KEY": "other"}), "cfg1")
    assert version.startswith("Qwen3-Coder-480B-A35B-Instruct-")


@pytest.mark.parametrize(
    "change",
    [
        {"model": "Qwen/Qwen2.5-72B-Instruct"},
        {"base_url": "http://localhost:11434/v1"},
        {"temperature": 0.7},
        {"max_tokens": 256},
        {"top_p": 0.9},
        {"max_input_chars": 100},
    ],
)
def test_generation_settings_change_the_version(change: dict) -> None:
    changed: Settings = dataclasses.replace(BASE, **change)
    assert versioning.model_version(changed, "cfg1") != versioning.model_version(BASE, "cfg1")


@pytest.mark.parametrize(
    "change", [{"concurrency": 8}, {"timeout": 5.0}, {"max_retries": 0}, {"debug": True}, {"batch_deadline": 10.0}]
)
def test_operational_settings_keep_the_version(change: dict) -> None:
    changed: Settings = dataclasses.replace(BASE, **change)
    assert versioning.model_version(changed, "cfg1") == versioning.model_version(BASE, "cfg1")


def test_config_and_prompt_version_change_the_version() -> None:
    version = versioning.model_version(BASE, "cfg1")
    assert versioning.model_version(BASE, "cfg2") != version
    with mock.patch.object(versioning, "PROMPT_VERSION", "next"):
        assert versioning.model_version(BASE, "cfg1") != version
