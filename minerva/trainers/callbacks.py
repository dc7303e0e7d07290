"""What the training loop does between iterations besides training, as small objects the loop
(:meth:`~minerva.trainers.on_policy.OnPolicyTrainer.learn`) calls after each one, in the
manner of Stable-Baselines3's callbacks: :class:`Evaluation` (and the best policy),
:class:`Checkpoints` (the last one, on a schedule), :class:`Stopping` (signals, the ranks'
agreement, the target return) and :class:`Console` (a line now and then)."""

from __future__ import annotations

import math
import shutil
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from minerva import distributed
from minerva.distributed import Ranks
from minerva.errors import TrainingInterrupted
from minerva.run_log import RunLogger
from minerva.stopping import StopOnSignal


class Checkpoints:
    """Writes a trainer's checkpoints (``save``: any object with ``save_checkpoint(path)``)
    and remembers the last one, for the messages of a run that stops: ``<algo>_last.pt``
    after each evaluation, every ``every_s`` seconds (0: only then) and when a signal stops
    training; ``<algo>_best.pt`` when an evaluation beats the best return. Only rank 0
    writes; every rank knows the last step saved."""

    def __init__(self, save: Callable[[Path], None], is_main: bool) -> None:
        self._save, self.is_main = save, is_main
        self.last_path: Path | None = None
        self.last_step: int | None = None
        self.every_s = 0.0
        self._saved_at = -math.inf
        self._discard: Path | None = None
        self._guard: Callable[[], None] = lambda: None

    def start(self, paths: Callable[[str], Path], every_s: float, now: float,
              guard: Callable[[], None] = lambda: None) -> None:
        """A run begins: its checkpoints' paths (``paths("last")``, ``paths("best")``), the
        time cadence, the time now (the cadence counts from it), and ``guard``, called
        before each write (it raises when the run's folder is gone: a checkpoint written
        then would make a new folder where the old one was)."""
        self._paths, self.every_s, self._saved_at = paths, every_s, now
        self._guard = guard

    def loaded(self, path: Path, step: int) -> None:
        """The trainer was restored from ``path`` at ``step``: the last checkpoint so far."""
        self.last_path, self.last_step = Path(path), step

    def discard_after_save(self, folder: Path | None) -> None:
        """Deletes ``folder`` (an overwritten run's files) once the next checkpoint is
        written: until then a kill leaves the old run recoverable."""
        self._discard = folder

    def save_last(self, step: int, now: float) -> None:
        path = self._paths("last")
        if self.is_main:
            self._guard()
            self._save(path)
            if self._discard is not None:
                shutil.rmtree(self._discard, ignore_errors=True)
                self._discard = None
        self.last_path, self.last_step, self._saved_at = path, step, now

    def save_best(self) -> None:
        if self.is_main:
            self._guard()
            self._save(self._paths("best"))

    def on_schedule(self, step: int, now: float) -> None:
        """``<algo>_last.pt`` when ``every_s`` seconds have passed since the last one."""
        if self.is_main and self.every_s and now - self._saved_at >= self.every_s:
            self.save_last(step, now)

    def ensure_saved(self, step: int, now: float) -> None:
        """``<algo>_last.pt`` of ``step`` unless it is already on disk."""
        if self.last_step != step:
            self.save_last(step, now)

    def status(self) -> str:
        """Where the last checkpoint is (for messages when training stops)."""
        if self.last_path is None:
            return "no checkpoint was written"
        if self.is_main and not self.last_path.is_file():
            return f"the last checkpoint (step {self.last_step}) was {self.last_path}, now gone"
        return f"the last checkpoint (step {self.last_step}) is {self.last_path}"


