"""The benchmark's plots (SVG, embedded in docs/benchmarks.md): P1 as distributions, P3 as
cost against N.

matplotlib is Debian's (``python3-matplotlib``, installed by scripts/bootstrap.sh as
root): the benchmark's tool only, no dependency of the package, so it is not in
.venv. When .venv cannot import it, the interpreter's own Debian ``dist-packages``
(where dpkg says the package put it) is appended to ``sys.path`` when the plots
are drawn, at the end of a run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

P1_FILE = "p1-failover.svg"
P3_FILE = "p3-cost.svg"
COLOURS = {"announcer": "#1f77b4", "exa": "#ff7f0e", "floor": "#2ca02c"}
NAMES = {"announcer": "announcer", "exa": "EXA", "floor": "floor"}
P1_GOAL_S = 0.05  # issue 14: row (d)'s p99


def _debian_dist_packages() -> Path:
    """Where Debian's python3-matplotlib put matplotlib (asked of dpkg: .venv may be made
    from another Python than Debian's, so its base prefix does not say)."""
    listing = subprocess.run(
        ["dpkg-query", "-L", "python3-matplotlib"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    for line in listing.splitlines():
        if line.endswith("/matplotlib/__init__.py"):
            return Path(line).parents[1]
    raise ImportError("python3-matplotlib is not installed (dpkg-query -L lists no matplotlib)")


def pyplot() -> Any:
    """matplotlib.pyplot with the SVG backend, or ImportError saying what to install."""
    try:
        import matplotlib
    except ImportError:
        try:
            # appended, so .venv's own packages still come first; left there, since
            # matplotlib imports more of Debian's packages (dateutil, six) as it draws
            sys.path.append(str(_debian_dist_packages()))
            import matplotlib
        except (ImportError, OSError) as exc:
            raise ImportError(
                "matplotlib not found: apt-get install python3-matplotlib (scripts/bootstrap.sh "
                "does, as root)"
            ) from exc
    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    # the same results give the same file: no random ids, no date (committed under docs/)
    plt.rcParams["svg.hashsalt"] = "announcer-bench"
    plt.rcParams["svg.fonttype"] = "none"
    return plt


def _plain(axis: Any) -> None:
    """Tick labels as plain numbers (10, 100), not powers of ten, on a log axis."""
    from matplotlib import ticker

    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _save(plt: Any, fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return path


def p1_series(p1: dict[str, Any]) -> list[tuple[str, str, list[float]]]:
    """(label, tool, failover times in s) per configuration and tool, in the table's order."""
    out = []
    for p in p1.get("profiles", []):
        for tool in p.get("tools", ["announcer", "exa"]):
            samples = p.get(tool, {}).get("samples") or []
            if samples:
                out.append((f"({p['key']}) {NAMES.get(tool, tool)}", tool, list(samples)))
    return out


def draw_p1(plt: Any, p1: dict[str, Any], path: Path) -> Path | None:
    """Every configuration's failover times, both tools and the floor, on one log axis."""
    series = p1_series(p1)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(series) + 1.6))
    positions = list(range(len(series), 0, -1))  # first row on top, as in the table
    data = [[1000 * x for x in s] for _, _, s in series]
    boxes = ax.boxplot(
        data,
        positions=positions,
        vert=False,
        whis=(0, 100),
        widths=0.6,
        patch_artist=True,
        showfliers=False,
        medianprops={"color": "black"},
    )
    for patch, (_, tool, _) in zip(boxes["boxes"], series, strict=True):
        patch.set_facecolor(COLOURS.get(tool, "grey"))
        patch.set_alpha(0.35)
    for y, values, (_, tool, _) in zip(positions, data, series, strict=True):
        # a fixed spread instead of random jitter: the same results draw the same plot
        n = len(values)
        offsets = [0.25 * (2 * i / max(1, n - 1) - 1) for i in range(n)]
        ax.scatter(values, [y + o for o in offsets], s=9, color=COLOURS.get(tool, "grey"))
    ax.set_yticks(positions)
    ax.set_yticklabels([label for label, _, _ in series])
    ax.set_xscale("log")
    _plain(ax.xaxis)
    ax.set_xlabel("web server killed \u2192 node1's path out of the router's FIB (ms, log scale)")
    ax.axvline(1000 * P1_GOAL_S, color="grey", linestyle="--", linewidth=1)
    ax.text(
        1000 * P1_GOAL_S,
        len(series) + 0.6,
        " (d) goal: p99 \u2264 50 ms",
        color="grey",
        fontsize=8,
        va="bottom",
    )
    ax.set_ylim(0.4, len(series) + 1.0)
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.set_title(
        f"P1 failover, {p1.get('trials')} trials each (box: quartiles, whiskers: min and max)"
    )
    return _save(plt, fig, path)


def draw_p3(plt: Any, p3: dict[str, Any], path: Path) -> Path | None:
    """CPU and peak RSS of the checker against N, per tool."""
    runs = [e for e in p3.get("runs", []) if "core_fraction" in e]
    if not runs:
        return None
    fig, (cpu_ax, mem_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for tool in ("announcer", "exa"):
        mine = sorted((e for e in runs if e["tool"] == tool), key=lambda e: e["n"])
        if not mine:
            continue
        ns = [e["n"] for e in mine]
        style = {"marker": "o", "color": COLOURS[tool], "label": NAMES[tool]}
        cpu_ax.plot(ns, [100 * e["core_fraction"] for e in mine], **style)
        mem_ax.plot(ns, [e["peak_rss_mb"] for e in mine], **style)
    sizes = sorted({e["n"] for e in runs})
    for ax, label in ((cpu_ax, "CPU, % of one core"), (mem_ax, "peak RSS, MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes)
        _plain(ax.xaxis)
        _plain(ax.yaxis)
        ax.set_xlabel("N services (one HTTP check each, every 1 s)")
        ax.set_ylabel(label)
        ax.grid(which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("P3 cost at scale: the checker's process tree")
    return _save(plt, fig, path)


def draw(sections: dict[str, Any], directory: Path) -> dict[str, str]:
    """Draw what the results hold into ``directory``; {section: file name} of those drawn."""
    plt = pyplot()
    drawn: dict[str, str] = {}
    for key, fn, name in (("P1", draw_p1, P1_FILE), ("P3", draw_p3, P3_FILE)):
        if key in sections and fn(plt, sections[key], directory / name) is not None:
            drawn[key] = name
    return drawn
