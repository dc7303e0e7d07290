"""The on-policy loop every algorithm shares (:class:`OnPolicyTrainer`): environments,
rollout collection into the native storage with GAE, observation and reward normalisers,
evaluation, checkpoints and resume, signals, torchrun and logging.

An algorithm is a subclass naming its update (:class:`~minerva.trainers.update.Update`), which
the loop calls once per rollout: :class:`~minerva.trainers.vmpo.trainer.VMPOTrainer` and
:class:`~minerva.trainers.ppo.trainer.PPOTrainer`.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import math
import random
import signal
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from minerva import checkpoint, distributed, ops, reference
from minerva import logging as run_logging
from minerva.collector import Rollout, RolloutCollector
from minerva.config import ALGORITHMS, TrainConfig
from minerva.env_ids import default_backend, env_spaces, resolve_env_id
from minerva.envs import make_vector_env
from minerva.errors import NonFiniteError, OptionError, TrainingInterrupted
from minerva.evaluation import evaluate_vectorized, record_video
from minerva.logging import PhaseTimer, RunLogger
from minerva.networks import agent_for
from minerva.normalization import RewardScaler
from minerva.rollout import RolloutBatch
from minerva.stopping import StopOnSignal
from minerva.storage import RolloutStorage
from minerva.trainers.checks import (
    check_network_memory,
    check_rollout_memory,
    check_run_outputs,
    check_total_steps,
    is_out_of_memory,
    storage_dtype,
    wider_network,
)
from minerva.trainers.resume import Resumable
from minerva.trainers.update import Update


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``"a=1.0000, b=2.5000"``: keys sorted, values to 4 decimals."""
    return ", ".join(f"{key}={float(value):.4f}" for key, value in sorted(metrics.items()))


def trainer_class_for(algo: str) -> type["OnPolicyTrainer"]:
    """The trainer of ``algo`` (``vmpo``, ``ppo``): the class its package
    ``minerva.trainers.<algo>.trainer`` defines (imported here by name, so the loop does not
    import the algorithms that build on it)."""
    if algo not in ALGORITHMS:
        raise OptionError("algo", f"must be one of {', '.join(ALGORITHMS)}, got {algo!r}")
    importlib.import_module(f"minerva.trainers.{algo}.trainer")
    return OnPolicyTrainer.TRAINERS[algo]


