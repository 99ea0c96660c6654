"""The web stack under the stock label-studio-ml app, checked against published advisories.

label-studio-ml 1.0.9 pins Flask 1.1.2, Werkzeug 2.0.2, Jinja2 3.0.3 and itsdangerous
2.0.1 (2021); `overrides.txt` replaces them (uv's `--override`), and this table says
which release of each is the first past the advisories we know of. `pip-audit` cannot
reach its advisory sources from our machines, so the table is kept by hand: checked
against the advisories named in issue 13 and the projects' changelogs.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import NamedTuple


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


def version_tuple(version: str) -> tuple[int, ...]:
    """`3.1.9` -> (3, 1, 9), `2.2` -> (2, 2, 0); local suffixes are ignored."""
    parts = [int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def web_stack() -> list[tuple[str, str | None, Floor, bool]]:
    """(distribution, installed version or None, floor, at or past the floor) for each package."""
    rows = []
    for dist, floor in FLOORS.items():
        try:
            installed: str | None = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        ok = installed is not None and version_tuple(installed) >= version_tuple(floor.minimum)
        rows.append((dist, installed, floor, ok))
    return rows
