"""Learning curves of training runs: ``python -m minerva.plot RUN_DIRS... -o curves.png``.

Each RUN_DIR is a run folder (one with a ``metrics.jsonl``, as ``python -m minerva.train``
writes) or a folder searched recursively for run folders. Runs are grouped by env id (from
``run.json``; the folder name when there is none), and each env gets one row of two panels:
the metric against environment steps and against wall-clock seconds.

Per env, the seeds' curves are interpolated linearly onto a common grid: on the steps axis
the union of the seeds' evaluation steps, on the wall-clock axis an even grid. Both grids
cover only the range every seed has data for, so the mean line and the shaded spread
(min-max, or mean +- std with ``--band std``) are always over all seeds; each seed's own
curve is drawn faintly over its full length.

The functions (:func:`load_run`, :func:`find_runs`, :func:`plot_runs`, ...) are for scripts
such as ``benchmarks/learning.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from minerva.errors import first_line

METRICS_FILE = "metrics.jsonl"
RUN_INFO_FILE = "run.json"
DEFAULT_METRIC = "eval/return_mean"
STEP, ELAPSED = "global_step", "time/elapsed_s"
Spread = Literal["minmax", "std"]
SPREAD_LABELS: dict[str, str] = {"minmax": "min–max over seeds", "std": "mean ± std over seeds"}
WALL_CLOCK_POINTS = 200
MARKED_POINTS = 30  # seed curves with at most this many points show them as dots
ROW_SIZE = (10.0, 3.2)  # inches per env row
DPI = 100
# values beyond this are damage, not returns: matplotlib cannot scale an axis to ±1e308
MAX_PLOTTED = 1e100


@dataclass(frozen=True)
class Curve:
    """One run's metric: values at environment steps and at wall-clock seconds."""

    steps: np.ndarray
    seconds: np.ndarray
    values: np.ndarray

    def along(self, axis: str) -> np.ndarray:
        """The x values for ``axis`` ("steps" or "seconds")."""
        return self.steps if axis == "steps" else self.seconds


@dataclass(frozen=True)
class Run:
    """A run folder's ``metrics.jsonl`` events and ``run.json`` information."""

    path: Path
    env_id: str
    seed: int | None
    events: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.env_id} seed {self.seed}" if self.seed is not None else str(self.path)

    def curve(self, metric: str = DEFAULT_METRIC) -> Curve:
        """The events that carry ``metric`` (finite values only) as a curve (:meth:`series`).
        Raises SystemExit naming the run when it has no such events."""
        curve = self.series(metric)
        if curve is None:
            what = "evaluation" if metric.startswith("eval/") else f"'{metric}'"
            raise SystemExit(f"{self.path}: the run has no {what} events "
                             f"(no '{metric}' in {METRICS_FILE})")
        return curve

    def series(self, metric: str) -> Curve | None:
        """The events that carry ``metric`` (finite values only) as a curve; None when none
        does. When a later event has a step at or below an earlier one's (a run resumed from
        an earlier checkpoint), the later measurement replaces the earlier ones."""
        points: list[tuple[float, float, float]] = []
        for event in self.events:
            value = event.get(metric)
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not math.isfinite(value) or abs(value) > MAX_PLOTTED):
                continue
            while points and points[-1][0] >= event[STEP]:
                points.pop()
            points.append((event[STEP], event[ELAPSED], value))
        if not points:
            return None
        steps, seconds, values = (np.array(column, dtype=float) for column in zip(*points))
        return Curve(steps, seconds, values)

    def last(self, metric: str) -> float | None:
        """The metric's value in the last event that has it (None when none has)."""
        for event in reversed(self.events):
            if event.get(metric) is not None:
                return float(event[metric])
        return None

    @property
    def final_step(self) -> int:
        return int(self.events[-1][STEP]) if self.events else 0

    @property
    def wall_clock_s(self) -> float:
        return float(self.events[-1][ELAPSED]) if self.events else 0.0


