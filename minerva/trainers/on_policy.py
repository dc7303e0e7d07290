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
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from minerva import checkpoint, distributed, run_folder
from minerva.collector import Rollout, RolloutCollector
from minerva.config import ALGORITHMS, TrainConfig
from minerva.env_ids import default_backend, env_spaces, resolve_env_id
from minerva.envs import make_vector_env
from minerva.episodes import evaluate_vectorized, record_video
from minerva.errors import NonFiniteError, OptionError, first_line
from minerva.native import ops, reference
from minerva.native.layout import RolloutBatch
from minerva.native.storage import RolloutStorage
from minerva.networks import agent_for
from minerva.normalization import RewardScaler
from minerva.run_log import PhaseTimer, RunLogger
from minerva.trainers.callbacks import Checkpoints, Console, Evaluation, Stopping
from minerva.trainers.preflight import (
    check_network_memory,
    check_rollout_memory,
    check_run_outputs,
    check_total_steps,
    is_out_of_memory,
    resumed_config,
    storage_dtype,
    wider_network,
)
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


class OnPolicyTrainer:
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
        # rank r's env i is seeded with seed + r * num_envs + i: no two ranks' envs share one
        self.envs = make_vector_env(
            self.env_id, cfg.num_envs, cfg.seed + self.ranks.rank * cfg.num_envs, self.backend)
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
        self.ops = ops
        action_space = self.envs.single_action_space
        self.storage = RolloutStorage(
            cfg.rollout_steps, cfg.num_envs, self.envs.single_observation_space.shape,
            () if self.agent.discrete else (int(np.prod(action_space.shape)),),
            discrete_actions=self.agent.discrete, dist_params_dim=self.agent.policy.params_dim,
            observation_dtype=storage_dtype(self.envs.single_observation_space),
        )
        self.reward_scaler = RewardScaler(cfg.num_envs, cfg.gamma)
        self.on_gpu = self.device.type == "cuda"
        if self.on_gpu and not ops.cuda_kernels_available():
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
        # the loop's evaluation cadence; where a checkpoint said the next one was due
        self.evaluation: Evaluation | None = None
        self.next_evaluation_step: int | None = None
        self.checkpoints = Checkpoints(self.save_checkpoint, self.ranks.is_main)
        # CleanRL's metric: the mean return of the last 100 training episodes
        self.recent_returns: collections.deque[float] = collections.deque(
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
            self.recent_returns.extend(rollout.finished_returns)
            rollout.metrics["charts/episode_return_last100"] = float(
                np.mean(self.recent_returns))
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
        ``overwrite`` (default: the config's) replaces that run; a folder another run
        is writing to is refused (:func:`minerva.run_folder.prepare_out_dir`).

        An overwritten run's files are moved aside and deleted once this run's first
        checkpoint is written; the checkpoint a resumed trainer was loaded from stays.

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
            return self.learn(total_steps, Path(out_dir))
        with run_folder.locked_out_dir(run_folder.create_out_dir(out_dir)):
            # the checkpoint this run resumes from is never moved aside
            out, overwritten = run_folder.prepare_out_dir(
                out_dir, self.global_step or None, overwrite, self.config.algo,
                keep=self.checkpoints.last_path)
            self.checkpoints.discard_after_save(overwritten)
            self._reconcile_best(out)
            return self.learn(total_steps, out)

    def _reconcile_best(self, out: Path) -> None:
        """A run killed between writing ``<algo>_best.pt`` and ``<algo>_last.pt`` left a best
        newer than the last checkpoint knows of: its return becomes the one to beat, so that a
        worse policy does not replace it."""
        path = self.checkpoint_path(out, "best")
        if not path.is_file() or self.global_step == 0:
            return
        try:
            best_return = float(checkpoint.load(path)["best_return"])
        except (OSError, checkpoint.CheckpointError, KeyError, TypeError, ValueError):
            return  # a damaged best is replaced by the run's next best
        if best_return > self.best_return:
            self.best_return = best_return

    def learn(self, total_steps: int, out: Path) -> dict[str, float]:
        """The training loop, in ``out`` as :meth:`train` prepared and locked it: each
        iteration collects a rollout, updates the agent and the normalisers and logs; then
        the callbacks (:mod:`minerva.trainers.callbacks`) evaluate and keep the best policy,
        checkpoint, print, and stop on a signal or at the target return. Returns the last
        evaluation's metrics."""
        cfg = self.config
        main = self.ranks.is_main
        logger = self._start_logging(out, total_steps)
        folder = run_folder.folder_identity(out) if main else None

        def folder_still_there() -> None:
            if folder is not None:
                run_folder.check_still_there(out, folder)

        self.checkpoints.start(lambda which: self.checkpoint_path(out, which),
                               cfg.checkpoint_every_s, logger.elapsed, folder_still_there)
        evaluation = self.evaluation = Evaluation(
            self._timed_evaluation, cfg.eval_every, self.global_step, self.best_return,
            self._new_best, main, next_step=self.next_evaluation_step)
        stopping = Stopping(self.ranks, self.device, cfg.target_return)
        console = Console(logger, self._console_line)
        steps_at_start, time_at_start = self.global_step, logger.elapsed
        finished = reached_target = False

        def evaluate(metrics: dict[str, float]) -> bool:
            """Evaluates, logs, checkpoints and prints; whether the target return is reached."""
            results = evaluation()
            if main:
                logger.log(self.global_step, {**results, **self.timer.metrics()})
                self.checkpoints.save_last(self.global_step, logger.elapsed)
                console.print({**results, **self._console_subset(metrics)})
            reached = stopping.at_target(results)
            if reached:
                logger.print(f"reached the target return {cfg.target_return:g} at step "
                             f"{self.global_step} ({logger.elapsed:.1f} s)")
            return reached

        try:
            with stopping:
                # a run stopped by a signal where it was to evaluate evaluates first on resume
                if self.global_step and evaluation.due(self.global_step, finished=False):
                    reached_target = evaluate({})
                while (self.global_step < total_steps and stopping.requested is None
                       and not reached_target):
                    metrics = self._iterate(total_steps)
                    folder_still_there()
                    metrics["charts/steps_per_second"] = (
                        (self.global_step - steps_at_start)
                        / max(logger.elapsed - time_at_start, 1e-9))
                    logger.log(self.global_step, metrics)
                    logger.advance(self.global_step)

                    finished = self.global_step >= total_steps
                    if stopping.by_signal(finished):
                        break
                    if evaluation.due(self.global_step, finished):
                        reached_target = evaluate(metrics)
                    else:
                        self.checkpoints.on_schedule(self.global_step, logger.elapsed)
                        console.now_and_then(self._console_subset(metrics))
                if stopping.requested is not None and not (finished or reached_target):
                    self.checkpoints.ensure_saved(self.global_step, logger.elapsed)
                    raise stopping.interrupted(self.global_step, self.checkpoints)
            if main and cfg.capture_video:
                logger.print(self._record_best(out))
        finally:
            logger.print(f"time per phase: {self.timer.split()}")
            logger.close()
        return evaluation.last

    def _iterate(self, total_steps: int) -> dict[str, float]:
        """One iteration: a rollout, the update, the normalisers; its metrics."""
        rollout = self._collect_rollout()
        metrics = rollout.metrics
        with self.timer("update"):
            metrics.update(self.algorithm(rollout.batch, self.global_step, total_steps))
            self._update_normalizers(rollout.batch)
        self.iteration += 1
        metrics["charts/iteration"] = self.iteration
        metrics.update(self.timer.metrics())
        if self.algorithm.compiled:
            metrics["time/compile_s"] = self.algorithm.compile_seconds
        return metrics

    def _new_best(self, best_return: float) -> None:
        self.best_return = best_return
        self.checkpoints.save_best()

    def _timed_evaluation(self) -> dict[str, float]:
        with self.timer("evaluation"):
            return self.evaluate()

    def _start_logging(self, out: Path, total_steps: int) -> RunLogger:
        """The run's logger (metrics, TensorBoard, console), with the run's facts written
        (``run.json``) and its first line printed."""
        cfg = self.config
        logger = RunLogger(out, total_steps, self.global_step, progress=cfg.progress,
                           enabled=self.ranks.is_main, wandb_project=cfg.wandb_project,
                           config={**dataclasses.asdict(cfg), "env_id": self.env_id})
        logger.write_run_info({"config": dataclasses.asdict(cfg), "env_id": self.env_id,
                               "backend": self.backend, "device": str(self.device),
                               "torch_threads": torch.get_num_threads(),
                               "world_size": self.ranks.world_size})
        ranks = (f" x {self.ranks.world_size} ranks" if self.ranks.distributed else "")
        logger.print(f"minerva: {self.NAME} on {self.env_id} ({self.backend}, {cfg.num_envs} envs"
                     f"{ranks}, device {self.device}) -> {out}")
        return logger

    def _record_best(self, out: Path) -> str:
        """Records one episode of the best policy (``<algo>_best.pt``) to
        ``out/videos/best.mp4``; returns the line that says so."""
        best = checkpoint.load(self.checkpoint_path(out, "best"))
        agent = agent_for(self.config, self.eval_envs.single_observation_space,
                          self.eval_envs.single_action_space).to(self.device)
        agent.load_state_dict(best["agent"])
        run_folder.refuse_links(out)  # (a link may have appeared since the run started)
        path = out / run_folder.VIDEOS / "best.mp4"
        path.parent.mkdir(exist_ok=True)
        frames, episode_return = record_video(agent, self.env_id, path, self.config.seed + 1000,
                                              True, self.config.eval_max_steps)
        return (f"video: {path} (the best policy, step {best['global_step']}: {frames} frames, "
                f"return {episode_return:.1f})")

    def state_dict(self) -> dict:
        """Everything needed to resume training or evaluate the policy, as tensors and plain
        values (:mod:`minerva.checkpoint`)."""
        return {
            "format": checkpoint.FORMAT,
            "config": dataclasses.asdict(self.config),
            "env_id": self.env_id,
            "backend": self.backend,
            "agent": self.agent.state_dict(),
            **self.algorithm.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
            "global_step": self.global_step,
            "iteration": self.iteration,
            "best_return": self.best_return,
            "recent_returns": list(self.recent_returns),
            "next_evaluation_step": (self.evaluation.next_step if self.evaluation is not None
                                     else self.next_evaluation_step),
            "rng": {**checkpoint.rng_state(),
                    # the minibatches' permutations on a GPU draw from its generator
                    "torch_cuda": (torch.cuda.get_rng_state(self.device) if self.on_gpu
                                   else None)},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict`'s output. The envs are not in it: they start new
        episodes, and the reward scaler's per-env discounted returns restart with them.

        Raises:
            CheckpointError: when the networks' or the optimiser's shapes do not match.
        """
        checkpoint.load_weights(self.agent, state["agent"], f"this {self.env_id} trainer")
        try:
            self.algorithm.load_state_dict(state)
            self.reward_scaler.load_state_dict(state["reward_scaler"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise checkpoint.CheckpointError(f"the checkpoint does not fit this {self.env_id} "
                                             f"trainer: {first_line(error)}") from None
        self.global_step = state["global_step"]
        self.iteration = state["iteration"]
        self.best_return = state["best_return"]
        self.recent_returns.clear()
        self.recent_returns.extend(state.get("recent_returns", []))
        self.next_evaluation_step = state.get("next_evaluation_step")
        try:
            checkpoint.set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            raise checkpoint.CheckpointError(f"damaged checkpoint: rng cannot be restored "
                                             f"({first_line(error)})") from None
        if self.on_gpu and state["rng"].get("torch_cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["torch_cuda"], self.device)
        self._decorrelate_ranks()

    def save_checkpoint(self, path: str | Path) -> None:
        checkpoint.save(self.state_dict(), path)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **overrides):
        """Rebuilds the trainer saved at ``path``, with ``overrides`` of its configuration
        (called on :class:`~minerva.trainers.on_policy.OnPolicyTrainer`: the trainer of the
        checkpoint's ``algo``).

        Every option applies on resume (learning rates and momentum go into the optimiser,
        whatever the checkpoint's schedule had reached; a ``device`` runs it there, its
        state moved from the one it was saved on), except those that fix the networks,
        the optimiser or the initial values: changing one of them is an error naming it
        (:func:`~minerva.trainers.preflight.resumed_config`).

        Raises:
            FileNotFoundError: no such file.
            CheckpointError: not a readable minerva checkpoint, or one that does not fit.
            ValueError: ``option: ...`` for an override that cannot apply.
        """
        state = checkpoint.load(path)
        config = resumed_config(state, path, overrides, cls)
        trainer = cls.from_config(config)
        try:
            trainer.load_state_dict(state)
        except checkpoint.CheckpointError as error:
            trainer.close()
            raise checkpoint.CheckpointError(f"{path}: {error}") from None
        except BaseException:
            trainer.close()
            raise
        for group, name in zip(trainer.optimizer.param_groups,
                               trainer.algorithm.OPTIMIZER_GROUP_LRS):
            if name in overrides:
                group["lr"] = overrides[name]
        trainer.checkpoints.loaded(Path(path), trainer.global_step)
        return trainer

    def checkpoint_status(self) -> str:
        """Where the last checkpoint is (for messages when training stops)."""
        return self.checkpoints.status()

    @property
    def last_checkpoint(self) -> Path | None:
        """The latest checkpoint written or loaded."""
        return self.checkpoints.last_path

    def _console_line(self, metrics: Mapping[str, float]) -> str:
        return f"step {self.global_step}: {format_metrics(metrics)} | {self.timer.split()}"

    def _console_subset(self, metrics: Mapping[str, float]) -> dict[str, float]:
        return {k.split("/", 1)[1]: metrics[k] for k in self.CONSOLE_KEYS if k in metrics}

    def checkpoint_path(self, out: Path, which: str) -> Path:
        """``out/<algo>_last.pt`` or ``out/<algo>_best.pt`` (``which``: last or best)."""
        return out / run_folder.checkpoint_name(self.config.algo, which)

    def close(self) -> None:
        self.envs.close()
        if self.eval_envs is not None:
            self.eval_envs.close()
