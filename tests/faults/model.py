"""Result rows and where they are kept (``.cache/faults/<mode>/``, one JSON file per row)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE = REPO_ROOT / ".cache" / "faults"


@dataclass
class Row:
    """One fault as injected and observed: a line of docs/reliability.md."""

    id: str
    """The row's key, e.g. ``1a``: the issue's fault number and a letter."""
    fault: str
    """Short title, e.g. ``controller SIGKILL while healthy``."""
    exabgp: str
    """The ExaBGP version it ran under, e.g. ``5.0.15``."""
    injected: str = ""
    router: list[str] = field(default_factory=list)
    """What the router saw: route changes with times relative to the injection."""
    requests: int | None = None
    """Client requests made from the injection to the end of the observation."""
    lost: int | None = None
    lost_note: str = ""
    back_s: float | None = None
    """Seconds from the injection until the node was back to normal (``back_note`` says what
    normal is for this row); None when it never had to come back or did not."""
    back_note: str = ""
    status: str = ""
    """What ``announcer status`` showed (summarised)."""
    log_line: str = ""
    """The controller's (or ExaBGP's) log line the operator would look for."""
    expected: str = ""
    seen: str = ""
    ok: bool = False
    """Seen matches expected: the outcome the quick test asserts."""
    defect: str = ""
    """A defect the fault showed, with where it is fixed or why it is not."""
    figures: dict[str, Any] = field(default_factory=dict)
    """Measured numbers behind the text (for the JSON and for tests)."""
    quick: bool = False
    measured_at: str = ""
    duration_s: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> Row:
        data = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def major(version: str) -> str:
    """``5.0.15`` -> ``5.0``."""
    return ".".join(version.split(".")[:2])


class Store:
    """The rows of one mode (``full`` or ``quick``) under ``.cache/faults/<mode>/``."""

    def __init__(self, mode: str, root: Path = CACHE) -> None:
        self.directory = root / mode
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, row_id: str, exabgp: str) -> Path:
        return self.directory / f"{row_id}--exabgp{major(exabgp)}.json"

    def save(self, row: Row) -> Path:
        """Write one row atomically (a run killed half-way leaves the earlier file whole)."""
        if not row.measured_at:
            row.measured_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        target = self.path(row.id, row.exabgp)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(row.to_json() + "\n")
        os.replace(tmp, target)
        return target

    def load(self) -> list[Row]:
        rows = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                rows.append(Row.from_json(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue
        return rows

    def meta_path(self) -> Path:
        return self.directory / "run.meta"

    def save_meta(self, meta: dict[str, Any]) -> None:
        old = self.load_meta()
        old.update(meta)
        self.meta_path().write_text(json.dumps(old, indent=1, sort_keys=True, default=str) + "\n")

    def load_meta(self) -> dict[str, Any]:
        try:
            data = json.loads(self.meta_path().read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
