"""One trial: its options sampled, one ``python -m minerva.train`` run per (env, seed) side
by side, their evaluations read as they come and reported to the pruner, and the trial's
objective."""

from __future__ import annotations

import ctypes
import json
import math
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from minerva.config import TrainConfig
from minerva.plot import DEFAULT_METRIC
from minerva.tuning.study import RunSpec, Study

# -P: a source checkout in the working directory cannot shadow the installed minerva
TRAIN_COMMAND: tuple[str, ...] = (sys.executable, "-P", "-m", "minerva.train")
EVAL_METRIC = DEFAULT_METRIC
LAST100_METRIC = "charts/episode_return_last100"
POLL_S = 0.5
STOP_GRACE_S = 60.0  # a run asked to stop finishes its iteration and writes a checkpoint


class TrialFailed(Exception):
    """A trial that could not train: a bad combination of options, a run that exited with an
    error, a non-finite evaluation. Recorded as failed with this message; the study goes on."""


class StudyInterrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP: the running trials were stopped and will be run again when
    the study continues. (A KeyboardInterrupt, so Optuna records the trial as failed and
    raises it again.)"""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def as_flags(name: str, value: Any) -> list[str]:
    """``python -m minerva.train``'s flags that set option ``name`` to ``value``."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + name.replace("_", "-")]
    if value is None:
        return [flag, "none"]
    if isinstance(value, (tuple, list)):
        return [flag, *[str(v) for v in value]]
    return [flag, repr(value) if isinstance(value, float) else str(value)]


def run_command(study: Study, run: RunSpec, sampled: dict[str, Any], out_dir: Path) -> list[str]:
    """The ordinary training command of one run of a trial."""
    command = [*TRAIN_COMMAND, "--algo", study.algo, "--env-id", run.env_id,
               "--seed", str(run.seed), "--out-dir", str(out_dir),
               "--total-steps", str(study.total_steps), "--eval-every", str(study.eval_every),
               "--torch-threads", "1", "--no-progress", "--target-return", "none"]
    for name, value in {**study.fixed, **sampled}.items():
        command += as_flags(name, value)
    return command


# bound here: the child between fork and exec should only make the call
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """In a run's process before it starts: SIGTERM (a clean stop with a checkpoint) when the
    thread that started it dies, so a tuner killed with -9 leaves no run behind."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class RunProcess:
    """One training run of a trial: its process, log, and evaluations read as they come."""

    def __init__(self, spec: RunSpec, command: list[str], out_dir: Path):
        self.spec, self.out_dir = spec, out_dir
        self.evaluations: list[tuple[int, float | None]] = []  # (step, eval return mean)
        self.last100: float | None = None
        self._offset = 0
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = out_dir.with_suffix(".log")
        with open(self.log_path, "w", encoding="utf-8") as log:
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                process_group=0, preexec_fn=_stop_with_parent)  # signals reach it only from us

    def read_metrics(self) -> None:
        """Takes in the complete lines ``metrics.jsonl`` gained since the last call."""
        path = self.out_dir / "metrics.jsonl"
        try:
            with open(path, "rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return
        lines = data.split(b"\n")[:-1]  # the last piece is incomplete (or empty)
        self._offset += sum(len(line) + 1 for line in lines)
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if EVAL_METRIC in event:
                self.evaluations.append((int(event["global_step"]), event[EVAL_METRIC]))
            if event.get(LAST100_METRIC) is not None:
                self.last100 = event[LAST100_METRIC]

    def failure(self) -> str:
        """Why the run failed: the last line of its log (minerva's one-line error)."""
        lines = [line.strip() for line in
                 self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
                 if line.strip()]
        code = self.process.returncode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return f"{self.spec.env_id} seed {self.spec.seed}: {how}: {lines[-1] if lines else ''}"

    def stop(self, at_once: bool = False) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if at_once else signal.SIGTERM)


def _tail_mean(values: Sequence[float], count: int) -> float:
    tail = values[-count:]
    return sum(tail) / len(tail)


