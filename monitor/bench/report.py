"""Result tables: printed with their settings for people, written as JSON for the README and for scripts."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Table:
    """A titled table; `settings` (catalog size, query counts, ...) print under the title."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def add(self, *cells: Any) -> None:
        self.rows.append(list(cells))

    def render(self) -> str:
        cells = [self.columns] + [[_format(c) for c in row] for row in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = [f"## {self.title}"]
        lines += [f"   {key}: {_format(value)}" for key, value in self.settings.items()]
        lines.append("")
        for n, row in enumerate(cells):
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "settings": self.settings, "columns": self.columns, "rows": self.rows}


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:,.1f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def percent(hits: int, total: int) -> str:
    """'93.8' for 15 of 16; '-' where nothing was measured."""
    return f"{100 * hits / total:.1f}" if total else "-"


def environment() -> dict[str, Any]:
    """Where and with which code the numbers were taken: results only compare on the same machine and commit."""
    return {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "commit": LOADED_COMMIT}


def _commit() -> str | None:
    """The repository's commit, marked -dirty when files differ from it; None outside a git checkout."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


LOADED_COMMIT = _commit()  # taken when the benchmark starts: the code that ran, even if the tree moves on meanwhile


def publish(tables: list[Table], out: str | Path | None, command: str, extra: dict[str, Any] | None = None) -> None:
    """Print every table; with `out`, also write them (and `extra` raw figures) as JSON."""
    for table in tables:
        print(table.render())
    if out is not None:
        payload = {"command": command, "environment": environment(), "tables": [t.to_json() for t in tables], **(extra or {})}
        Path(out).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"results written to {out}")


def verdict(value: float, goal: float, below: bool = False, digits: int = 1) -> str:
    """'96.2 met' or '88.0 MISSED': a measured figure against its target (at least, or at most with `below`)."""
    met = value <= goal if below else value >= goal
    return f"{value:.{digits}f} {'met' if met else 'MISSED'}"
