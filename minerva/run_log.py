"""Run outputs: ``metrics.jsonl`` (one JSON object per log event), TensorBoard scalars with
the same names (and Weights & Biases, when asked for), and the console's progress bar and
metric lines."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from minerva.errors import OptionError, first_line
from minerva.files import write_file
from minerva.run_folder import open_to_append


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check_wandb(project: str) -> None:
    """Raises OptionError (``wandb_project: ...``) when a project is asked for and wandb is
    not installed."""
    if not project:
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise OptionError("wandb_project", "logging to Weights & Biases needs wandb: pip install "
                         "'minerva[wandb]' (or leave --wandb-project out)") from None


def _start_wandb(project: str, out: Path, config: Mapping, resumed_id: str | None):
    """A W&B run in ``out/wandb`` named after ``out``, keyed by ``global_step``; a resumed
    run continues the run its folder logged to (``resumed_id``)."""
    check_wandb(project)
    import wandb

    try:
        run = wandb.init(project=project, dir=str(out), name=out.name, config=dict(config),
                         id=resumed_id, resume="allow" if resumed_id else None)
    except Exception as error:  # noqa: BLE001  (wandb's own errors: login, network, ...)
        raise RuntimeError(f"wandb_project: wandb could not start a run in project {project!r} "
                           f"({first_line(error)}); log in with `wandb login`, or set "
                           "WANDB_MODE=offline to log without an account") from None
    # the charts' x axis is the environment step: wandb's own step counts calls
    run.define_metric("global_step")
    run.define_metric("*", step_metric="global_step")
    return run


class RunLogger:
    """Writes every event to ``metrics.jsonl`` and TensorBoard (and W&B with
    ``wandb_project``), and shows progress.

    Each event carries ``global_step`` and ``time/elapsed_s`` (wall seconds since the logger
    started, i.e. since training started). A resumed run (``initial_step`` > 0) first drops
    the events an interrupted run logged after its checkpoint, from both files: they are
    logged again as the run repeats those steps (W&B keeps them: a resumed run continues the
    folder's W&B run, whose charts then show those steps twice). Not ``enabled`` (the ranks
    of a distributed run other than 0), it writes and shows nothing.
    """

    def __init__(self, out_dir: str | Path, total_steps: int, initial_step: int = 0,
                 progress: bool = True, tensorboard: bool = True, enabled: bool = True,
                 wandb_project: str = "", config: Mapping | None = None):
        self.out_dir = Path(out_dir)
        self.start = time.perf_counter()
        self.enabled = enabled
        self._console_lost = False
        self._jsonl = self._writer = self._wandb = None
        if not enabled:
            self._bar = tqdm(disable=True)
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        jsonl = self.out_dir / "metrics.jsonl"
        if initial_step > 0 and jsonl.exists():
            kept = [line for line in jsonl.read_text(encoding="utf-8").splitlines(keepends=True)
                    if _event_step(line) <= initial_step]
            write_file(jsonl, "".join(kept))
        self._jsonl = open_to_append(jsonl)
        if wandb_project:
            resumed_id = _run_info(self.out_dir).get("wandb_run_id") if initial_step else None
            self._wandb = _start_wandb(wandb_project, self.out_dir, config or {}, resumed_id)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.out_dir),
                                         purge_step=initial_step + 1 if initial_step else None)
        # disable=None: no bar when the output is not a terminal (CI, log files)
        self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", unit_scale=True,
                         dynamic_ncols=True, disable=None if progress else True,
                         file=sys.stderr, smoothing=0.1)

    def write_run_info(self, info: Mapping) -> None:
        """``run.json``: what ran (config, env, backend, machine), for plots and tables."""
        if not self.enabled:
            return
        info = {**info, "machine": {"platform": platform.platform(),
                                    "processor": cpu_model(), "cpus": os.cpu_count(),
                                    "python": platform.python_version()}}
        if self._wandb is not None:
            info["wandb_run_id"] = self._wandb.id
        write_file(self.out_dir / "run.json", json.dumps(info, indent=2, default=str) + "\n")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def advance(self, global_step: int) -> None:
        self._bar.update(global_step - self._bar.n)

    def log(self, global_step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        event = {"global_step": int(global_step), "time/elapsed_s": round(self.elapsed, 3)}
        event.update({k: float(v) for k, v in metrics.items()})
        if not self.enabled:
            return event
        self._jsonl.write(json.dumps(
            {k: (v if math.isfinite(v) else None) for k, v in event.items()}) + "\n")
        self._jsonl.flush()
        if self._writer is not None:
            for name, value in event.items():
                if name != "global_step":
                    self._writer.add_scalar(name, value, global_step)
        if self._wandb is not None:
            self._wandb.log(event)
        return event

    def print(self, line: str) -> None:
        """A console line, best effort: a console that cannot take it (a closed pipe, a
        terminal gone, an encoding without its characters) never stops training; its
        metrics and checkpoints go on."""
        if not self.enabled or self._console_lost:
            return
        try:
            try:
                self._write_line(line)
            except UnicodeEncodeError:  # shown as the console's encoding can
                encoding = getattr(sys.stdout, "encoding", None) or "ascii"
                self._write_line(line.encode(encoding, "backslashreplace").decode(encoding))
        except (OSError, ValueError):  # a broken pipe, EIO, a closed stream
            self._console_lost = True
            _discard(sys.stdout if self._bar.disable else sys.stderr)

    def _write_line(self, line: str) -> None:
        if self._bar.disable:
            print(line, flush=True)
        else:
            self._bar.write(line)

    def close(self) -> None:
        self._bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._writer is not None:
            self._writer.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _discard(stream) -> None:
    """Points ``stream``'s file descriptor at ``os.devnull``, so that what is still buffered
    for it (flushed at exit) goes nowhere instead of failing again."""
    try:
        descriptor = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)


def _run_info(out: Path) -> dict:
    """The folder's ``run.json`` ({} when there is none or it is unreadable)."""
    try:
        return json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _event_step(line: str) -> float:
    """An event's step; infinite (dropped on resume) for a line that is not an event: cut
    by a kill, or damaged."""
    try:
        step = json.loads(line)["global_step"]
    except (ValueError, KeyError, TypeError):
        return math.inf
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else math.inf


class PhaseTimer:
    """Wall time spent in each phase of training (``with timer("env_step"): ...``).

    ``metrics()`` reports the cumulative seconds per phase as ``time/<phase>_s``.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"time/{phase}_s": seconds for phase, seconds in self.seconds.items()}

    def split(self) -> str:
        """``"env_step 41%, inference 30%, ..."``: each phase's share of the timed total."""
        total = sum(self.seconds.values()) or 1.0
        ranked = sorted(self.seconds.items(), key=lambda item: -item[1])
        return ", ".join(f"{phase} {100 * seconds / total:.0f}%" for phase, seconds in ranked)
