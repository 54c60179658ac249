"""A fixed story through the daemon's loop (fake clock, scripted checks), whose commands
to ExaBGP are compared with a transcript committed from the code before the fleet guard:
without a ``[fleet]`` the wire must not change by a byte. Kept free of anything new, so
the same file runs against the older code that made the transcript."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from announcer import state as sm
from tests.lab.announcer_config import to_toml
from tests.unit.loop import Loop, ScriptedCheck

TRANSCRIPT = Path(__file__).with_name("no_fleet_transcript.txt")


def config(tmp: Path, med: int) -> Path:
    def service(name: str, prefixes: list[str], **more: Any) -> dict[str, Any]:
        return {
            "name": name,
            "prefixes": prefixes,
            "checks": [{"type": "file", "path": name}],
        } | more

    web = service("web", ["192.0.2.10/32", "2001:db8::10/128"])
    web["announce"] = {"med": med, "communities": ["65001:100"]}
    timing = {"interval": 1.0, "fast_interval": 0.5, "rise": 2, "fall": 2, "timeout": 0.2}
    body = {
        "state_dir": str(tmp / "state"),
        "include": "",
        "maintenance_file": str(tmp / "maint"),
        "defaults": {**timing, "drain_seconds": 10},
        "service": [web, service("dns", ["198.51.100.53/32"], on_down="lower")],
    }
    path = tmp / "announcer.toml"
    path.write_text(to_toml(body))
    return path


def story(tmp: Path) -> list[str]:
    """Rise, fail, recover, an operator drain to its end, a lowered failure, the
    maintenance file, a reload that changes the MED, and a stop."""
    web, dns = ScriptedCheck(), ScriptedCheck()
    loop = Loop(config(tmp, 100), {"web": web, "dns": dns})
    loop.run_for(2)
    web.ok = False
    loop.run_for(2)
    web.ok = True
    loop.run_for(2)
    loop.daemon.drain("web", sm.DrainSource.OPERATOR, "kernel")
    loop.run_for(11)
    loop.daemon.undrain("web", sm.DrainSource.OPERATOR)
    loop.run_for(2)
    dns.ok = False
    loop.run_for(2)
    dns.ok = True
    loop.run_for(2)
    (tmp / "maint").touch()
    loop.run_for(12)
    (tmp / "maint").unlink()
    loop.run_for(2)
    config(tmp, 200)
    loop.daemon.reload()
    loop.run_for(2)
    loop.daemon.withdraw_all()
    loop.turn()
    return loop.sent
