"""Lab scenario (e) of the fleet guard (issue 13): without a ``[fleet]``, the commands the
real controller writes to real ExaBGP in the namespace lab are the bytes the code wrote
before the fleet guard existed.

One fixed story on node1 (the only node running ExaBGP): start and rise, the health
check failing, recovering, ``announcer drain`` (lowered, then withdrawn after
drain_seconds), ``announcer undrain``, and SIGTERM to the controller (it withdraws what it
announced). Each step waits until BIRD shows its outcome, so every step starts from the
same state and the number of commands does not depend on timing. What the controller
writes passes through ``_tee.py`` on its way to ExaBGP and is kept as it is: nothing is
normalised.

``CODE`` is the source tree whose controller runs (the repository, or a worktree of an
older commit: the transcript is made that way, see ``main``); the CLI of the same tree
sends the drains.

    .venv/bin/python -m tests.lab.wire_story --code ../old-worktree --exabgp 5.0 --out FILE
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .announcer_config import REPO_ROOT, default_config, node_paths, write_config
from .bird import BirdPath
from .lab import Lab
from .procs import children
from .topology import PREFIX_V4, PREFIX_V6
from .waiting import wait_until

PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
TEE = Path(__file__).with_name("_tee.py")
NODE = "node1"
PREFIXES = (PREFIX_V4, PREFIX_V6)
DRAIN_SECONDS = 2


def config(directory: Path) -> dict[str, Any]:
    """Only settings the pre-fleet code knows too: one service ``web`` (both anycast
    prefixes, HTTP check, MED 100 and a community), rise 2, fall 2, drain 2 s."""
    base = default_config(interval=0.3, fast_interval=0.1, drain_seconds=DRAIN_SECONDS)
    base["service"][0]["announce"] = {"med": 100, "communities": ["65001:100"]}
    return {**node_paths(directory), **base}


def _cli(code: Path, directory: Path, *args: str) -> None:
    """The CLI of the tree under test against node1's controller."""
    socket = node_paths(directory)["control_socket"]
    done = subprocess.run(
        [str(PYTHON), "-m", "announcer", *args, "--socket", str(socket)],
        cwd=code,
        env={**os.environ, "PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"announcer {' '.join(args)}: {done.returncode} {done.stderr}")


def _wait(lab: Lab, med: int | None, what: str) -> None:
    """Until node1's path of both prefixes has MED ``med`` at BIRD (None: no path)."""

    def node1_is(paths: dict[str, BirdPath]) -> bool:
        path = paths.get(NODE)
        return path is None if med is None else path is not None and path.med == med

    for prefix in PREFIXES:
        lab.wait_paths(prefix, node1_is, 30.0, what=f"{what} ({prefix})")


def story(lab: Lab, code: Path, run: str = "wire") -> str:
    """Play the story on a started ``lab`` (no ExaBGP running on node1) with the
    controller of ``code``; return what it wrote to ExaBGP."""
    directory = lab.node_dir(NODE) / run
    directory.mkdir()
    path = write_config(directory / "announcer.toml", config(directory))
    out = directory / "wire.txt"
    controller = [str(PYTHON), "-m", "announcer", "run", "--config", str(path)]
    argv = [str(PYTHON), str(TEE), str(out), str(code), "--", *controller]
    lab.set_healthy(NODE, True)
    lab.start_exabgp(NODE, argv, timeout=40.0)
    try:
        _wait(lab, 100, "announced")
        lab.set_healthy(NODE, False)
        _wait(lab, None, "withdrawn after the check failed")
        lab.set_healthy(NODE, True)
        _wait(lab, 100, "announced again")
        _cli(code, directory, "drain", "web")
        _wait(lab, 1000, "lowered by the drain")
        _wait(lab, None, "withdrawn at the drain's end")
        _cli(code, directory, "undrain", "web")
        _wait(lab, 100, "announced after undrain")
        wrapper = lab.wait_api_pid(NODE, 10.0)
        pids = wait_until(lambda: children(wrapper), 10.0, what="the controller")
        assert pids is not None
        os.kill(pids[0], signal.SIGTERM)
        wait_until(out.with_name(out.name + ".exit").exists, 20.0, what="the controller's end")
        _wait(lab, None, "withdrawn at the stop")
    finally:
        lab.stop_exabgp(NODE)
    return out.read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, default=REPO_ROOT, help="the source tree to run")
    parser.add_argument("--exabgp", default="5.0", choices=("5.0", "4.2"))
    parser.add_argument("--out", type=Path, help="write the transcript here (default: stdout)")
    args = parser.parse_args(argv)
    with Lab(args.exabgp) as lab:
        text = story(lab, args.code.resolve())
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
