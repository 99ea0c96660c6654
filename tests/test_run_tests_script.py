"""`bash scripts/run_tests.sh` says what it installs before doing it; `--quick` runs no Label Studio, no real model."""

from __future__ import annotations

import subprocess

from tests.conftest import ROOT


def run_tests_sh(*args: str) -> str:
    proc = subprocess.run(
        ["bash", "scripts/run_tests.sh", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_quick_prints_its_plan_first_and_runs_no_e2e_or_real_model() -> None:
    out = run_tests_sh("--quick", "--collect-only", "-q")
    plan, _, collected = out.partition("\n\n")
    assert plan.startswith("== 测试计划 (test plan) ==") and "--quick" in plan and "min" in plan
    assert "Label Studio" not in plan  # nothing of the full run is announced
    assert "tests/test_status_page.py" in collected
    assert "tests/e2e/" not in collected and "tests/real_model/" not in collected
