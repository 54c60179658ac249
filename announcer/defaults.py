"""Default paths, in a module light enough for the CLI to import without the config models
(``announcer status`` should not pay for pydantic)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_CONFIG = Path("/etc/announcer/announcer.toml")
DEFAULT_STATE_DIR = Path("/var/lib/announcer")
DEFAULT_CONTROL_SOCKET = Path("/run/announcer/control.sock")
DEFAULT_MAINTENANCE_FILE = Path("/etc/announcer/maintenance")