class Evaluation:
    """Evaluates every ``every`` env steps and at the end of the run (``evaluate``: the
    trainer's deterministic evaluation, run on rank 0 only) and keeps the best policy: an
    evaluation whose mean return beats ``best_return`` is given to ``new_best`` (which
    saves it)."""

    def __init__(self, evaluate: Callable[[], dict[str, float]], every: int, global_step: int,
                 best_return: float, new_best: Callable[[float], None], is_main: bool,
                 next_step: int | None = None) -> None:
        self.evaluate, self.every, self.is_main = evaluate, every, is_main
        self.best_return, self.new_best = best_return, new_best
        # (a checkpoint's next_step: a run stopped where it was to evaluate has it due now)
        self.next_step = (global_step // every + 1) * every if next_step is None else next_step
        self.last: dict[str, float] = {}

    def due(self, global_step: int, finished: bool) -> bool:
        """Whether to evaluate now; if so, the next evaluation's step moves past this one."""
        if global_step < self.next_step and not finished:
            return False
        while self.next_step <= global_step:
            self.next_step += self.every
        return True

    def __call__(self) -> dict[str, float]:
        """The evaluation's metrics (rank 0; other ranks: none)."""
        if not self.is_main:
            return {}
        self.last = self.evaluate()
        if self.last["eval/return_mean"] > self.best_return:
            self.best_return = self.last["eval/return_mean"]
            self.new_best(self.best_return)
        return self.last


class Stopping:
    """When training stops before its budget: on SIGINT, SIGTERM or SIGHUP once the
    iteration under way is complete (:class:`~minerva.stopping.StopOnSignal`), agreed by
    every rank so that they stop at the same iteration; and when rank 0's evaluation reaches
    ``target_return``. ``with stopping:`` installs the signal handlers."""

    def __init__(self, ranks: Ranks, device: torch.device, target_return: float | None) -> None:
        self.ranks, self.device, self.target_return = ranks, device, target_return
        self.signals = StopOnSignal(
            lambda name: f"minerva: {name}: stopping after this iteration, with a checkpoint "
                         "(send it again to stop at once without one)" if ranks.is_main else "")

    def __enter__(self) -> "Stopping":
        self.signals.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.signals.__exit__(*exc_info)

    @property
    def requested(self) -> int | None:
        """The signal that asked this rank to stop (None: none)."""
        return self.signals.requested

    def by_signal(self, finished: bool) -> bool:
        """Whether any rank was asked to stop and the run has steps left: every rank then
        stops at this iteration (without evaluating: the checkpoint it writes holds it)."""
        flag = self.signals.requested is not None
        if self.ranks.distributed:
            flag = distributed.any_rank(flag, self.device)
        if flag and not finished:
            self.signals.requested = self.signals.requested or signal.SIGTERM  # another rank's
            return True
        return False

    def at_target(self, evaluation: Mapping[str, float]) -> bool:
        """Whether rank 0's ``evaluation`` reached ``target_return`` (every rank agrees)."""
        reached = self.target_return is not None and bool(evaluation) and (
            evaluation["eval/return_mean"] >= self.target_return)
        if self.ranks.distributed:
            reached = distributed.from_main(reached, self.device)
        return reached

    def interrupted(self, step: int, checkpoints: Checkpoints) -> TrainingInterrupted:
        """The error that ends a run stopped by a signal at ``step`` (printed by rank 0), its
        checkpoint named."""
        error = TrainingInterrupted(
            self.signals.requested, f"stopped at step {step} after a complete iteration; "
                                    f"{checkpoints.status()}")
        if self.ranks.is_main:
            print(f"minerva: {error}", file=sys.stderr, flush=True)
        return error


class Console:
    """A line of the run's progress: after each evaluation, and otherwise at most every
    ``interval_s`` seconds. ``line`` formats the metrics."""

    def __init__(self, logger: RunLogger, line: Callable[[Mapping[str, float]], str],
                 interval_s: float = 10.0) -> None:
        self.logger, self.line, self.interval_s = logger, line, interval_s
        self._printed_at = -math.inf

    def print(self, metrics: Mapping[str, float]) -> None:
        self.logger.print(self.line(metrics))
        self._printed_at = self.logger.elapsed

    def now_and_then(self, metrics: Mapping[str, float]) -> None:
        if self.logger.elapsed - self._printed_at > self.interval_s:
            self.print(metrics)
