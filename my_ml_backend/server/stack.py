"""The web stack under the stock label-studio-ml app, checked against published advisories.

label-studio-ml pins 2021 releases of Flask, Werkzeug, Jinja2 and itsdangerous; `overrides.txt`
replaces them (uv's `--override`), and `FLOORS` says which release of each is the first past
the advisories we know of. It is kept by hand because `pip-audit` cannot reach its advisory
sources from our machines.
"""

from __future__ import annotations

import importlib.metadata
from typing import NamedTuple

from packaging.version import Version


class Floor(NamedTuple):
    minimum: str
    advisories: str


FLOORS: dict[str, Floor] = {
    "Flask": Floor("3.1.1", "CVE-2023-30861, CVE-2025-47278"),
    "Werkzeug": Floor("3.1.4", "CVE-2023-25577, CVE-2023-46136, CVE-2024-34069, CVE-2024-49767, CVE-2025-66221"),
    "Jinja2": Floor("3.1.6", "CVE-2024-22195, CVE-2024-34064, CVE-2024-56201, CVE-2024-56326, CVE-2025-27516"),
    "itsdangerous": Floor("2.2.0", "none known; 2.2 is the line Flask 3.1 needs"),
    "blinker": Floor("1.9.0", "none known; Flask 3.1 needs it"),
    "gunicorn": Floor("23.0.0", "CVE-2024-1135, CVE-2024-6827 (request smuggling)"),
}


def web_stack() -> list[tuple[str, str | None, Floor, bool]]:
    """(distribution, installed version or None, floor, at or past the floor) for each package."""
    rows = []
    for dist, floor in FLOORS.items():
        try:
            installed: str | None = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        ok = installed is not None and Version(installed) >= Version(floor.minimum)
        rows.append((dist, installed, floor, ok))
    return rows
