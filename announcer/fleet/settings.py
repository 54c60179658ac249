"""The ``[fleet]`` table: where etcd is, who we are in the group, and what to do while
etcd cannot be reached. Validated like the rest of the config (extra keys refused)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
"""Group and node names become parts of etcd keys: no slashes."""


def _hostname() -> str:
    # The short name: a key part, and what operators call the node.
    return socket.gethostname().split(".")[0] or "node"


class FleetSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoints: tuple[str, ...] = Field(min_length=1)
    """etcd client URLs (``http://10.0.0.1:2379``); tried in turn when one fails."""
    ca_file: Path | None = None
    """CA bundle that signed etcd's certificate (``https://`` endpoints)."""
    user: str | None = None
    password: str | None = None
    group: str = Field(min_length=1, max_length=64, pattern=NAME)
    node: str = Field(default_factory=_hostname, min_length=1, max_length=64, pattern=NAME)
    lease_seconds: int = Field(default=10, ge=2, le=3600, strict=True)
    key_prefix: str = Field(default="/announcer/", min_length=1, max_length=200)
    on_unknown: Literal["local", "hold"] = "local"
    """While etcd cannot be reached: ``local`` decides as without a fleet, ``hold``
    keeps a failed service announced (lowered) instead of withdrawing it."""
    timeout: float = Field(default=2.0, gt=0, le=30, strict=True)
    """Seconds one request to etcd may take; a guard's decision waits a few of these at most."""

    @field_validator("endpoints")
    @classmethod
    def _check_endpoints(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, url in enumerate(v):
            parts = urlsplit(url)
            try:
                port = parts.port
            except ValueError:
                port = None
            if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
                raise ValueError(f"[{i}]: {url!r} must be http(s)://HOST:PORT")
            if parts.path not in ("", "/"):
                raise ValueError(f"[{i}]: {url!r} must have no path (the /v3 API is added)")
        return tuple(u.rstrip("/") for u in v)

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"{v!r} must start with '/'")
        return v if v.endswith("/") else v + "/"

    @model_validator(mode="after")
    def _check_auth(self) -> FleetSettings:
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together (etcd's token authentication)")
        if self.ca_file is not None and not any(e.startswith("https:") for e in self.endpoints):
            raise ValueError("ca_file is set but no endpoint is https://")
        return self
