"""Learning benchmark: trains seeds x envs with ``python -m minerva.train`` and summarises.

    python benchmarks/learning.py --envs CartPole-v1 Pendulum-v1 --seeds 3 --steps 200000
    python benchmarks/learning.py --summarize-only [--out DIR] [--envs ...]
    python benchmarks/learning.py --compare V-MPO=DIR PPO=DIR [--envs ...]

Seeds 1..K (``--first-seed F``: F..F+K-1) of each env run as separate processes, at most
``--jobs`` at once (default: the number of CPUs), each with ``--torch-threads 1
--no-progress --out-dir OUT/<env>/seed<k>`` and its output in ``OUT/<env>/seed<k>.log``. A
run folder that already exists is replaced, unless ``--continue``: then a run whose last
checkpoint holds its whole budget is kept, one stopped part-way (a session that ended, a
machine that rebooted) resumes from that checkpoint (``--resume``, its log appended), and
only a folder without a checkpoint starts again. Without ``--steps`` each env trains for its
preset's ``total_steps``. Every run trains for its whole budget (``--target-return none``:
seeds that stopped on reaching a preset's target at different steps would leave curves of
different lengths and make "final" mean "when solved"). ``--extra-args`` passes further
flags to every run, after these, so it can override them: e.g. ``"--eval-every 2000"`` for
more points on short curves.

The summary, printed as a GitHub-markdown table and saved as ``OUT/summary.md`` and
``OUT/summary.json``, covers every env in ``OUT`` (after training, the envs trained before
as well as these; ``--summarize-only --envs`` limits it), and gives per env: the final
evaluation return (each run's last evaluation) and the best one (each run's highest), and
CleanRL's metric, the mean return of the run's last 100 training episodes (fewer early in a
run), each as mean +- sample std over seeds; the environment steps, wall-clock seconds and
steps/s (the run's last ``charts/steps_per_second``) per run, averaged over seeds; the
machine (from the runs' ``run.json``); and per run, for the envs of ``REACH_RETURNS``, the
env steps and wall-clock of its first evaluation at or above each of those returns.
``OUT/curves.png`` plots all envs' learning curves (:mod:`minerva.plot`).

``--compare LABEL=DIR ...`` prints the summaries already written in those folders side by
side, per env and per seed (the seeds every folder has), e.g. two algorithms on the same
seeds, and each folder's median time to those returns. A label given twice gathers both
folders' envs (runs of some envs made apart from the others').
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minerva.config import DUAL_RANGE
from minerva.plot import DEFAULT_METRIC, Curve, Run, find_runs, group_by_env, plot_runs

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "learning"
SETTINGS_FILE = "benchmark.json"  # per env folder: how its runs were launched
LOG_TAIL_LINES = 15
# CleanRL's metric: the mean return of the last 100 training episodes, at the end of a run
LAST100_METRIC = "charts/episode_return_last100"
ALGORITHM_NAMES = {"vmpo": "V-MPO", "ppo": "PPO"}
# returns whose first reaching (by the evaluation return) each run's summary records, in env
# steps and wall-clock seconds: speed of learning, for --compare
REACH_RETURNS = {"HalfCheetah-v5": (1500.0, 4000.0), "Hopper-v5": (1000.0, 2000.0),
                 "Walker2d-v5": (1000.0, 3000.0), "Ant-v5": (1000.0, 2500.0),
                 "Humanoid-v5": (500.0, 1000.0), "Pendulum-v1": (-500.0, -300.0),
                 "CartPole-v1": (200.0, 475.0)}


@dataclass(frozen=True)
class Job:
    env_id: str
    seed: int
    out_dir: Path
    command: tuple[str, ...]
    steps: int | None = None  # the budget asked for (None: the preset's, saved in the run)

    @property
    def log(self) -> Path:
        return self.out_dir.with_suffix(".log")

    @property
    def name(self) -> str:
        return f"{self.env_id} seed {self.seed}"


def env_folder(out: Path, env_id: str) -> Path:
    return out / env_id.replace("/", "_")


def plan(envs: Sequence[str], seeds: int, out: Path, steps: int | None = None,
         extra_args: Sequence[str] = (), first_seed: int = 1) -> list[Job]:
    """One job per (env, seed), seeds ``first_seed`` .. ``first_seed + seeds - 1``, every
    env's first seed before any env's second."""
    jobs = []
    # seed-major: a sweep stopped part-way has every env's first seeds
    for seed in range(first_seed, first_seed + seeds):
        for env_id in envs:
            run_dir = env_folder(out, env_id) / f"seed{seed}"
            # -P: the working directory stays off sys.path, so a source checkout there (with
            # no compiled modules) cannot shadow the installed minerva
            command = [sys.executable, "-P", "-m", "minerva.train", "--env-id", env_id,
                       "--seed", str(seed), "--out-dir", str(run_dir), "--torch-threads", "1",
                       "--no-progress", "--target-return", "none"]
            if steps is not None:
                command += ["--total-steps", str(steps)]
            jobs.append(Job(env_id, seed, run_dir, (*command, *extra_args), steps))
    return jobs


def last_checkpoint(run_dir: Path) -> tuple[Path, int, int] | None:
    """A run folder's last checkpoint, its step and its run's budget (None: there is none,
    or it cannot be read)."""
    from minerva import checkpoint

    for path in sorted(run_dir.glob("*_last.pt")):
        try:
            state = checkpoint.load(path)
            return path, int(state["global_step"]), int(state["config"]["total_steps"])
        except (OSError, checkpoint.CheckpointError, KeyError, TypeError, ValueError):
            return None
    return None


def run_job(job: Job, carry_on: bool = False) -> tuple[int, float, str]:
    """Runs one training process (output into its log); returns (exit code, seconds, what
    was done). ``carry_on``: keep a finished run, resume an unfinished one (see above)."""
    command, mode, done = job.command, "w", "trained"
    saved = last_checkpoint(job.out_dir) if carry_on and job.out_dir.is_dir() else None
    if saved is not None:
        path, step, budget = saved
        if step >= (job.steps or budget):
            return 0, 0.0, f"kept (finished at step {step})"
        command, mode, done = (*command, "--resume", str(path)), "a", f"resumed at step {step}"
    elif job.out_dir.exists():
        shutil.rmtree(job.out_dir)  # metrics.jsonl appends: a stale one would mix runs
    job.out_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(job.log, mode, encoding="utf-8") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                              check=False).returncode
    return code, time.perf_counter() - start, done


def run_all(jobs: Sequence[Job], parallel: int, carry_on: bool = False) -> list[Job]:
    """Runs ``jobs``, at most ``parallel`` at once, reporting each to stderr as it ends;
    returns the failed ones."""
    failed = []
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(run_job, job, carry_on): job for job in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            job = futures[future]
            code, seconds, what = future.result()
            status = f"ok ({what})" if code == 0 else f"FAILED (exit code {code}; {what})"
            print(f"[{done}/{len(jobs)}] {job.name}: {status} in {seconds:.0f} s -> {job.log}",
                  file=sys.stderr, flush=True)
            if code != 0:
                failed.append(job)
    return failed


def report_failures(failed: Sequence[Job]) -> str:
    lines = [f"{len(failed)} run(s) failed:"]
    for job in failed:
        tail = job.log.read_text(encoding="utf-8", errors="replace").splitlines()
        lines += [f"--- {job.name} ({job.log}), last lines:", *tail[-LOG_TAIL_LINES:]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- summary

def _mean_std(values: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def reached(curve: Curve, threshold: float) -> dict[str, float] | None:
    """The env steps and wall-clock seconds of the first evaluation at or above
    ``threshold`` (None when none is)."""
    hits = np.flatnonzero(curve.values >= threshold)
    if not hits.size:
        return None
    return {"steps": float(curve.steps[hits[0]]), "seconds": float(curve.seconds[hits[0]])}


# a run has collapsed when its final evaluation is below this share of its best
COLLAPSE_SHARE = 0.8
DUALS = ("losses/eta", "losses/alpha_mean", "losses/alpha_std", "losses/alpha")
# a multiplier within this factor of DUAL_RANGE's floor puts no force on its constraint
# (1e-7 times a KL of 0.1): its bound does not bind
NEAR_FLOOR = 10.0


def _values(run: Run, metric: str) -> np.ndarray:
    """The run's finite values of ``metric``, a resumed run's repeated steps once
    (:meth:`~minerva.plot.Run.series`; none: an empty array)."""
    series = run.series(metric)
    return np.empty(0) if series is None else series.values


def health(run: Run) -> dict[str, Any]:
    """How a V-MPO run's update behaved: the policy's std at the start and the end, the
    shares of updates with a dual at its cap (the upper end of ``DUAL_RANGE``) and with one
    near its floor (within :data:`NEAR_FLOOR` of the lower end), and the policy's gradient
    norm over its clip (the median over the run). None where the run did not log the
    quantity."""
    config = run.info.get("config", {})
    std = _values(run, "charts/policy_std")
    duals = [values for metric in DUALS if (values := _values(run, metric)).size]
    capped = floored = None
    if duals:
        rows = min(len(values) for values in duals)
        per_update = np.stack([values[:rows] for values in duals])  # [dual, update]
        capped = float((per_update >= 0.99 * DUAL_RANGE[1]).any(axis=0).mean())
        floored = float((per_update <= NEAR_FLOOR * DUAL_RANGE[0]).any(axis=0).mean())
    grad_norm, clip = _values(run, "losses/policy_grad_norm"), config.get("max_grad_norm")
    return {"policy_std_first": float(std[0]) if std.size else None,
            "policy_std_last": float(std[-1]) if std.size else None,
            "dual_at_cap_share": capped,
            "dual_near_floor_share": floored,
            "grad_norm_over_clip": (float(np.median(grad_norm) / clip)
                                    if grad_norm.size and clip else None)}


def _run_summary(run: Run, out: Path) -> dict[str, Any]:
    curve = run.curve(DEFAULT_METRIC)
    returns = curve.values
    path = run.path.resolve()
    return {"seed": run.seed,
            "path": str(path.relative_to(out.resolve()) if path.is_relative_to(out.resolve())
                        else path.name),
            "final_return": float(returns[-1]), "best_return": float(returns.max()),
            "collapsed": bool(returns[-1] < COLLAPSE_SHARE * returns.max()
                              and returns.max() > 0),
            "health": health(run),
            "last100_train_return": run.last(LAST100_METRIC),
            "env_steps": run.final_step, "wall_clock_s": run.wall_clock_s,
            "steps_per_second": run.last("charts/steps_per_second"),
            "reached": {f"{threshold:g}": reached(curve, threshold)
                        for threshold in REACH_RETURNS.get(run.env_id, ())}}


def _machine(runs: Sequence[Run]) -> dict[str, Any]:
    machines = {json.dumps(run.info.get("machine", {}), sort_keys=True) for run in runs}
    return json.loads(machines.pop()) if len(machines) == 1 else {"mixed": sorted(machines)}


def find_benchmark_runs(out: Path, envs: Sequence[str] | None = None) -> list[Run]:
    """The runs under ``out`` (only those of ``envs`` when given); SystemExit when none."""
    return find_runs([env_folder(out, env) for env in envs] if envs else [out])


def summarize(runs: Sequence[Run], out: Path) -> dict[str, Any]:
    """Per env: final and best evaluation return and the last-100-training-episode return
    (mean and sample std over seeds), env steps, wall-clock and steps/s per run (means), the
    machine, how the runs were launched (when this script launched them), and each run's
    numbers, with paths relative to ``out``.
    Raises SystemExit naming a run that has no evaluation."""
    out = Path(out)
    summary: dict[str, Any] = {"metric": DEFAULT_METRIC, "envs": {}}
    for env_id, env_runs in group_by_env(runs).items():
        per_run = [_run_summary(run, out) for run in env_runs]
        rates = [r["steps_per_second"] for r in per_run if r["steps_per_second"] is not None]
        settings_file = env_runs[0].path.parent / SETTINGS_FILE
        summary["envs"][env_id] = {
            "seeds": len(per_run),
            "final_return": _mean_std([r["final_return"] for r in per_run]),
            "best_return": _mean_std([r["best_return"] for r in per_run]),
            "last100_train_return": (
                _mean_std([r["last100_train_return"] for r in per_run])
                if all(r["last100_train_return"] is not None for r in per_run) else None),
            "env_steps_per_run": statistics.fmean(r["env_steps"] for r in per_run),
            "env_steps_total": sum(r["env_steps"] for r in per_run),
            "wall_clock_s_per_run": statistics.fmean(r["wall_clock_s"] for r in per_run),
            "steps_per_second": statistics.fmean(rates) if rates else None,
            "eval_episodes": env_runs[0].info.get("config", {}).get("eval_episodes"),
            "machine": _machine(env_runs),
            "launch": (json.loads(settings_file.read_text(encoding="utf-8"))
                       if settings_file.is_file() else None),
            "runs": per_run,
        }
    return summary


def _machine_text(env: dict[str, Any]) -> str:
    machine = env["machine"]
    if "mixed" in machine:
        return "mixed"
    text = f"{machine.get('processor', '?')}, {machine.get('cpus', '?')} CPUs"
    if env["launch"]:
        runs = env["launch"]["parallel_runs"]
        text += ", one run at a time" if runs == 1 else f", {runs} runs at once"
    return text


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a GitHub-markdown table with a note under it."""
    lines = [("| env | seeds | final eval return | best eval return | last 100 training "
              "episodes | env steps / run | wall-clock / run | steps/s | machine |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for env_id, env in summary["envs"].items():
        final, best, recent = env["final_return"], env["best_return"], env.get(
            "last100_train_return")
        rate = f"{env['steps_per_second']:,.0f}" if env["steps_per_second"] else "–"
        recent_text = f"{recent['mean']:.1f} ± {recent['std']:.1f}" if recent else "–"
        lines.append(
            f"| {env_id} | {env['seeds']} | {final['mean']:.1f} ± {final['std']:.1f} "
            f"| {best['mean']:.1f} ± {best['std']:.1f} | {recent_text} "
            f"| {env['env_steps_per_run']:,.0f} "
            f"| {env['wall_clock_s_per_run']:,.1f} s | {rate} | {_machine_text(env)} |")
    episodes = {env["eval_episodes"] for env in summary["envs"].values()}
    note = ("Final: each run's last evaluation; best: each run's highest; both the mean ± "
            f"sample std over seeds of `{summary['metric']}` (the mean return of "
            f"{'/'.join(str(e) for e in sorted(episodes, key=str))} deterministic evaluation "
            "episodes). Last 100 training episodes: CleanRL's metric, the mean return of each "
            f"run's last 100 training episodes (`{LAST100_METRIC}` at its end), mean ± sample "
            "std over seeds. "
            "Env steps, wall-clock and steps/s (a run's last `charts/steps_per_second`) are "
            "means over seeds; wall-clock is the training time logged in `metrics.jsonl` "
            "(without the process start-up); each run used one torch thread.")
    lines += ["", note, "", *health_table(summary)]
    return "\n".join(lines)


def _mean_of(runs: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [run["health"][key] for run in runs if run["health"][key] is not None]
    return statistics.fmean(values) if values else None


def health_table(summary: dict[str, Any]) -> list[str]:
    """Per env: the seeds whose final evaluation fell below ``COLLAPSE_SHARE`` of their best,
    and how the update behaved (:func:`health`), as markdown lines."""
    def text(value: float | None, form: str) -> str:
        return "–" if value is None else format(value, form)

    lines = [f"| env | collapsed (final < {COLLAPSE_SHARE:g} × best) | worst final / best "
             "| policy std, first → last | updates with a dual at its cap / near its floor "
             "| policy gradient norm / clip (median) |",
             "|---|---:|---:|---:|---:|---:|"]
    for env_id, env in summary["envs"].items():
        runs = env["runs"]
        shares = [run["final_return"] / run["best_return"] for run in runs
                  if run["best_return"] > 0]
        ratios = [run["health"]["grad_norm_over_clip"] for run in runs
                  if run["health"]["grad_norm_over_clip"] is not None]
        capped = _mean_of(runs, "dual_at_cap_share")
        floored = _mean_of(runs, "dual_near_floor_share")
        lines.append(
            f"| {env_id} | {sum(run['collapsed'] for run in runs)}/{len(runs)} "
            f"| {text(min(shares) if shares else None, '.2f')} "
            f"| {text(_mean_of(runs, 'policy_std_first'), '.3f')} → "
            f"{text(_mean_of(runs, 'policy_std_last'), '.3f')} "
            f"| {text(capped, '.0%')} / {text(floored, '.0%')} "
            f"| {text(statistics.median(ratios) if ratios else None, '.2f')} |")
    return lines


def unfinished(run: Run) -> bool:
    """Whether ``run`` stopped short of its budget (this script's runs never stop at a target
    return; a run that may have cannot be told from one cut short, so it counts as
    finished)."""
    config = run.info.get("config", {})
    total = config.get("total_steps")
    return (config.get("target_return") is None and total is not None
            and run.final_step < total)


def write_summary(out: Path, envs: Sequence[str] | None = None) -> str:
    """Writes ``summary.md``, ``summary.json`` and ``curves.png`` into ``out``; returns the
    markdown. Runs short of their budget (still training, or stopped) are left out and
    named: their last evaluation is not a final one."""
    runs, left_out = [], []
    for run in find_benchmark_runs(out, envs):
        if unfinished(run):
            left_out.append(f"{run.env_id} seed {run.seed} (at step {run.final_step:,} of "
                            f"{run.info['config']['total_steps']:,})")
        else:
            runs.append(run)
    if not runs:
        raise SystemExit(f"no finished run under {out}: {'; '.join(left_out)}")
    summary = summarize(runs, out)
    table = markdown(summary)
    if left_out:
        summary["unfinished"] = left_out
        table += "\n\nLeft out, not finished: " + "; ".join(left_out) + "."
    (out / "summary.md").write_text(table + "\n", encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    algorithms = sorted({run.info.get("config", {}).get("algo", "vmpo") for run in runs})
    names = " and ".join(ALGORITHM_NAMES.get(algo, algo) for algo in algorithms)
    plot_runs(runs, out / "curves.png", title=f"minerva {names}: evaluation return")
    return table


def merged_summary(folders: Sequence[Path]) -> dict[str, Any]:
    """The ``summary.json`` of each folder as one: their envs together, so that one label can
    gather runs made apart (each env from one folder only: two would mix two sets of runs)."""
    merged: dict[str, Any] = {"envs": {}}
    origin: dict[str, Path] = {}
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        for env, entry in summary["envs"].items():
            if env in origin:
                raise ValueError(f"{env} is in both {origin[env]} and {folder}: give each env "
                                 "from one folder")
            origin[env] = folder
            merged["envs"][env] = entry
    return merged


def compare(folders: dict[str, Sequence[Path]], envs: Sequence[str] | None = None) -> str:
    """The summaries of each label's folders (:func:`merged_summary`) side by side: per env,
    each label's final, best and last-100 returns (mean ± std over the seeds all labels have),
    then per seed, then the wall-clock and env steps to the env's :data:`REACH_RETURNS`
    (:func:`_reach_rows`)."""
    summaries = {label: merged_summary(paths) for label, paths in folders.items()}
    shared_envs = [env for env in next(iter(summaries.values()))["envs"]
                   if all(env in s["envs"] for s in summaries.values())
                   and (not envs or env in envs)]
    lines = ["| env | seeds | " + " | ".join(
        f"{label} final | {label} best | {label} last 100" for label in summaries) + " |",
        "|---|---|" + "---:|" * (3 * len(summaries))]
    seed_lines = ["| env | seed | " + " | ".join(
        f"{label} final | {label} last 100" for label in summaries) + " |",
        "|---|---:|" + "---:|" * (2 * len(summaries))]
    reach_lines = ["| env | evaluation return | " + " | ".join(
        f"{label} median time (steps) to it | {label} seeds reaching it" for label in summaries)
        + " |", "|---|---:|" + "---:|" * (2 * len(summaries))]
    for env in shared_envs:
        by_label = {label: {run["seed"]: run for run in s["envs"][env]["runs"]}
                    for label, s in summaries.items()}
        seeds = sorted(set.intersection(*(set(runs) for runs in by_label.values())))
        if not seeds:
            continue
        cells = []
        for runs in by_label.values():
            for key in ("final_return", "best_return", "last100_train_return"):
                values = [runs[seed][key] for seed in seeds if runs[seed][key] is not None]
                stats = _mean_std(values) if values else None
                cells.append(f"{stats['mean']:.0f} ± {stats['std']:.0f}" if stats else "–")
        lines.append(f"| {env} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
        for seed in seeds:
            seed_cells = [f"{runs[seed]['final_return']:.0f} | "
                          + (f"{runs[seed]['last100_train_return']:.0f}"
                             if runs[seed]["last100_train_return"] is not None else "–")
                          for runs in by_label.values()]
            seed_lines.append(f"| {env} | {seed} | " + " | ".join(seed_cells) + " |")
        reach_lines += _reach_rows(env, seeds, by_label)
    return "\n".join(lines + [""] + seed_lines + ([""] + reach_lines if len(reach_lines) > 2
                                                  else []))


def _reach_rows(env: str, seeds: Sequence[int],
                by_label: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    """Per return in every label's runs' ``reached``: each label's median wall-clock and env
    steps to it over ``seeds`` (the lower median, a seed that never reached it counting as
    slower than all that did: the time by which half the seeds had reached it, "not reached"
    when fewer than half did) and how many seeds reached it."""
    thresholds = set.intersection(*(set(runs[seed].get("reached", {})) for runs in
                                    by_label.values() for seed in seeds))
    rows = []
    for threshold in sorted(thresholds, key=float):
        cells = []
        for runs in by_label.values():
            hits = [runs[seed]["reached"][threshold] for seed in seeds]
            done = sorted((hit for hit in hits if hit is not None), key=lambda h: h["seconds"])
            middle = (len(hits) - 1) // 2
            cells.append(f"{done[middle]['seconds']:,.0f} s ({done[middle]['steps']:,.0f}) "
                         f"| {len(done)}/{len(hits)}" if middle < len(done)
                         else f"not reached | {len(done)}/{len(hits)}")
        rows.append(f"| {env} | {threshold} | " + " | ".join(cells) + " |")
    return rows


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train seeds x envs with python -m minerva.train, then summarise them "
                    "(markdown table, JSON, learning curves).")
    parser.add_argument("--envs", nargs="+", metavar="ENV_ID",
                        help="env ids to train (required unless --summarize-only, where it "
                             "limits the summary to these envs; after training the summary "
                             "covers every env in --out)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="how many seeds (default: %(default)s)")
    parser.add_argument("--first-seed", type=int, default=1,
                        help="the first seed; runs use first..first+K-1 (default: %(default)s), "
                             "so that a confirmation can avoid the seeds a configuration was "
                             "tuned on")
    parser.add_argument("--steps", type=int, default=None,
                        help="environment steps per run (default: each env's preset)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output folder (default: benchmarks/results/learning)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="runs at once (default: the number of CPUs, %(default)s)")
    parser.add_argument("--extra-args", default="",
                        help='further flags for every run, e.g. "--num-envs 16"')
    parser.add_argument("--continue", dest="carry_on", action="store_true",
                        help="keep the runs already finished in --out and resume the ones "
                             "stopped part-way from their last checkpoint, instead of "
                             "replacing them")
    parser.add_argument("--summarize-only", action="store_true",
                        help="summarise the runs already in --out without training")
    parser.add_argument("--compare", nargs="+", metavar="LABEL=DIR",
                        help="print the summaries already in these folders side by side; a "
                             "label given twice gathers both folders' envs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare:
        folders: dict[str, list[Path]] = {}
        for item in args.compare:
            label, _, folder = item.partition("=")
            if not folder or not (Path(folder) / "summary.json").is_file():
                parser.error(f"--compare: {item!r} is not LABEL=DIR with a summary.json in DIR")
            folders.setdefault(label, []).append(Path(folder))
        try:
            print(compare(folders, args.envs))
        except ValueError as error:
            parser.error(f"--compare: {error}")
        return 0
    if not args.summarize_only:
        if not args.envs:
            parser.error("--envs is required unless --summarize-only")
        for name in ("seeds", "jobs", "steps"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                parser.error(f"--{name} must be a positive integer")
        if args.first_seed < 0:
            parser.error("--first-seed must be >= 0")
        jobs = plan(args.envs, args.seeds, args.out, args.steps, shlex.split(args.extra_args),
                    args.first_seed)
        parallel = min(args.jobs, len(jobs))
        for env_id in args.envs:
            folder = env_folder(args.out, env_id)
            folder.mkdir(parents=True, exist_ok=True)
            settings = {"seeds": args.seeds, "first_seed": args.first_seed,
                        "steps": args.steps, "parallel_runs": parallel,
                        "extra_args": args.extra_args}
            (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        print(f"training {len(jobs)} runs ({len(args.envs)} env(s) x {args.seeds} seed(s)), "
              f"{parallel} at once, into {args.out}", file=sys.stderr, flush=True)
        failed = run_all(jobs, parallel, args.carry_on)
        if failed:
            print(report_failures(failed), file=sys.stderr)
            return 1
    # the folder's summary: an env trained on its own (one seed finished later) keeps the others
    print(write_summary(args.out, args.envs if args.summarize_only else None))
    print(f"\nwrote {args.out / 'summary.md'}, summary.json and curves.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
