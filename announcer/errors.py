"""Every error announcer raises on purpose, in one small hierarchy::

    AnnouncerError                 base: catch this to catch anything of ours
    ├── ConfigError                a config file is unreadable or invalid;
    │                              the message names file, service and field
    ├── IllegalTransition          the state machine refused an input (the
    │                              state is left unchanged)
    ├── CommandError               a command for ExaBGP failed validation
    │                              before it was sent (never written)
    └── ControlError               the control socket: a bad request, a
                                   refused one, or the daemon not reachable

Checks never raise (see ``announcer.checks.base``); these are the controller's own.
"""

from __future__ import annotations


class AnnouncerError(Exception):
    """Base of every deliberate announcer error."""


class ConfigError(AnnouncerError):
    """A configuration file could not be read or did not validate.

    ``str(err)`` is ready for an operator: one problem per line, each starting
    with the file and, where it applies, the service and the field, e.g.
    ``conf.d/web.toml: service 'web': checks[0].url: ...``.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class IllegalTransition(AnnouncerError):
    """An input the state machine does not accept in the current state."""


class CommandError(AnnouncerError):
    """A command would not be accepted by ExaBGP, so it was not sent."""


class ControlError(AnnouncerError):
    """A control-socket request failed; ``code`` is the CLI exit status to use."""

    def __init__(self, message: str, code: int = 1) -> None:
        self.code = code
        super().__init__(message)
