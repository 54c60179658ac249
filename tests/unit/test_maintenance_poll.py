"""Maintenance files as the daemon's poll sees them: the shared file drains every service,
a service's own file drains that one, and removing a file undrains what it drained. A poll
while no file is present looks only at the services with a file of their own; these tests
hold that nothing is missed by that (a file that appears, one that goes, a reload that
gives a service a file)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.loop import Loop, ScriptedCheck

SERVICE = (
    '[[service]]\nname = "{name}"\nprefixes = ["{prefix}"]\n{own}'
    '[[service.checks]]\ntype = "file"\npath = "{name}"\n'
)


def _write(tmp: Path, own: dict[str, str]) -> Path:
    services = "".join(
        SERVICE.format(
            name=name,
            prefix=f"192.0.2.{i + 1}/32",
            own=f'maintenance_file = "{tmp / own[name]}"\n' if name in own else "",
        )
        for i, name in enumerate(("a", "b", "c"))
    )
    path = tmp / "announcer.toml"
    path.write_text(
        f'state_dir = "{tmp / "state"}"\nmaintenance_file = "{tmp / "all"}"\ninclude = ""\n'
        "[defaults]\ninterval = 1.0\nfast_interval = 1.0\nrise = 1\nfall = 1\n"
        "address_guard = false\ndrain_seconds = 5\n" + services
    )
    return path


def _drained(loop: Loop) -> dict[str, bool]:
    return {name: bool(loop.status(name)["drained"]) for name in ("a", "b", "c")}


def _loop(tmp: Path, own: dict[str, str]) -> Loop:
    loop = Loop(_write(tmp, own), {name: ScriptedCheck() for name in ("a", "b", "c")})
    loop.run_for(3.0)
    assert {loop.status(n)["route"] for n in ("a", "b", "c")} == {"ANNOUNCED"}
    return loop


def test_the_shared_file_drains_every_service_and_its_removal_undrains_them(
    tmp_path: Path,
) -> None:
    """The shared file drains all three services at the next poll (none has a file of its
    own, so the polls before looked at none of them); removed, it undrains all three."""
    loop = _loop(tmp_path, {})
    (tmp_path / "all").touch()
    loop.run_for(1.0)
    assert _drained(loop) == {"a": True, "b": True, "c": True}
    assert loop.status("a")["drain_sources"] == ["maintenance"]
    (tmp_path / "all").unlink()
    loop.run_for(1.0)
    assert _drained(loop) == {"a": False, "b": False, "c": False}


def test_an_own_file_drains_only_its_service(tmp_path: Path) -> None:
    """b's own file drains b alone, and its removal undrains b; the shared file still
    drains everyone while b's is present, and its removal leaves b drained by b's own."""
    loop = _loop(tmp_path, {"b": "b.off"})
    (tmp_path / "b.off").touch()
    loop.run_for(1.0)
    assert _drained(loop) == {"a": False, "b": True, "c": False}
    (tmp_path / "all").touch()
    loop.run_for(1.0)
    assert _drained(loop) == {"a": True, "b": True, "c": True}
    (tmp_path / "all").unlink()
    loop.run_for(1.0)
    assert _drained(loop) == {"a": False, "b": True, "c": False}
    (tmp_path / "b.off").unlink()
    loop.run_for(1.0)
    assert _drained(loop) == {"a": False, "b": False, "c": False}


def test_a_file_given_by_a_reload_is_watched(tmp_path: Path) -> None:
    """A reload that gives c a file of its own: c's file, once present, drains c (the
    services the poll looks at while no file is present follow the config)."""
    loop = _loop(tmp_path, {})
    _write(tmp_path, {"c": "c.off"})
    loop.run(loop.daemon.reload)
    (tmp_path / "c.off").touch()
    loop.run_for(1.0)
    assert _drained(loop) == {"a": False, "b": False, "c": True}
    _write(tmp_path, {})
    loop.run(loop.daemon.reload)
    loop.run_for(1.0)
    assert _drained(loop) == {"a": False, "b": False, "c": False}
