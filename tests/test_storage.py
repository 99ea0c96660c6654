"""The one pattern every store follows: opened once per location, and a store that fails costs a warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from my_ml_backend.learning.store import open_example_store
from my_ml_backend.llm.cache import open_cache
from my_ml_backend.llm.quota import ACCOUNT, open_ledger
from my_ml_backend.settings import Settings
from my_ml_backend.storage.fallback import READ, StoreFailures


def test_each_store_is_opened_once_per_location(tmp_path: Path) -> None:
    here, there = Settings(data_dir=tmp_path / "a"), Settings(data_dir=tmp_path / "b")
    assert open_cache(here) is open_cache(here) is not open_cache(there)
    assert open_example_store(here) is open_example_store(here) is not open_example_store(there)
    assert open_ledger(here).store is open_ledger(here).store is not open_ledger(there).store


def test_a_store_that_cannot_be_opened_costs_a_warning_and_a_fallback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    settings = Settings(data_dir=blocked)
    with caplog.at_level(logging.WARNING):
        assert open_cache(settings) is None  # predictions go on without a cache
        assert open_example_store(settings) is None  # and without few-shot examples
        ledger = open_ledger(settings)  # the quota is still learnt, in this process
    ledger.observe("A", {"modelscope-ratelimit-requests-remaining": "0"})
    assert ledger.today()[ACCOUNT].exhausted
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all("cannot open the" in w for w in warnings), warnings
    caplog.clear()
    assert open_cache(settings) is None and not caplog.records  # remembered: no second try, no second warning


def test_a_failing_store_warns_once_a_minute_and_counts_every_failure(caplog: pytest.LogCaptureFixture) -> None:
    counted: list[int] = []
    failures = StoreFailures(("测试库", "test store"), ("按未命中处理", "treated as a miss"),
                             count=lambda: counted.append(1))

    def broken() -> str:
        raise OSError("disk full")

    with caplog.at_level(logging.WARNING):
        assert [failures.guard(READ, broken, "default") for _ in range(5)] == ["default"] * 5
        assert failures.guard(READ, lambda: "stored") == "stored"
    assert len(counted) == 5
    assert [r.getMessage() for r in caplog.records] == [
        "测试库读取失败，按未命中处理 (test store read failed, treated as a miss): OSError: disk full"
    ]