class OnPolicyTrainer(Resumable):
    """The on-policy loop: see the module docstring and
    :class:`~minerva.config.TrainConfig` for what every option means. Each iteration
    collects ``rollout_steps`` steps from ``num_envs`` environments into the native
    :class:`~minerva.RolloutStorage` (:class:`~minerva.collector.RolloutCollector`, which
    computes the values and the GAE advantages with the native ``gae`` kernel and hands the
    batch over on the update's device), runs the algorithm's update on it, updates the
    normalisers, logs, and evaluates and checkpoints on schedule.
    """

    ALGORITHM: ClassVar[str] = ""  # the config's algo this class trains ("": any, dispatched)
    NAME: ClassVar[str] = ""  # for messages
    UPDATE: ClassVar[type[Update]]
    CONSOLE_KEYS: ClassVar[tuple[str, ...]] = (
        "charts/episode_return", "charts/steps_per_second", "losses/value")
    TRAINERS: ClassVar[dict[str, type["OnPolicyTrainer"]]] = {}  # algo -> its trainer

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.ALGORITHM:
            OnPolicyTrainer.TRAINERS[cls.ALGORITHM] = cls

    def __init__(self, config: TrainConfig):
        if not self.ALGORITHM:
            raise TypeError("OnPolicyTrainer is the loop of an algorithm: make a VMPOTrainer "
                            "or a PPOTrainer, or call OnPolicyTrainer.from_config(config)")
        self.config = config.validate()
        if config.algo != self.ALGORITHM:
            raise OptionError("algo", f"{type(self).__name__} trains {self.ALGORITHM}, got "
                             f"{config.algo!r}")
        cfg = self.config
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.device = torch.device(cfg.device)
        # torchrun: this process's rank (one process: rank 0 of 1)
        self.ranks = distributed.init(self.device, cfg.dist_timeout_s)

        try:
            self.env_id = resolve_env_id(cfg.env_id)
        except ValueError as error:
            raise OptionError("env_id", str(error)) from None
        self.backend = default_backend(self.env_id) if cfg.backend == "auto" else cfg.backend
        check_rollout_memory(cfg, *env_spaces(self.env_id))
        check_network_memory(cfg, *env_spaces(self.env_id))
        # pipelined_rollout: on envpool half the envs step while the policy acts on the other
        # half (gymnasium steps in this thread: nothing would overlap, so it is never split)
        # rank r's env i is seeded with seed + r * num_envs + i: no two ranks' envs share one
        self.envs = make_vector_env(
            self.env_id, cfg.num_envs, cfg.seed + self.ranks.rank * cfg.num_envs, self.backend,
            split=cfg.pipelined_rollout and self.backend == "envpool")
        # rank 0 evaluates (and logs, and writes checkpoints)
        self.eval_envs = (make_vector_env(self.env_id, cfg.eval_episodes, cfg.seed + 1000,
                                          self.backend) if self.ranks.is_main else None)

        try:
            self.agent = agent_for(cfg, self.envs.single_observation_space,
                                   self.envs.single_action_space).to(self.device)
        except BaseException as error:
            # no trainer comes back to close the envs made above
            self.envs.close()
            if self.eval_envs is not None:
                self.eval_envs.close()
            if not is_out_of_memory(error):
                raise
            name = wider_network(cfg)
            raise OptionError(name, f"the networks do not fit in the memory left on "
                             f"{self.device} (allocating them failed), got "
                             f"{getattr(cfg, name)}") from None
        # the native ops and storage, or the pure-Python references (to measure the difference)
        self.ops = reference if cfg.reference_ops else ops
        storage_class = reference.RolloutStorage if cfg.reference_ops else RolloutStorage
        action_space = self.envs.single_action_space
        self.storage = storage_class(
            cfg.rollout_steps, cfg.num_envs, self.envs.single_observation_space.shape,
            () if self.agent.discrete else (int(np.prod(action_space.shape)),),
            discrete_actions=self.agent.discrete, dist_params_dim=self.agent.policy.params_dim,
            observation_dtype=storage_dtype(self.envs.single_observation_space),
        )
        self.reward_scaler = RewardScaler(cfg.num_envs, cfg.gamma)
        self._on_gpu = self.device.type == "cuda"
        if self._on_gpu and not cfg.reference_ops and not ops.cuda_kernels_available():
            warnings.warn("minerva: the native ops have no CUDA kernels in this build (was nvcc "
                          "found?); the GPU update uses the pure-torch reference ops",
                          RuntimeWarning, stacklevel=2)
            self.ops = reference

        self.timer = PhaseTimer()
        self._threads = torch.get_num_threads()  # each phase takes what it can use
        # the algorithm: its optimiser and any state of its own; called once per rollout
        self.algorithm = self.UPDATE(self.agent, cfg, self.device, self.ranks, self.ops,
                                     self._threads)
        self.collector = RolloutCollector(
            self.envs, self.storage, self.agent, self.device,
            self.reward_scaler if cfg.normalize_rewards else None, self.ops.gae, cfg.gamma,
            cfg.lam, self.timer, threads=self._threads,
            precision=cfg.precision)
        self.global_step = 0
        self.iteration = 0
        self.best_return = -math.inf
        # the latest checkpoint written or loaded, and its step (for messages when stopping)
        self.last_checkpoint: Path | None = None
        self._last_saved_step: int | None = None
        # CleanRL's metric: the mean return of the last 100 training episodes
        self._recent_returns: collections.deque[float] = collections.deque(
            maxlen=self.RECENT_EPISODES)
        if self.ranks.distributed:  # one agent: rank 0's initial weights, each rank's noise
            distributed.broadcast_parameters(self.algorithm.synchronised())
            self._decorrelate_ranks()

    RECENT_EPISODES = 100
    RANK_SEED_STRIDE = 1_000_003  # a prime: rank r's streams start from seed + r * stride

    def _decorrelate_ranks(self) -> None:
        """Gives ranks other than 0 their own random streams (after the shared initial
        weights, or a checkpoint's states): ranks that sampled the same exploration noise
        would explore as one."""
        if self.ranks.rank:
            seed = self.config.seed + self.RANK_SEED_STRIDE * self.ranks.rank + self.iteration
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)

    @classmethod
    def from_config(cls, config: TrainConfig) -> "OnPolicyTrainer":
        """The trainer of ``config`` (its ``algo``'s class when called on this base class)."""
        trainer_class = cls if cls.ALGORITHM else trainer_class_for(config.algo)
        trainer = trainer_class.__new__(trainer_class)
        OnPolicyTrainer.__init__(trainer, config)
        return trainer

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.algorithm.optimizer

    # --- rollout ------------------------------------------------------------------------------

    def _collect_rollout(self) -> Rollout:
        """One rollout (:class:`~minerva.collector.RolloutCollector`): the batch on the
        update's device and the statistics of the episodes that ended."""
        try:
            rollout = self.collector.collect()
        except NonFiniteError as error:
            raise NonFiniteError(f"{error} (the rollout began at global step "
                                 f"{self.global_step})") from None
        self.global_step += (self.storage.num_steps * self.storage.num_envs
                             * self.ranks.world_size)
        if rollout.finished_returns:
            self._recent_returns.extend(rollout.finished_returns)
            rollout.metrics["charts/episode_return_last100"] = float(
                np.mean(self._recent_returns))
        return rollout

    # --- update ------------------------------------------------------------------------------

    def _update_normalizers(self, batch: RolloutBatch) -> None:
        # once per rollout, after the update, so the rollout's stored policy outputs and the
        # update both saw the same statistics
        gather = self._gather if self.ranks.distributed else None
        self.reward_scaler.update_statistics(gather)
        if self.agent.normalize_observations:
            self.agent.obs_normalizer.update(batch.observations[batch.valid], gather)

    def _gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's ``rows``, concatenated in rank order."""
        return distributed.gather_rows(rows, self.device, self.ranks.world_size)

    # --- training -----------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        return evaluate_vectorized(self.agent, self.eval_envs,
                                   seed=self.config.seed + 1000 + self.iteration,
                                   max_steps=self.config.eval_max_steps)

    def train(self, total_steps: int, out_dir: str, *, overwrite: bool | None = None):
        """Trains until ``total_steps`` environment steps (or ``target_return`` is reached).

        Writes ``metrics.jsonl``, TensorBoard events, ``<algo>_last.pt`` and ``<algo>_best.pt``
        into ``out_dir``; returns the last evaluation's metrics. A fresh trainer refuses an
        ``out_dir`` holding a run, and a resumed one a folder holding another run, unless
        ``overwrite`` (default: the config's) deletes that run's files; a folder another run
        is writing to is refused (:func:`minerva.logging.prepare_out_dir`).

        ``<algo>_last.pt`` is written after complete iterations only: at each evaluation, every
        ``checkpoint_every_s`` seconds, and when SIGINT, SIGTERM or SIGHUP stops training
        (the iteration under way is finished first; then :class:`~minerva.errors.
        TrainingInterrupted` is raised). An error leaves the last checkpoint as it was.
        """
        check_total_steps(total_steps, self.global_step)
        check_run_outputs(self.config, self.env_id)
        overwrite = self.config.overwrite if overwrite is None else overwrite
        self.config = dataclasses.replace(self.config, total_steps=total_steps,
                                          out_dir=str(out_dir), overwrite=overwrite)
        if not self.ranks.is_main:  # only rank 0 writes
            return self._train(total_steps, Path(out_dir))
        with run_logging.locked_out_dir(run_logging.create_out_dir(out_dir)):
            out = run_logging.prepare_out_dir(out_dir, self.global_step or None, overwrite,
                                              self.config.algo)
            return self._train(total_steps, out)

    def _train(self, total_steps: int, out: Path) -> dict[str, float]:
        """The training loop, in a prepared and locked ``out``."""
        cfg = self.config
        main = self.ranks.is_main
        logger = RunLogger(out, total_steps, self.global_step, progress=cfg.progress,
                           enabled=main, wandb_project=cfg.wandb_project,
                           config={**dataclasses.asdict(cfg), "env_id": self.env_id})
        logger.write_run_info({"config": dataclasses.asdict(cfg), "env_id": self.env_id,
                               "backend": self.backend, "device": str(self.device),
                               "torch_threads": torch.get_num_threads(),
                               "world_size": self.ranks.world_size})
        ranks = (f" x {self.ranks.world_size} ranks" if self.ranks.distributed else "")
        logger.print(f"minerva: {self.NAME} on {self.env_id} ({self.backend}, {cfg.num_envs} envs"
                     f"{ranks}, device {self.device}) -> {out}")
        next_eval = (self.global_step // cfg.eval_every + 1) * cfg.eval_every
        last_eval: dict[str, float] = {}
        last_print, last_save = -math.inf, logger.elapsed
        steps_at_start, time_at_start = self.global_step, logger.elapsed
        stop = StopOnSignal(
            lambda name: f"minerva: {name}: stopping after this iteration, with a checkpoint "
                         "(send it again to stop at once without one)" if main else "")
        finished = reached_target = False
        try:
            with stop:
                while self.global_step < total_steps and stop.requested is None:
                    rollout = self._collect_rollout()
                    metrics = rollout.metrics
                    with self.timer("update"):
                        metrics.update(self.algorithm(rollout.batch, self.global_step,
                                                      total_steps))
                        self._update_normalizers(rollout.batch)
                    self.iteration += 1
                    metrics["charts/steps_per_second"] = (
                        (self.global_step - steps_at_start)
                        / max(logger.elapsed - time_at_start, 1e-9))
                    metrics["charts/iteration"] = self.iteration
                    metrics.update(self.timer.metrics())
                    if self.algorithm.compiled:
                        metrics["time/compile_s"] = self.algorithm.compile_seconds
                    logger.log(self.global_step, metrics)
                    logger.advance(self.global_step)

                    finished = self.global_step >= total_steps
                    if self._any_rank(stop.requested is not None) and not finished:
                        stop.requested = stop.requested or signal.SIGTERM  # (another rank's)
                        break  # no evaluation: the checkpoint below holds this iteration
                    if self.global_step >= next_eval or finished:
                        while next_eval <= self.global_step:
                            next_eval += cfg.eval_every
                        if main:
                            with self.timer("evaluation"):
                                last_eval = self.evaluate()
                            logger.log(self.global_step, {**last_eval, **self.timer.metrics()})
                            if last_eval["eval/return_mean"] > self.best_return:
                                self.best_return = last_eval["eval/return_mean"]
                                self.save_checkpoint(self.checkpoint_path(out, "best"))
                            self._save_last(out)
                            last_save = logger.elapsed
                            logger.print(self._console_line({**last_eval,
                                                             **self._console_subset(metrics)}))
                            last_print = logger.elapsed
                            reached_target = cfg.target_return is not None and (
                                last_eval["eval/return_mean"] >= cfg.target_return)
                        if self.ranks.distributed:  # rank 0's evaluation decides
                            reached_target = distributed.from_main(reached_target, self.device)
                        if reached_target:
                            logger.print(f"reached the target return {cfg.target_return:g} at "
                                         f"step {self.global_step} ({logger.elapsed:.1f} s)")
                            break
                    else:
                        if main and cfg.checkpoint_every_s and (
                                logger.elapsed - last_save >= cfg.checkpoint_every_s):
                            self._save_last(out)
                            last_save = logger.elapsed
                        if logger.elapsed - last_print > 10.0:
                            logger.print(self._console_line(self._console_subset(metrics)))
                            last_print = logger.elapsed
                if stop.requested is not None and not (finished or reached_target):
                    if self._last_saved_step != self.global_step:
                        self._save_last(out)
                    interrupted = TrainingInterrupted(
                        stop.requested, f"stopped at step {self.global_step} after a complete "
                                        f"iteration; {self.checkpoint_status()}")
                    if main:
                        print(f"minerva: {interrupted}", file=sys.stderr, flush=True)
                    raise interrupted
            if main and cfg.capture_video:
                logger.print(self._record_best(out))
        finally:
            logger.print(f"time per phase: {self.timer.split()}")
            logger.close()
        return last_eval

    def _record_best(self, out: Path) -> str:
        """Records one episode of the best policy (``<algo>_best.pt``) to
        ``out/videos/best.mp4``; returns the line that says so."""
        best = checkpoint.load(self.checkpoint_path(out, "best"))
        agent = agent_for(self.config, self.eval_envs.single_observation_space,
                          self.eval_envs.single_action_space).to(self.device)
        agent.load_state_dict(best["agent"])
        path = out / "videos" / "best.mp4"
        path.parent.mkdir(exist_ok=True)
        frames, episode_return = record_video(agent, self.env_id, path, self.config.seed + 1000,
                                              True, self.config.eval_max_steps)
        return (f"video: {path} (the best policy, step {best['global_step']}: {frames} frames, "
                f"return {episode_return:.1f})")

    def _save_last(self, out: Path) -> None:
        path = self.checkpoint_path(out, "last")
        if self.ranks.is_main:
            self.save_checkpoint(path)
        self.last_checkpoint, self._last_saved_step = path, self.global_step

    def _any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (on one process: ``flag``)."""
        return distributed.any_rank(flag, self.device) if self.ranks.distributed else flag

    def checkpoint_status(self) -> str:
        """Where the last checkpoint is (for messages when training stops)."""
        if self.last_checkpoint is None:
            return "no checkpoint was written"
        return f"the last checkpoint (step {self._last_saved_step}) is {self.last_checkpoint}"

    def _console_line(self, metrics: Mapping[str, float]) -> str:
        return f"step {self.global_step}: {format_metrics(metrics)} | {self.timer.split()}"

    def _console_subset(self, metrics: Mapping[str, float]) -> dict[str, float]:
        return {k.split("/", 1)[1]: metrics[k] for k in self.CONSOLE_KEYS if k in metrics}

    def checkpoint_path(self, out: Path, which: str) -> Path:
        """``out/<algo>_last.pt`` or ``out/<algo>_best.pt`` (``which``: last or best)."""
        return out / run_logging.checkpoint_name(self.config.algo, which)

    def close(self) -> None:
        self.envs.close()
        if self.eval_envs is not None:
            self.eval_envs.close()