class StopFlag:
    """Set by the tuner's signal handler (or an unexpected error in one of its trials): the
    signal's number, and whether it came twice."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.again = False
        self.event = threading.Event()

    def request(self, signum: int) -> None:
        """Stops every running trial (each records itself as interrupted); a second request
        kills their runs at once."""
        if self.signum is not None:
            self.again = True
        else:
            self.signum = signum
        self.event.set()


def run_trial(study: Study, trial, stop: StopFlag) -> float:
    """Samples the trial's options, trains its runs side by side and returns its objective;
    reports the objective so far after each evaluation every run has made, and stops the runs
    when the pruner says so (optuna.TrialPruned) or a run fails (TrialFailed)."""
    import optuna

    sampled = {name: range_.suggest(trial) for name, range_ in study.space.items()}
    for env_id in study.env_ids:
        try:
            TrainConfig(**study.options(env_id, sampled)).validate()
        except ValueError as error:  # a combination no run can train with
            raise TrialFailed(f"{env_id}: {error}") from None
    folder = study.trial_dir(trial.number)
    trial.set_user_attr("folder", str(folder))
    runs: list[RunProcess] = []
    reported = 0  # evaluations every run has made and the pruner has seen
    try:
        for spec in study.runs:
            runs.append(RunProcess(spec, run_command(study, spec, sampled, folder / spec.name),
                                   folder / spec.name))
        while True:
            exited = all(run.process.poll() is not None for run in runs)
            for run in runs:
                run.read_metrics()
            for run in runs:
                if run.process.returncode not in (None, 0) and stop.signum is None:
                    raise TrialFailed(run.failure())
            while all(len(run.evaluations) > reported for run in runs):
                reported += 1
                # the evaluation's nominal step: runs of different rollout sizes evaluate at
                # the first iteration past it, and the pruner compares trials step by step
                step = min(reported * study.eval_every, study.total_steps)
                value = _objective(study, runs, reported)
                trial.report(value, step)
                trial.set_user_attr("last_step", step)
                if trial.should_prune():
                    trial.set_user_attr("runs", _run_results(study, runs, reported))
                    raise optuna.TrialPruned(f"pruned at step {step}: objective {value:.4g}")
            if exited and all(run.process.returncode == 0 for run in runs):
                break  # finished: a signal now need not throw the trial away
            if stop.signum is not None:
                raise StudyInterrupted(stop.signum)
            stop.event.wait(POLL_S)
    except BaseException:
        _stop_runs(runs, stop)
        raise
    counts = sorted({len(run.evaluations) for run in runs})
    if counts != [reported] or reported == 0:
        raise TrialFailed(f"the runs made {' and '.join(map(str, counts))} evaluations, "
                          f"{-(-study.total_steps // study.eval_every)} expected: see {folder}")
    trial.set_user_attr("runs", _run_results(study, runs, reported))
    return _objective(study, runs, reported)


def _objective(study: Study, runs: Sequence[RunProcess], evaluations: int) -> float:
    """The runs' scores combined (:meth:`Study.combine`: their mean, or the worst): each
    run's last ``final_evals`` evaluations (of the first ``evaluations``) averaged, then
    normalised by its env's reference."""
    scores = []
    for run in runs:
        values = [value for _, value in run.evaluations[:evaluations]]
        if any(value is None or not math.isfinite(value) for value in values):
            raise TrialFailed(f"{run.spec.env_id} seed {run.spec.seed}: a non-finite "
                              "evaluation return")
        scores.append(study.score(run.spec.env_id, _tail_mean(values, study.final_evals)))
    return study.combine(scores)


def _run_results(study: Study, runs: Sequence[RunProcess], evaluations: int) -> dict[str, dict]:
    results = {}
    for run in runs:
        values = [value for _, value in run.evaluations[:evaluations]]
        results[run.spec.name] = {
            "env_id": run.spec.env_id, "seed": run.spec.seed,
            "step": run.evaluations[evaluations - 1][0],
            "final": values[-1], "final_mean": _tail_mean(values, study.final_evals),
            "best": max(values), "last100": run.last100}
    return results


def _stop_runs(runs: Sequence[RunProcess], stop: StopFlag) -> None:
    """Asks every run still going to stop (each writes a checkpoint), and waits; kills those
    that take longer than :data:`STOP_GRACE_S` or when a second signal came."""
    for run in runs:
        run.stop()
    deadline = time.monotonic() + STOP_GRACE_S
    for run in runs:
        while run.process.poll() is None:
            if stop.again or time.monotonic() > deadline:
                run.stop(at_once=True)
            try:
                run.process.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                pass
