"""The control socket's protocol: version, commands and the error a refusal raises.

Kept apart from :mod:`announcer.control` (the server) so the CLI's client side
imports only this: an operator's ``announcer status`` should not pay for the
server's imports (docs/benchmarks.md, P5).
"""

from __future__ import annotations

from typing import Final

from announcer.errors import ControlError

__all__ = ["COMMANDS", "PROTOCOL_VERSION", "ControlRefused"]

PROTOCOL_VERSION: Final = 1
COMMANDS: Final = ("status", "drain", "undrain", "reload", "ping")


class ControlRefused(ControlError):
    """An error reply: ``kind`` is the protocol's error code (``code`` the CLI exit status).

    A handler raises it to answer with that code, e.g.
    ``ControlRefused("unknown service 'x'", "unknown_service")``; the client
    raises it for every error reply it receives.
    """

    def __init__(self, message: str, kind: str = "refused") -> None:
        super().__init__(message, code=1)
        self.kind = kind
