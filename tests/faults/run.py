"""Run the fault scenarios in the namespace lab and write docs/reliability.md.

    .venv/bin/python -m tests.faults.run                 # every row (make faults), ~9 min
    .venv/bin/python -m tests.faults.run --quick         # the quick variant, writes .cache/faults/
    .venv/bin/python -m tests.faults.run --only 1,4b     # fault groups or rows
    .venv/bin/python -m tests.faults.run --exabgp 4.2    # one ExaBGP version
    .venv/bin/python -m tests.faults.run --render        # only re-render the report

Root only (network namespaces). Each row is saved under .cache/faults/<full|quick>/ as
soon as it is measured; the report is rendered from every row kept there. Exit status 0
when every selected scenario produced its row, 1 when one raised (its row says why), 2 when
the machine cannot run the lab. A row whose outcome is not as expected is reported (and
printed), not an error: finding those is what the suite is for; ``--strict`` makes them one.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.faults import report  # noqa: E402
from tests.faults.model import Row, Store, major  # noqa: E402
from tests.faults.registry import Ctx, Scenario, all_scenarios  # noqa: E402
from tests.faults.rig import Rig  # noqa: E402
from tests.faults.soak import SOAK_SECONDS  # noqa: E402
from tests.lab import cleanup_stale  # noqa: E402

PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
VERSIONS = ("5.0", "4.2")
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the namespace lab needs root (network namespaces, BGP port 179)"
    for tool in ("ip", "bird", "birdc"):
        if shutil.which(tool, path=SBIN) is None:
            return f"{tool} is not installed: run scripts/bootstrap.sh"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    return None


def select(
    scenarios: Sequence[Scenario], only: str | None, quick: bool, version: str | None
) -> list[tuple[Scenario, str | None]]:
    """(scenario, ExaBGP version or None for the lab-less rows) to run, in order."""
    wanted = {w.strip().lower() for w in (only or "").split(",") if w.strip()}

    def picked(sc: Scenario) -> bool:
        named = sc.id in wanted or str(sc.group) in wanted
        if wanted and not named:
            return False
        if sc.group in SOAK_GROUPS and not named:
            return False  # an hour: only when asked for (make faults-soak)
        return sc.quick or not quick

    out: list[tuple[Scenario, str | None]] = []
    for sc in scenarios:
        if not picked(sc):
            continue
        if not sc.versions:
            out.append((sc, None))
            continue
        # the quick variant runs 5.0 only, except rows whose point is ExaBGP's own behaviour
        versions = ("5.0",) if quick and sc.id not in QUICK_BOTH else sc.versions
        for v in versions:
            if version is None or v == version:
                out.append((sc, v))
    return out


SOAK_GROUPS = frozenset({10})
"""Fault groups run only when named (``--only 10``): the soak takes an hour."""
QUICK_BOTH = frozenset({"3a"})
"""Rows the quick variant runs on ExaBGP 4.2 too (respawn limit differs in its exit code)."""


def failed_row(sc: Scenario, version: str, quick: bool, exc: BaseException) -> Row:
    return Row(
        id=sc.id,
        fault=sc.fault,
        exabgp=version,
        quick=quick,
        seen=f"ERROR: the scenario raised {type(exc).__name__}: {exc}"[:600],
        ok=False,
        figures={"error": True},
    )


class Runner:
    """Runs selected scenarios, one lab per ExaBGP version, saving each row."""

    def __init__(self, store: Store, quick: bool) -> None:
        self.store = store
        self.quick = quick
        self.rows: list[Row] = []
        self.errors = 0

    def run_one(self, sc: Scenario, rig: Rig | None, version: str) -> Row:
        began = time.monotonic()
        log(f"faults: {sc.id} {sc.fault} (ExaBGP {version})")
        try:
            row = sc.fn(Ctx(rig, self.quick), sc)
        except Exception as exc:
            traceback.print_exc()
            row = failed_row(sc, rig.version if rig else version, self.quick, exc)
            self.errors += 1
        row.duration_s = round(time.monotonic() - began, 1)
        self.store.save(row)
        self.rows.append(row)
        mark = "ok " if row.ok else "NOT"
        log(f"faults: {mark} {row.id} ({row.duration_s:.0f} s): {row.seen[:300]}")
        return row

    def run(self, plan: Sequence[tuple[Scenario, str | None]]) -> None:
        for sc, v in plan:
            if v is None:
                self.run_one(sc, None, "-")
        for version in VERSIONS:
            mine = [sc for sc, v in plan if v == version]
            if not mine:
                continue
            rig: Rig | None = None
            for sc in mine:
                if rig is None:
                    rig = Rig(version).start()
                    log(f"faults: lab {rig.lab.id} with ExaBGP {rig.version}")
                row = self.run_one(sc, rig, version)
                if row.figures.get("error"):
                    # a scenario that raised may leave the lab in any state: start afresh
                    self._stop(rig)
                    rig = None
            if rig is not None:
                self._stop(rig)

    @staticmethod
    def _stop(rig: Rig) -> None:
        try:
            rig.stop()
        except Exception as exc:
            log(f"faults: lab teardown: {exc!r}")


def machine() -> str:
    cpus = os.cpu_count() or 0
    python = platform.python_version()
    return f"{cpus} vCPUs, {platform.system()} {platform.release()}, Python {python}"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def render(store: Store, quick: bool, output: Path) -> None:
    rows = store.load()
    meta = store.load_meta()
    stamps = sorted(r.measured_at for r in rows if r.measured_at)
    if stamps:
        meta["first"], meta["last"] = stamps[0], stamps[-1]
    scenarios = [sc for sc in all_scenarios() if sc.quick or not quick]
    text = report.render(rows, scenarios, meta, quick=quick)
    report.write(output, text)
    log(f"faults: wrote {output}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the quick variant (make test)")
    parser.add_argument("--only", help="fault groups or rows, e.g. 1,4b,12")
    parser.add_argument("--exabgp", choices=VERSIONS, help="one ExaBGP version only")
    parser.add_argument("--render", action="store_true", help="only re-render the report")
    parser.add_argument("--output", type=Path, help="the report (default: docs/reliability.md)")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a row is not as expected"
    )
    parser.add_argument(
        "--soak-minutes", type=float, help="length of the soak (row 10; default 60)"
    )
    args = parser.parse_args(argv)
    store = Store("quick" if args.quick else "full")
    output = args.output or (
        store.directory / "reliability-quick.md"
        if args.quick
        else REPO_ROOT / "docs" / "reliability.md"
    )
    if args.render:
        render(store, args.quick, output)
        return 0
    if Path(sys.prefix).resolve() != (REPO_ROOT / ".venv").resolve() and PYTHON.exists():
        os.execv(str(PYTHON), [str(PYTHON), "-m", "tests.faults.run", *sys.argv[1:]])  # noqa: S606
    why = unavailable()
    if why:
        sys.stderr.write(f"faults: cannot run here: {why}\n")
        return 2
    if args.soak_minutes is not None:
        os.environ[SOAK_SECONDS] = str(args.soak_minutes * 60)
    plan = select(all_scenarios(), args.only, args.quick, args.exabgp)
    if not plan:
        parser.error(f"no scenario matches --only {args.only!r}")
    signal.signal(signal.SIGTERM, _terminate)
    cleanup_stale()
    runner = Runner(store, args.quick)
    began = time.monotonic()
    try:
        runner.run(plan)
    finally:
        minutes = (time.monotonic() - began) / 60
        meta: dict[str, object] = {"machine": machine()}
        if args.only is None and args.exabgp is None:
            meta["duration_min"] = round(minutes, 1)  # a whole run: what make faults takes
        store.save_meta(meta)
        render(store, args.quick, output)
    bad = [r for r in runner.rows if not r.ok]
    for r in bad:
        log(f"faults: NOT as expected: {r.id} (ExaBGP {major(r.exabgp)}): {r.seen}")
    log(
        f"faults: {len(runner.rows)} rows in {minutes:.1f} min, {len(bad)} not as expected, "
        f"{runner.errors} errors"
    )
    if runner.errors or (args.strict and bad):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
