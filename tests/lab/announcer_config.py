"""The controller's TOML configuration for a lab node, and the argv ExaBGP runs it with."""

from __future__ import annotations

import subprocess
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from .topology import ANYCAST_V4, PREFIX_V4, PREFIX_V6

REPO_ROOT = Path(__file__).resolve().parents[2]
ANNOUNCER_BIN = REPO_ROOT / ".venv" / "bin" / "announcer"


def default_config(
    *,
    med: int = 100,
    interval: float = 0.5,
    fast_interval: float = 0.1,
    rise: int = 2,
    fall: int = 2,
    drain_seconds: float = 3,
    check_url: str = f"http://{ANYCAST_V4}/health",
    prefixes: Sequence[str] = (PREFIX_V4, PREFIX_V6),
) -> dict[str, Any]:
    """One service ``web`` announcing the anycast prefixes while its HTTP check passes."""
    return {
        "neighbor": "*",
        "next_hop": "self",
        "defaults": {
            "interval": interval,
            "fast_interval": fast_interval,
            "rise": rise,
            "fall": fall,
            "drain_seconds": drain_seconds,
        },
        "service": [
            {
                "name": "web",
                "prefixes": list(prefixes),
                "checks": [{"type": "http", "url": check_url}],
                "announce": {"med": med},
            }
        ],
    }


def node_paths(directory: Path) -> dict[str, Path]:
    """Per-node file locations (state, control socket, maintenance flag) under ``directory``."""
    return {
        "state_dir": directory / "state",
        "control_socket": directory / "control.sock",
        "maintenance_file": directory / "maintenance",
    }


def _plain(value: Any) -> Any:
    """``value`` with paths as strings, the one type of ours TOML has no word for."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def to_toml(config: Mapping[str, Any]) -> str:
    """Serialise nested dicts/lists/scalars (paths too) to TOML with tomli-w."""
    plain = _plain(config)
    text = tomli_w.dumps(plain)
    if tomllib.loads(text) != plain:
        raise ValueError("TOML round trip changed the configuration")
    return text


def write_config(path: Path, config: Mapping[str, Any] | str) -> Path:
    """Write ``config`` (a mapping, or TOML text as is) to ``path``."""
    text = config if isinstance(config, str) else to_toml(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def announcer_argv(config: Path, binary: Path = ANNOUNCER_BIN) -> list[str]:
    """``<repo>/.venv/bin/announcer run --config <file>``."""
    return [str(binary), "run", "--config", str(config)]


def announcer_available(binary: Path = ANNOUNCER_BIN) -> bool:
    """True once the controller's ``run`` command exists (``announcer run --help`` succeeds)."""
    if not binary.exists():
        return False
    try:
        proc = subprocess.run(
            [str(binary), "run", "--help"], capture_output=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0
