"""``announcer check --once``: run a config's checks once, here, without a daemon.

For deploy pipelines: "would this node's services be healthy with this config?".
Every check of every named service runs once at the same time, each with its
service's timeout; the service's ``require`` rule combines them, as a round in
the daemon would. Nothing is announced, nothing is saved.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from announcer import config as cfg
from announcer.checks import build_check
from announcer.client import checked_status, render_checked
from announcer.errors import ConfigError
from announcer.protocol import EXIT_USAGE
from announcer.rounds import combine
from announcer.runner import run_guarded

MAX_THREADS = 64
"""Checks run at once at most (the rest wait for a thread)."""


def run_once(path: Path, names: Sequence[str], as_json: bool, out: TextIO, err: TextIO) -> int:
    """Run the checks of ``names`` (every service's when empty) from the config at
    ``path`` once; print the results; 0 when all would be healthy, 1 if not, 2 for a
    config that does not load or an unknown service."""
    try:
        config = cfg.load(path)
    except ConfigError as error:
        err.writelines(f"announcer: {line}\n" for line in error.problems)
        return EXIT_USAGE
    services = {e.service.name: e.service for e in config.services}
    unknown = [n for n in names if n not in services]
    if unknown:
        err.write(
            f"announcer: {path}: no service {', '.join(repr(n) for n in unknown)} "
            f"(known: {', '.join(services) or 'none'})\n"
        )
        return EXIT_USAGE
    chosen = [services[n] for n in dict.fromkeys(names)] if names else list(services.values())
    jobs = [(svc, build_check(spec)) for svc in chosen for spec in svc.checks]
    with ThreadPoolExecutor(max_workers=max(1, min(MAX_THREADS, len(jobs)))) as pool:
        futures = [pool.submit(run_guarded, check, svc.effective_timeout) for svc, check in jobs]
        outcomes = [f.result() for f in futures]
    for _, check in jobs:
        check.close()
    results: dict[str, Any] = {}
    for svc in chosen:
        mine = [
            (check, r) for (owner, check), r in zip(jobs, outcomes, strict=True) if owner is svc
        ]
        ok, reason = combine(svc.require, [r for _, r in mine])
        results[svc.name] = {
            "ok": ok,
            "reason": reason,
            "checks": [
                {"check": c.name, "ok": r.ok, "reason": r.reason, "duration": round(r.duration, 4)}
                for c, r in mine
            ],
        }
    answer = {"services": results}
    out.write(
        json.dumps(answer, indent=2) + "\n" if as_json else render_checked(results, once=True)
    )
    out.flush()
    return checked_status(results)
