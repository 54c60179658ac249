"""Shared pieces of the benchmarks: statistics, cgroup v1 accounting, /proc, the machine."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV = REPO_ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
ANNOUNCER_BIN = VENV / "bin" / "announcer"
EXABGP_BIN = VENV / "bin" / "exabgp"
CGWRAP = Path(__file__).with_name("cgwrap.py")
CHECKSERVER = Path(__file__).with_name("checkserver.py")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    """Progress on stderr, with the time of day."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between order statistics (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, p50, p90, p99, max, min and mean of ``values``."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "min": min(values),
        "mean": sum(values) / len(values),
    }


def ratio(exa: float | None, ours: float | None) -> float | None:
    """EXA / announcer (above 1: announcer is better for times and costs)."""
    if exa is None or ours is None or ours == 0 or math.isnan(exa) or math.isnan(ours):
        return None
    return exa / ours


# --------------------------------------------------------------------------- /proc


def _status_kb(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` now (0 if gone)."""
    return _status_kb(pid, "VmRSS")


def hwm_kb(pid: int) -> int:
    """Peak resident set size of ``pid`` so far (0 if gone)."""
    return _status_kb(pid, "VmHWM")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` itself (not its children)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --------------------------------------------------------------------------- cgroup v1


def _own_cgroup(controller: str) -> str:
    """This process's cgroup path in the v1 hierarchy that has ``controller``."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    raise RuntimeError(f"no cgroup v1 {controller} hierarchy for this process")


class Cgroup:
    """A cpuacct + memory cgroup (v1) of our own, made under this process's own groups.

    Processes join it through :meth:`wrap` and :meth:`release` (or :meth:`add`); :meth:`cpu` reads
    ``cpuacct.usage`` (every task that ever ran in the group, children included,
    dead or alive), :meth:`memory_peak` ``memory.max_usage_in_bytes``. Remove it
    with :meth:`remove` once its processes are gone.
    """

    def __init__(self, name: str) -> None:
        tag = f"announcer-bench-{os.getpid()}-{name}-{secrets.token_hex(2)}"
        self.dirs: dict[str, Path] = {}
        for controller in ("cpuacct", "memory"):
            parent = CGROUP_ROOT / controller / _own_cgroup(controller).lstrip("/")
            path = parent / tag
            path.mkdir()
            self.dirs[controller] = path

    @staticmethod
    def available() -> str | None:
        """Why cgroup v1 cpuacct/memory accounting is not usable here, or None."""
        for controller in ("cpuacct", "memory"):
            base = CGROUP_ROOT / controller
            if not (base / "cgroup.procs").exists():
                return f"no cgroup v1 {controller} hierarchy at {base}"
        if os.geteuid() != 0:
            return "creating cgroups needs root"
        return None

    def wrap(
        self, argv: Sequence[str], go: Path, *, stamp: Path | None = None, poll: float = 0.02
    ) -> list[str]:
        """``argv`` behind :data:`CGWRAP`: it waits for ``go`` to exist, then execs ``argv``.

        Call :meth:`release` with the wrappers' PIDs to put them in the group and go.
        """
        out = [str(PYTHON), str(CGWRAP), "--wait-file", str(go), "--poll", f"{poll:g}"]
        if stamp is not None:
            out += ["--stamp", str(stamp)]
        return [*out, "--", *argv]

    def release(
        self, pids: Callable[[], list[int]], expected: int, go: Path, timeout: float = 120.0
    ) -> list[int]:
        """Wait until ``pids()`` lists ``expected`` wrappers, move them into the group, go."""

        def started() -> list[int] | None:
            found = pids()
            return found if len(found) >= expected else None

        found = wait_for(started, timeout, 0.02, f"{expected} wrapped process(es) started")
        for pid in found:
            self.add(pid)
        go.touch()
        return list(found)

    def add(self, pid: int) -> None:
        """Move ``pid`` (and the children it forks from now on) into the group."""
        for path in self.dirs.values():
            with contextlib.suppress(OSError):
                (path / "cgroup.procs").write_text(f"{pid}\n")

    def cpu(self) -> float:
        """CPU seconds used by everything that ran in the group."""
        return int((self.dirs["cpuacct"] / "cpuacct.usage").read_text()) / 1e9

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds from ``cpuacct.stat``."""
        values = {}
        for line in (self.dirs["cpuacct"] / "cpuacct.stat").read_text().splitlines():
            key, value = line.split()
            values[key] = int(value) / CLK_TCK
        return values.get("user", 0.0), values.get("system", 0.0)

    def pids(self) -> list[int]:
        """Processes in the group now."""
        text = (self.dirs["cpuacct"] / "cgroup.procs").read_text()
        return [int(x) for x in text.split()]

    def memory_peak(self) -> int:
        """``memory.max_usage_in_bytes`` (anonymous memory and page cache charged here)."""
        return int((self.dirs["memory"] / "memory.max_usage_in_bytes").read_text())

    def reset_memory_peak(self) -> None:
        with contextlib.suppress(OSError):
            (self.dirs["memory"] / "memory.max_usage_in_bytes").write_text("0\n")

    def remove(self, timeout: float = 10.0) -> None:
        """Remove the group, waiting (bounded) for its processes to be gone."""
        deadline = time.monotonic() + timeout
        for path in self.dirs.values():
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() >= deadline:
                        # move stragglers to the parent group so the directory can go
                        for pid in (path / "cgroup.procs").read_text().split():
                            with contextlib.suppress(OSError):
                                (path.parent / "cgroup.procs").write_text(pid + "\n")
                        with contextlib.suppress(OSError):
                            path.rmdir()
                        break
                    time.sleep(0.05)


class RssSampler:
    """Samples the summed RSS of a cgroup's processes every ``period`` s in a thread.

    ``peak_kb`` is the larger of the highest sampled sum of VmRSS and the sum of
    VmHWM (each process's own peak) of the processes alive at the last sample, so
    a long-lived process's peak between samples is not missed.
    """

    def __init__(self, group: Cgroup, period: float = 0.5, max_seconds: float = 900.0) -> None:
        self.group = group
        self.period = period
        self.max_seconds = max_seconds
        self.peak_rss_kb = 0
        self.peak_hwm_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="RssSampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def sample(self) -> None:
        pids = self.group.pids()
        self.peak_rss_kb = max(self.peak_rss_kb, sum(rss_kb(p) for p in pids))
        self.peak_hwm_kb = max(self.peak_hwm_kb, sum(hwm_kb(p) for p in pids))
        self.samples += 1

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                self.sample()
            self._stop.wait(self.period)

    def stop(self) -> int:
        """Stop sampling (after one last sample); return the peak in kB."""
        self._stop.set()
        self._thread.join(5.0)
        with contextlib.suppress(OSError, ValueError):
            self.sample()
        return self.peak_kb

    @property
    def peak_kb(self) -> int:
        return max(self.peak_rss_kb, self.peak_hwm_kb)


# --------------------------------------------------------------------------- machine


def _first_line(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "?"


def exabgp_version(binary: Path) -> str:
    """``exabgp version`` -> ``5.0.15``."""
    try:
        proc = subprocess.run(
            [str(binary), "version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    match = re.search(r"ExaBGP\s*:\s*(\S+)", proc.stdout + proc.stderr)
    return match.group(1) if match else "?"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu_model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total = _status_like("/proc/meminfo", "MemTotal")
    os_name = "?"
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    debian = ""
    with contextlib.suppress(OSError):
        debian = Path("/etc/debian_version").read_text().strip()
    from announcer import __version__ as announcer_version

    commit = _first_line(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "announcer", "checks"]
    )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "os": f"{os_name} ({debian})" if debian else os_name,
        "memory_gb": round(mem_total / 1024 / 1024, 1) if mem_total else None,
        "python": platform.python_version(),
        "exabgp": exabgp_version(EXABGP_BIN),
        "bird": _first_line(["bird", "--version"]).replace("BIRD version ", ""),
        "curl": _first_line(["curl", "--version"]).split(" (")[0],
        "announcer": announcer_version,
        "commit": commit + ("" if dirty in ("", "?") else " (announcer/ or checks/ modified)"),
        "loadavg_start": os.getloadavg(),
        "cgroups": "v1 (cpuacct, memory)",
    }


def _status_like(path: str, key: str) -> int:
    with contextlib.suppress(OSError):
        match = re.search(rf"^{key}:\s+(\d+)", Path(path).read_text(), re.M)
        if match:
            return int(match.group(1))
    return 0


GOAL_PACE_S = 0.028
"""The machine's pace (``python -c pass``) in run D, where issue 12 set the absolute CPU
goals: figures taken at another pace are judged scaled to this one (the issue's rule)."""


def pace(runs: int = 5) -> float:
    """Median seconds of ``python -c pass``: the machine's pace at this moment."""
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run([str(PYTHON), "-c", "pass"], capture_output=True, timeout=30, check=False)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def at_goal_pace(value: float, pace_s: float | None) -> float:
    """``value`` (a CPU figure taken at ``pace_s``) as it would be at :data:`GOAL_PACE_S`:
    a machine twice as slow costs twice the CPU for the same work. Unscaled without a pace."""
    if not pace_s or pace_s <= 0:
        return value
    return value * GOAL_PACE_S / pace_s


def settle(limit: float = 120.0) -> float:
    """Wait (at most ``limit`` seconds) until the machine is quiet: at most 2 tasks
    runnable, 3 readings in a row a second apart. EXA's hundreds of processes take a
    while to die after P3; P4, right after, measured them (the 1-min load was 36).
    Returns the seconds waited."""
    began = time.monotonic()
    quiet = 0
    while quiet < 3 and time.monotonic() - began < limit:
        running = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("procs_running ")
        )
        quiet = quiet + 1 if running <= 2 else 0
        time.sleep(1.0)
    waited = time.monotonic() - began
    if waited > 5:
        log(f"bench: waited {waited:.0f} s for the machine to settle")
    return waited


def byte_compile() -> None:
    """Byte-compile the controller as the Debian package does at install (py3compile). A
    checkout run with PYTHONDONTWRITEBYTECODE set compiles about 50 modules again at
    every start (0.18 s here), which no installed controller does."""
    import compileall

    for package in ("announcer", "checks"):
        compileall.compile_dir(REPO_ROOT / package, quiet=1)


def requirements() -> list[str]:
    """What is missing to run the benchmarks (empty when all is there)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces, cgroups, BGP port 179)")
    for tool in ("ip", "bird", "birdc", "curl"):
        if (
            shutil.which(
                tool, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
            )
            is None
        ):
            missing.append(f"`{tool}`" + (" (apt-get install curl)" if tool == "curl" else ""))
    for path in (ANNOUNCER_BIN, EXABGP_BIN):
        if not path.exists():
            missing.append(f"{path} (run scripts/bootstrap.sh)")
    why = Cgroup.available()
    if why:
        missing.append(why)
    return missing


@dataclass
class Results:
    """Everything one run measured, section by section (written as JSON and Markdown)."""

    quick: bool
    command: str
    machine: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    duration: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)
    remeasured: dict[str, str] = field(default_factory=dict)
    """Sections taken from a later run (``--from-json A --replace B``): section -> when
    and by which command that run measured them; the page says so."""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, default=str)


def wait_for(
    predicate: Any, timeout: float, interval: float = 0.02, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until truthy (bounded by ``timeout``); else TimeoutError(``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not true after {timeout:.1f} s")
        time.sleep(interval)


def kb_to_mb(kb: float) -> float:
    return kb / 1024.0


def chunks(items: Iterable[Any], size: int) -> list[list[Any]]:
    out: list[list[Any]] = []
    for item in items:
        if not out or len(out[-1]) >= size:
            out.append([])
        out[-1].append(item)
    return out
