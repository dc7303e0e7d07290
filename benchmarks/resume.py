"""How a resumed run differs from an uninterrupted one.

    python benchmarks/resume.py --env-id Pendulum-v1 --total-steps 200000 --stop-at 100000 \\
        --seeds 11 12 13 --eval-every 10000

For each seed, side by side (``--jobs`` at once, one torch thread each): an uninterrupted
run of ``--total-steps``, and a run of ``--stop-at`` steps resumed from its ``vmpo_last.pt``
(into a folder of its own) to ``--total-steps``. Everything is launched through
``python -m minerva.train``, as a user would.

The summary (``OUT/summary.md``, ``OUT/summary.json``) gives per seed: up to which step the
two runs logged identical metrics (they must, up to the checkpoint), how far apart their
temperature is at the first update after it (where the resumed run's envs start new
episodes), and both runs' evaluation return after the checkpoint (mean over evaluations),
final evaluation return and mean of the last 100 training episodes; then the means over
seeds and the seeds' spread, for scale.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from learning import LAST100_METRIC, Job, report_failures, run_all

RESULTS = Path(__file__).resolve().parent / "results"
# what differs between two identical runs: timings
VOLATILE_PREFIXES = ("time/", "charts/steps_per_second")


def _command(*args: str) -> tuple[str, ...]:
    # -P: a source checkout in the working directory cannot shadow the installed minerva
    return (sys.executable, "-P", "-m", "minerva.train", "--torch-threads", "1",
            "--no-progress", *args)


def plan(env_id: str, seeds: Sequence[int], total_steps: int, stop_at: int, eval_every: int,
         out: Path) -> tuple[list[Job], list[Job]]:
    """The first wave (uninterrupted runs and the runs to be stopped) and the second (the
    resumed runs)."""
    first, resumed = [], []
    for seed in seeds:
        common = ("--env-id", env_id, "--seed", str(seed), "--target-return", "none",
                  "--eval-every", str(eval_every))
        full, stopped, resumed_dir = (out / f"seed{seed}-{kind}"
                                      for kind in ("uninterrupted", "stopped", "resumed"))
        first.append(Job(env_id, seed, full, _command(
            *common, "--total-steps", str(total_steps), "--out-dir", str(full))))
        first.append(Job(env_id, seed, stopped, _command(
            *common, "--total-steps", str(stop_at), "--out-dir", str(stopped))))
        resumed.append(Job(env_id, seed, resumed_dir, _command(
            "--resume", str(stopped / "vmpo_last.pt"), "--total-steps", str(total_steps),
            "--out-dir", str(resumed_dir))))
    return first, resumed


def _events(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _stable(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items()
            if k != "time/elapsed_s" and not k.startswith(VOLATILE_PREFIXES)}


def compare_seed(out: Path, seed: int) -> dict[str, Any]:
    """One seed's uninterrupted run against its stopped-and-resumed one."""
    full = _events(out / f"seed{seed}-uninterrupted")
    stopped = _events(out / f"seed{seed}-stopped")
    resumed = _events(out / f"seed{seed}-resumed")
    checkpoint_step = stopped[-1]["global_step"]
    identical_until = 0
    for a, b in zip(full, stopped + resumed):
        if _stable(a) != _stable(b):
            break
        identical_until = a["global_step"]
    updates_after = [(a, b) for a, b in zip(
        (e for e in full if "losses/eta" in e and e["global_step"] > checkpoint_step),
        (e for e in resumed if "losses/eta" in e))]
    first_full, first_resumed = updates_after[0]

    def evaluations(events):
        return [e["eval/return_mean"] for e in events
                if "eval/return_mean" in e and e["global_step"] > checkpoint_step]

    def last100(events):
        return [e[LAST100_METRIC] for e in events if LAST100_METRIC in e][-1]

    return {
        "seed": seed, "checkpoint_step": checkpoint_step, "identical_until": identical_until,
        "first_update_after": {"global_step": first_full["global_step"],
                               "eta_uninterrupted": first_full["losses/eta"],
                               "eta_resumed": first_resumed["losses/eta"]},
        "uninterrupted": {"eval_after_checkpoint": statistics.fmean(evaluations(full)),
                          "final_eval": evaluations(full)[-1], "last100": last100(full)},
        "resumed": {"eval_after_checkpoint": statistics.fmean(evaluations(resumed)),
                    "final_eval": evaluations(resumed)[-1], "last100": last100(resumed)},
    }


def summarize(out: Path, seeds: Sequence[int], env_id: str) -> dict[str, Any]:
    rows = [compare_seed(out, seed) for seed in seeds]
    means = {}
    for run in ("uninterrupted", "resumed"):
        for metric in ("eval_after_checkpoint", "final_eval", "last100"):
            values = [row[run][metric] for row in rows]
            means[f"{run}/{metric}"] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    summary = {"env_id": env_id, "seeds": rows, "over_seeds": means}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    return summary


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"{summary['env_id']}: uninterrupted vs stopped and resumed",
             "",
             "| seed | checkpoint step | identical until | eta at the next update "
             "(uninterrupted / resumed) | eval after the checkpoint | final eval | last 100 |",
             "|---|---|---|---|---|---|---|"]
    for row in summary["seeds"]:
        first, full, resumed = row["first_update_after"], row["uninterrupted"], row["resumed"]
        lines.append(
            f"| {row['seed']} | {row['checkpoint_step']:,} | {row['identical_until']:,} | "
            f"{first['eta_uninterrupted']:.4f} / {first['eta_resumed']:.4f} | "
            f"{full['eval_after_checkpoint']:.1f} / {resumed['eval_after_checkpoint']:.1f} | "
            f"{full['final_eval']:.1f} / {resumed['final_eval']:.1f} | "
            f"{full['last100']:.1f} / {resumed['last100']:.1f} |")
    over = summary["over_seeds"]

    def cell(metric):
        full, resumed = over[f"uninterrupted/{metric}"], over[f"resumed/{metric}"]
        return (f"{full['mean']:.1f} ± {full['std']:.1f} / "
                f"{resumed['mean']:.1f} ± {resumed['std']:.1f}")

    lines.append(f"| mean ± std | | | | {cell('eval_after_checkpoint')} | "
                 f"{cell('final_eval')} | {cell('last100')} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-id", default="Pendulum-v1")
    parser.add_argument("--total-steps", type=int, default=200_000)
    parser.add_argument("--stop-at", type=int, default=100_000,
                        help="steps of the run that is then resumed")
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results folder (default: {RESULTS}/resume-<env>)")
    parser.add_argument("--summarize-only", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.stop_at < args.total_steps:
        raise SystemExit("--stop-at must lie between 0 and --total-steps")
    out = args.out or RESULTS / f"resume-{args.env_id.replace('/', '_')}"
    if not args.summarize_only:
        first, resumed = plan(args.env_id, args.seeds, args.total_steps, args.stop_at,
                              args.eval_every, out)
        for wave in (first, resumed):
            failed = run_all(wave, args.jobs)
            if failed:
                print(report_failures(failed), file=sys.stderr)
                return 1
    print(markdown(summarize(out, args.seeds, args.env_id)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
