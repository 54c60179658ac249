"""Run the benchmarks (P1-P5 for announcer and EXA in one lab, P2L drain forwarding in
a 3-node lab with etcd, P6 the fleet guard against a 3-member etcd), write
docs/benchmarks.md.

    .venv/bin/python -m tests.bench.run               # 35-45 min, rewrites docs/benchmarks.md
    .venv/bin/python -m tests.bench.run --quick       # CI: 2-3 min, writes .cache/bench/
    .venv/bin/python -m tests.bench.run --only P1,P5  # some sections (or: tests/bench/run.py)
    .venv/bin/python -m tests.bench.run --only P6b    # one part of P6 (P6a, P6b, P6c)
    .venv/bin/python -m tests.bench.run --only P2L    # drain forwarding (not in --quick)
    .venv/bin/python -m tests.bench.run --only P1 --p1 d,idle --output .cache/bench/d.md
                                                      # some of P1's rows (d: process check)

The report's plots (SVG, Debian's python3-matplotlib) are drawn into img/ beside it:
docs/img/ for docs/benchmarks.md, .cache/bench/img/ for --quick.

Root only for P1-P5 and P2L (network namespaces, cgroups); P2L and P6 need Debian's
etcd (etcd-server) and are skipped, with a message, without it. Exit status 0 when
every section produced its figures (timings are reported, never asserted), 1 when one
failed, 2 when the machine cannot run them (the reason is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.bench import (  # noqa: E402
    burst,
    cli,
    drainfwd,
    failover,
    fleet,
    maintenance,
    plots,
    report,
    scale,
)
from tests.bench.common import (  # noqa: E402
    PYTHON,
    Cgroup,
    Results,
    byte_compile,
    log,
    machine,
    pace,
    requirements,
    settle,
)
from tests.bench.fibmon import FibMonitor  # noqa: E402
from tests.bench.profiling import PySpy  # noqa: E402
from tests.lab import NODES, PREFIX_V4, Lab, cleanup_stale  # noqa: E402

SECTIONS = ("P1", "P2", "P2L", "P3", "P4", "P5", "P6")
LAB_SECTIONS = {"P1", "P2", "P3", "P4", "P5"}
"""Sections measured in the namespace lab (P2L has a 3-node lab of its own, P6 needs
only etcd on loopback)."""
ETCD_SECTIONS = {"P2L", "P6"}
NOT_QUICK = {"P2L"}
"""Sections only the full run measures (P2L: a 3-node lab and etcd, about 6 min)."""
FLEET_PARTS = {"P6A": "P6a", "P6B": "P6b", "P6C": "P6c"}

FULL: dict[str, Any] = {
    "p1_trials": 30,
    "p1_cpu_window": 6.0,
    "p1_idle_window": 60.0,
    "p1_idle_warmup": 3.0,
    "p2_requests": 2000,
    "p2_warmup": 300,
    "p2_repeats": 3,
    "p3_announcer": [50, 200, 1000, 2000],  # 2,000: announcer only (EXA cannot run it)
    "p3_exa": [50, 200],
    "p3_window": 60.0,
    "p3_warmup": 3.0,
    "p4_sizes": [10_000, 50_000],
    "p4_exa": [10_000, 50_000],
    "p4_timeout": 150.0,
    "p5_runs": 50,
    "p5_exa_runs": 10,
    "profile_seconds": 10.0,
    "p6a_trials": 150,
    "p6b_nodes": 200,
    "p6b_services": 10,
    "p6b_window": 20.0,
    "p6b_flaps": 20.0,
    "p6b_view_reads": 20,
    "p6c_nodes": 100,
    "p6c_trials": 100,
    "p2l_cpu_pairs": 8,
    "p2l_cpu_window": 8.0,
}
QUICK: dict[str, Any] = {
    "p1_trials": 2,
    "p1_cpu_window": 1.0,
    "p1_idle_window": 3.0,
    "p1_idle_warmup": 1.0,
    "p2_requests": 200,
    "p2_warmup": 50,
    "p2_repeats": 1,
    "p3_announcer": [10],
    "p3_exa": [10],
    "p3_window": 3.0,
    "p3_warmup": 1.0,
    "p4_sizes": [1000],
    "p4_exa": [1000],
    "p4_timeout": 60.0,
    "p5_runs": 2,
    "p5_exa_runs": 2,
    "profile_seconds": 0.0,
    "p6a_trials": 5,
    "p6b_nodes": 10,
    "p6b_services": 2,
    "p6b_window": 2.0,
    "p6b_flaps": 4.0,
    "p6b_view_reads": 3,
    "p6c_nodes": 10,
    "p6c_trials": 3,
}


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def p2_and_p5(
    lab: Lab, monitor: FibMonitor, params: dict[str, Any], wanted: set[str], results: Results
) -> None:
    """P2 and P5 share the tools' start: announcer first, then EXA, on node1."""
    p2: dict[str, Any] = {
        "timing": maintenance.TIMING.label(),
        "drain_seconds": maintenance.DRAIN_SECONDS,
        "min_requests": params["p2_requests"],
    }
    p5: dict[str, Any] = {}
    if "P2" in wanted:
        results.sections["P2"] = p2
    if "P5" in wanted:
        results.sections["P5"] = p5
    for tool in ("announcer", "exa"):
        group = Cgroup(f"p2-{tool}")
        try:
            paths = maintenance.start(lab, monitor, tool, group)
            time.sleep(1.0)
            if "P2" in wanted:
                runner = maintenance.run_announcer if tool == "announcer" else maintenance.run_exa
                target = paths["socket"] if tool == "announcer" else paths["disable"]
                p2.update(
                    runner(
                        lab,
                        monitor,
                        target,
                        min_requests=params["p2_requests"],
                        warmup=params["p2_warmup"],
                        repeats=params["p2_repeats"],
                    )
                )
            if "P5" in wanted:
                if tool == "announcer":
                    p5["announcer"] = cli.run_announcer(
                        lab, monitor, paths["socket"], params["p5_runs"]
                    )
                else:
                    p5["exa"] = cli.run_exa(lab, monitor, paths["disable"], params["p5_exa_runs"])
        finally:
            (lab.node_dir("node1") / "exa-disable").unlink(missing_ok=True)
            lab.stop_exabgp("node1")
            group.remove()


