"""The controller's TOML configuration for a lab node, and the argv ExaBGP runs it with."""

from __future__ import annotations

import json
import math
import subprocess
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"no TOML for {value!r}")
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {type(value).__name__}")


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _is_table_array(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(isinstance(v, Mapping) for v in value)
    )


def _table(out: list[str], path: list[str], table: Mapping[str, Any], array: bool) -> None:
    if path:
        name = ".".join(_key(p) for p in path)
        out.append(f"\n[[{name}]]" if array else f"\n[{name}]")
    nested = []
    for key, value in table.items():
        if isinstance(value, Mapping) or _is_table_array(value):
            nested.append((key, value))
        else:
            out.append(f"{_key(key)} = {_value(value)}")
    for key, value in nested:
        if isinstance(value, Mapping):
            _table(out, [*path, key], value, array=False)
        else:
            for item in value:
                _table(out, [*path, key], item, array=True)


def to_toml(config: Mapping[str, Any]) -> str:
    """Serialise nested dicts/lists/scalars to TOML (tables and arrays of tables included)."""
    out: list[str] = []
    _table(out, [], config, array=False)
    text = "\n".join(out).lstrip("\n") + "\n"
    if tomllib.loads(text) != json.loads(json.dumps(config, default=str)):
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