def load_run(path: str | Path) -> Run:
    """Reads a run folder. ``time/elapsed_s`` restarts when a run is resumed; the events that
    follow are shifted so that the wall-clock time keeps counting up."""
    path = Path(path)
    metrics = path / METRICS_FILE
    if not metrics.is_file():
        raise SystemExit(f"{path}: not a run folder (no {METRICS_FILE})")
    events: list[dict[str, Any]] = []
    offset = 0.0
    try:
        lines = metrics.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise SystemExit(f"{metrics}: cannot be read ({error})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            event[STEP], event[ELAPSED] = int(event[STEP]), float(event[ELAPSED])
            if not math.isfinite(event[ELAPSED]):
                raise ValueError(f"{ELAPSED} is {event[ELAPSED]}")
        except (ValueError, KeyError, TypeError, OverflowError) as error:
            if number == len(lines):  # cut by a kill mid-write, as the trainer sees it too
                break
            raise SystemExit(f"{metrics}:{number}: not a metrics event ({error})") from None
        if events and event[ELAPSED] + offset < events[-1][ELAPSED]:
            offset = events[-1][ELAPSED]  # a new session: its clock started at zero
        event[ELAPSED] += offset
        events.append(event)
    info = _run_info(path / RUN_INFO_FILE)
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    return Run(path=path, env_id=info.get("env_id") or config.get("env_id") or _env_from(path),
               seed=config.get("seed", _seed_from(path)), events=events, info=info)


def _run_info(path: Path) -> dict[str, Any]:
    """``run.json`` ({} when it is missing, unreadable or not an object: the run's name
    and seed then come from its folder's)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _env_from(path: Path) -> str:
    """The env id a folder name suggests: ``runs/CartPole-v1-seed1-<stamp>`` (the trainer's
    default out dir) or ``<env>/seed1`` (``benchmarks/learning.py``'s) -> ``CartPole-v1``."""
    name = path.resolve().name
    if re.fullmatch(r"seed\d+", name):
        return path.resolve().parent.name
    return re.sub(r"-seed\d+.*$", "", name)


def _seed_from(path: Path) -> int | None:
    match = re.search(r"seed(\d+)", path.resolve().name)
    return int(match.group(1)) if match else None


def find_runs(paths: Iterable[str | Path]) -> list[Run]:
    """The runs in ``paths`` (run folders, or folders searched recursively for them), sorted
    by env id and seed. Raises SystemExit for a path with no runs."""
    folders: dict[Path, None] = {}  # an ordered set
    for path in map(Path, paths):
        if (path / METRICS_FILE).is_file():
            found = [path]
        elif path.is_dir():
            found = sorted(metrics.parent for metrics in path.rglob(METRICS_FILE))
        else:
            raise SystemExit(f"{path}: no such folder")
        if not found:
            raise SystemExit(f"{path}: no runs found (no {METRICS_FILE} in it or below it)")
        folders.update((folder.resolve(), None) for folder in found)
    runs = [load_run(folder) for folder in folders]
    return sorted(runs, key=lambda run: (run.env_id, run.seed is None, run.seed or 0,
                                         str(run.path)))


def group_by_env(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """env id -> its runs, in the order the env ids first appear."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.env_id, []).append(run)
    return groups


# ----------------------------------------------------------------------------- aggregation

@dataclass(frozen=True)
class Band:
    """The seeds' curves on a common grid: mean, and the spread's lower and upper edges."""

    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    seeds: int


def interpolate(curves: Sequence[Curve], axis: str, grid: np.ndarray) -> np.ndarray:
    """(seeds, len(grid)): each curve linearly interpolated onto ``grid``."""
    return np.stack([np.interp(grid, curve.along(axis), curve.values) for curve in curves])


def common_grid(curves: Sequence[Curve], axis: str) -> np.ndarray:
    """The grid the mean is taken on: the range every curve covers, and in it the union of
    the curves' steps (``axis="steps"``) or an even grid (``axis="seconds"``)."""
    start = max(float(curve.along(axis)[0]) for curve in curves)
    end = min(float(curve.along(axis)[-1]) for curve in curves)
    if end <= start:  # a one-point curve, or curves that do not overlap
        return np.array([end])
    if axis == "steps":
        union = np.unique(np.concatenate([curve.steps for curve in curves]))
        return union[(union >= start) & (union <= end)]
    return np.linspace(start, end, WALL_CLOCK_POINTS)


def aggregate(curves: Sequence[Curve], axis: str, spread: Spread = "minmax") -> Band:
    """Mean and spread of ``curves`` on their :func:`common_grid` along ``axis``."""
    grid = common_grid(curves, axis)
    values = interpolate(curves, axis, grid)
    mean = values.mean(axis=0)
    if spread == "std":
        std = values.std(axis=0)
        low, high = mean - std, mean + std
    else:
        low, high = values.min(axis=0), values.max(axis=0)
    return Band(grid, mean, low, high, len(curves))


# ----------------------------------------------------------------------------- plotting

AXES: tuple[tuple[str, str], ...] = (("steps", "environment steps"),
                                     ("seconds", "wall-clock time (s)"))


def plot_runs(runs: Sequence[Run], output: str | Path, metric: str = DEFAULT_METRIC,
              title: str | None = None, spread: Spread = "minmax") -> Path:
    """Draws one row per env (metric vs steps, metric vs wall-clock) into ``output`` (a PNG,
    or any format matplotlib knows by the suffix); returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    if not runs:
        raise SystemExit("no runs to plot")
    groups = group_by_env(runs)
    curves = {env: [run.curve(metric) for run in env_runs] for env, env_runs in groups.items()}
    figure, axes = plt.subplots(len(groups), 2, squeeze=False, layout="constrained",
                                figsize=(ROW_SIZE[0], ROW_SIZE[1] * len(groups)), dpi=DPI)
    for row, (env, env_curves) in zip(axes, curves.items()):
        for panel, (axis, label) in zip(row, AXES):
            _draw(panel, env_curves, axis, spread)
            panel.set_title(env, fontsize="medium")
            panel.set_xlabel(label)
            panel.set_ylabel(metric)
            if axis == "steps":
                panel.xaxis.set_major_formatter(EngFormatter(sep=""))  # 100k, 1M
            panel.grid(alpha=0.3)
        row[0].legend(fontsize="small", loc="best")
    if title:
        figure.suptitle(title)
    output = Path(output)
    if output.is_dir():
        plt.close(figure)
        raise SystemExit(f"{output}: is a folder; name the plot's file, such as "
                         f"{output / 'curves.png'}")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(output)
    except (OSError, ValueError) as error:  # a folder, a read-only place, an unknown format
        raise SystemExit(f"{output}: cannot write the plot ({first_line(error)})") from None
    finally:
        plt.close(figure)
    return output


def _draw(panel: Any, curves: Sequence[Curve], axis: str, spread: Spread) -> None:
    band = aggregate(curves, axis, spread)
    if band.seeds == 1:
        panel.plot(band.x, band.mean, color="C0", linewidth=1.8, marker=_marker(band.x),
                   label="1 seed")
        return
    for index, curve in enumerate(curves):
        panel.plot(curve.along(axis), curve.values, color="C0", alpha=0.35, linewidth=0.8,
                   marker=_marker(curve.values, "."), label="each seed" if index == 0 else None)
    label = SPREAD_LABELS[spread]
    if len(band.x) == 1:  # no area to shade: an error bar
        panel.errorbar(band.x, band.mean, yerr=[band.mean - band.low, band.high - band.mean],
                       color="C0", alpha=0.5, capsize=4, linestyle="none", label=label)
    else:
        panel.fill_between(band.x, band.low, band.high, color="C0", alpha=0.2, label=label)
    panel.plot(band.x, band.mean, color="C0", linewidth=1.8, marker=_marker(band.x),
               label=f"mean of {band.seeds} seeds")


def _marker(values: np.ndarray, few: str | None = None) -> str | None:
    """A marker where a line alone would hide the points: a single point, or (``few``) a
    few points."""
    return "o" if len(values) == 1 else few if len(values) <= MARKED_POINTS else None


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minerva.plot",
        description="Plot learning curves (mean and spread over seeds, per env) against "
                    "environment steps and wall-clock time.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="a run folder, or a folder searched recursively for run folders")
    parser.add_argument("-o", "--output", default="curves.png",
                        help="image to write (default: %(default)s)")
    parser.add_argument("--metric", default=DEFAULT_METRIC,
                        help="metric to plot (default: %(default)s)")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument("--band", choices=tuple(SPREAD_LABELS), default="minmax",
                        help="the shaded spread: min-max over seeds, or mean +- std "
                             "(default: %(default)s)")
    return parser


def describe(groups: Mapping[str, Sequence[Run]]) -> str:
    return ", ".join(f"{env} ({len(runs)} run{'s' if len(runs) != 1 else ''})"
                     for env, runs in groups.items())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = find_runs(args.runs)
    output = plot_runs(runs, args.output, metric=args.metric, title=args.title,
                       spread=args.band)
    print(f"{output}: {describe(group_by_env(runs))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