def keep_logs(lab: Lab, target: Path) -> None:
    """Copy the lab's logs (ExaBGP, controllers, BIRD) out before the lab is removed."""
    shutil.rmtree(target, ignore_errors=True)
    for path in lab.tmpdir.rglob("*.log"):
        dest = target / path.relative_to(lab.tmpdir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copyfile(path, dest)


def check_produced(results: Results, wanted: set[str]) -> list[str]:
    """What is missing from the results (the quick run's only assertion)."""
    missing = [key for key in sorted(wanted) if key not in results.sections]
    p1 = results.sections.get("P1")
    if p1:
        for p in p1["profiles"]:
            for tool in p.get("tools", ("announcer", "exa")):
                if not p.get(tool, {}).get("failover", {}).get("n"):
                    missing.append(f"P1 ({p['key']}) {tool} failover")
        idle = p1.get("idle")
        if idle is not None and "difference" not in idle:
            missing.append("P1 idle CPU with the process check")
    p2 = results.sections.get("P2")
    if p2:
        missing += [f"P2 ({k})" for k in "abcd" if "failed" not in p2.get(k, {})]
        missing += [f"P2 ({k}) streams" for k in "ef" if not p2.get(k, {}).get("nodes")]
    p3 = results.sections.get("P3")
    if p3:
        missing += [f"P3 {e['tool']} N={e['n']}" for e in p3["runs"] if "core_fraction" not in e]
        if not p3["runs"]:
            missing.append("P3 runs")
    p4 = results.sections.get("P4")
    if p4:
        missing += [f"P4 {e['tool']} {e['n']}" for e in p4["runs"] if e.get("seconds") is None]
    missing += fleet.missing(results.sections.get("P6"))
    p2l = results.sections.get("P2L")
    if p2l:
        rows = p2l.get("rows", {})
        missing += [
            f"P2L {k}" for k in ("on", "mtu", "off", "exa") if not rows.get(k, {}).get("nodes")
        ]
        if not p2l.get("cpu", {}).get("each"):
            missing.append("P2L forwarding CPU")
    p5 = results.sections.get("P5")
    if p5:
        if not p5.get("announcer", {}).get("status", {}).get("n"):
            missing.append("P5 announcer status")
        if not p5.get("exa", {}).get("disable_to_fib", {}).get("n"):
            missing.append("P5 EXA disable")
    return missing


def draw_plots(results: Results, output: Path) -> dict[str, str]:
    """Draw the plots into img/ beside ``output``; {section: path relative to it}.

    A failure is one of the run's errors (the figures are still written as tables).
    """
    try:
        drawn = plots.draw(results.sections, output.parent / "img")
    except Exception as exc:
        traceback.print_exc()
        results.errors["plots"] = f"{type(exc).__name__}: {exc}"
        return {}
    wanted = {"P1", "P3"} & set(results.sections)
    if wanted - set(drawn):
        results.errors["plots"] = f"not drawn: {', '.join(sorted(wanted - set(drawn)))}"
    return {key: f"img/{name}" for key, name in drawn.items()}


def lab_sections(
    args: argparse.Namespace,
    params: dict[str, Any],
    wanted: set[str],
    rows: tuple[str, ...],
    results: Results,
    cache: Path,
) -> None:
    """P1-P5: one namespace lab (BIRD, two ExaBGP nodes, a client), removed after."""
    cleanup_stale()
    lab = Lab("5.0")
    mode = "quick" if args.quick else "full"
    log(f"bench: lab {lab.id}, sections {','.join(sorted(wanted))}, {mode}")
    try:
        lab.start({n: lab.standin_argv(n) for n in NODES})
        with FibMonitor(lab.ns("router"), [PREFIX_V4]) as monitor:
            monitor.wait_state(PREFIX_V4, lambda g: len(g) == 2, 30.0)
            steps: list[tuple[str, Any]] = [
                (
                    "P1",
                    lambda: failover.run(
                        lab,
                        monitor,
                        trials=params["p1_trials"],
                        cpu_window=params["p1_cpu_window"],
                        seed=args.seed,
                        out=results.sections.setdefault("P1", {}),
                        rows=rows,
                        idle_window=params["p1_idle_window"],
                        idle_warmup=params["p1_idle_warmup"],
                    ),
                ),
                ("P2+P5", lambda: p2_and_p5(lab, monitor, params, wanted, results)),
                (
                    "P3",
                    lambda: scale.run(
                        lab,
                        announcer_sizes=params["p3_announcer"],
                        exa_sizes=params["p3_exa"],
                        window=params["p3_window"],
                        warmup=params["p3_warmup"],
                        profile=params["profile_seconds"],
                        out=results.sections.setdefault("P3", {}),
                    ),
                ),
                (
                    "P4",
                    lambda: burst.run(
                        lab,
                        sizes=params["p4_sizes"],
                        exa_sizes=params["p4_exa"],
                        timeout=params["p4_timeout"],
                        profile=min(params["profile_seconds"], 10.0),
                        profile_size=max(params["p4_sizes"]),
                        out=results.sections.setdefault("P4", {}),
                    ),
                ),
            ]
            for name, step in steps:
                keys = name.split("+")
                if not wanted.intersection(keys):
                    continue
                settle()
                with machine_watch(results, keys):
                    if not run_step(lab, name, keys, wanted, step, results):
                        break
    finally:
        keep_logs(lab, cache / ("logs-quick" if args.quick else "logs"))
        try:
            lab.stop()
        except Exception as exc:
            log(f"bench: lab teardown: {exc!r}")


@contextlib.contextmanager
def machine_watch(results: Results, keys: list[str]) -> Iterator[None]:
    """Record the machine's load and pace at the start and end of the sections ``keys``
    (issue 12: the pace beside every section; a figure is judged at the goals' pace)."""
    load, speed = os.getloadavg()[0], pace()
    try:
        yield
    finally:
        ends = [os.getloadavg()[0], pace()]
        for key in keys:
            results.machine.setdefault("section_load", {})[key] = [load, ends[0]]
            results.machine.setdefault("section_pace", {})[key] = [speed, ends[1]]


def run_step(
    lab: Lab,
    name: str,
    keys: list[str],
    wanted: set[str],
    step: Callable[[], Any],
    results: Results,
) -> bool:
    """Run one of the lab's sections; False when it failed and the lab could not be restored."""
    try:
        value = step()
        if value is not None:
            results.sections[name] = value
    except Exception as exc:
        traceback.print_exc()
        for key in keys:
            if key in wanted:
                results.errors[key] = f"{type(exc).__name__}: {exc}"
        log(f"bench: {name} failed: {exc!r}")
        try:
            lab.stop_exabgp("node1")
            lab.ensure({n: lab.standin_argv(n) for n in NODES})
        except Exception as again:
            log(f"bench: lab could not be restored: {again!r}")
            return False
    return True


def drain_section(params: dict[str, Any], results: Results) -> None:
    """P2L in a 3-node lab of its own with etcd, after P1-P5's lab is gone."""
    with machine_watch(results, ["P2L"]):
        try:
            drainfwd.run(params, results.sections.setdefault("P2L", {}))
        except Exception as exc:
            traceback.print_exc()
            results.errors["P2L"] = f"{type(exc).__name__}: {exc}"
            log(f"bench: P2L failed: {exc!r}")


def fleet_section(params: dict[str, Any], parts: set[str], results: Results) -> None:
    """P6 (the parts asked for) against its own 3-member etcd, after the lab is gone."""
    out = results.sections.setdefault("P6", {})
    with machine_watch(results, ["P6"]):
        fleet.run(params, parts, out)
    for key, why in out.get("errors", {}).items():
        results.errors[key] = why


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a few trials and small sizes (CI)")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help="sections, e.g. P1,P3 (default: all)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="Markdown report (default: docs/benchmarks.md; --quick: .cache/bench/)",
    )
    parser.add_argument(
        "--json", type=Path, help="raw results (default: next to the report's cache: .cache/bench/)"
    )
    parser.add_argument(
        "--p1",
        default=",".join(failover.ROWS),
        help=f"P1's rows, e.g. d,idle (default: all: {','.join(failover.ROWS)})",
    )
    parser.add_argument("--seed", type=int, default=6, help="random seed of P1's kill moments")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument(
        "--from-json", type=Path, metavar="RESULTS", help="only render a run's saved results again"
    )
    parser.add_argument(
        "--replace",
        type=Path,
        metavar="LATER",
        help="with --from-json: take the sections LATER (a later run's results) measured "
        "instead; the page names them",
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:
        saved = Results(quick=False, command="")
        saved.__dict__.update(json.loads(args.from_json.read_text()))
        if args.replace is not None:
            later = json.loads(args.replace.read_text())
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(later["started"]))
            commit = later.get("machine", {}).get("commit", "?")
            for section, figures in later["sections"].items():
                again = "again " if section in saved.sections else ""
                saved.sections[section] = figures
                saved.remeasured[section] = (
                    f"{again}in a later run, at commit {commit} ({when}, `{later['command']}`)"
                )
        output = args.output or REPO_ROOT / "docs" / "benchmarks.md"
        output.write_text(report.render(saved, draw_plots(saved, output)))
        log(f"bench: rendered {args.from_json} into {output}")
        return 0

    if Path(sys.prefix).resolve() != (REPO_ROOT / ".venv").resolve() and PYTHON.exists():
        argv_again = [str(PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]]
        os.execv(str(PYTHON), argv_again)  # noqa: S606 - the same script under the repo's venv

    wanted = {s.strip().upper() for s in args.only.split(",") if s.strip()}
    unknown = wanted - set(SECTIONS) - set(FLEET_PARTS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    fleet_parts = {FLEET_PARTS[w] for w in wanted if w in FLEET_PARTS}
    if "P6" in wanted or fleet_parts:
        fleet_parts = fleet_parts or set(FLEET_PARTS.values())
        wanted = (wanted - set(FLEET_PARTS)) | {"P6"}
    if args.quick and wanted & NOT_QUICK:
        log(f"bench: {', '.join(sorted(wanted & NOT_QUICK))} not measured in --quick")
        wanted -= NOT_QUICK
        if not wanted:
            parser.error("P2L has no quick variant")
    no_etcd = fleet.available()
    if no_etcd and wanted & ETCD_SECTIONS:
        # Without etcd the other sections still run; P2L and P6 cannot.
        log(f"bench: {', '.join(sorted(wanted & ETCD_SECTIONS))} skipped: needs {no_etcd}")
        wanted -= ETCD_SECTIONS
        if not wanted:
            sys.stderr.write(f"bench: cannot run here: {no_etcd}\n")
            return 2
    rows = tuple(r.strip() for r in args.p1.split(",") if r.strip())
    if set(rows) - set(failover.ROWS):
        parser.error(f"unknown P1 rows: {', '.join(sorted(set(rows) - set(failover.ROWS)))}")
    missing = requirements() if wanted & (LAB_SECTIONS | {"P2L"}) else []
    if missing:
        sys.stderr.write("bench: cannot run here: " + "; ".join(missing) + "\n")
        return 2
    params = dict(QUICK if args.quick else FULL)
    byte_compile()
    if args.no_profile or not PySpy.available():
        params["profile_seconds"] = 0.0
    cache = REPO_ROOT / ".cache" / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    output = args.output or (
        cache / "benchmarks-quick.md" if args.quick else REPO_ROOT / "docs" / "benchmarks.md"
    )
    json_path = args.json or cache / ("results-quick.json" if args.quick else "results.json")

    command = "sudo .venv/bin/python -m tests.bench.run" + (" --quick" if args.quick else "")
    if wanted != set(SECTIONS):
        shown = wanted - {"P6"} | (fleet_parts if len(fleet_parts) < 3 else wanted & {"P6"})
        command += f" --only {','.join(sorted(shown))}"
    if args.no_profile:
        command += " --no-profile"
    if set(rows) != set(failover.ROWS):
        command += f" --p1 {','.join(rows)}"
    if args.seed != 6:
        command += f" --seed {args.seed}"
    results = Results(quick=args.quick, command=command)
    results.machine = machine()
    results.machine["params"] = params
    signal.signal(signal.SIGTERM, _terminate)
    began = time.monotonic()
    finished = False
    try:
        if wanted & LAB_SECTIONS:
            lab_sections(args, params, wanted, rows, results, cache)
        if "P2L" in wanted:
            drain_section(params, results)
        if "P6" in wanted:
            fleet_section(params, fleet_parts, results)
        finished = True
    finally:
        results.duration = time.monotonic() - began
        results.machine["loadavg_end"] = os.getloadavg()
        if not finished and args.output is None:
            # interrupted: keep the last complete report (and its plots), put this one aside
            output = cache / "benchmarks-interrupted.md"
        output.parent.mkdir(parents=True, exist_ok=True)
        images = draw_plots(results, output)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(results.to_json())
        output.write_text(report.render(results, images))
        log(f"bench: {results.duration / 60:.1f} min; wrote {output} and {json_path}")
    problems = check_produced(results, wanted)
    if problems or results.errors:
        sys.stderr.write(
            "bench: figures missing: "
            + "; ".join(problems + [f"{k}: {v}" for k, v in results.errors.items()])
            + "\n"
        )
        return 1
    log("bench: every section produced its figures")
    print(json.dumps({"duration_s": round(results.duration, 1), "output": str(output)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
