"""V-MPO trainer (the seed API of ``minerva.trainers.vmpo.trainer``).

The helpers at the top read vector-env infos (gymnasium's layouts; envpool's infos carry
neither final observations nor episode statistics, so they yield nothing there), resolve
environment ids across gymnasium and envpool, and build single gymnasium environments for
:func:`minerva.envs.make_vector_env`'s gymnasium backend.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import difflib
import functools
import logging
import math
import os
import random
import signal
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, Tuple

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from minerva import checkpoint, distributed, envs, losses, ops, reference
from minerva import logging as run_logging
from minerva.collector import Rollout, RolloutCollector
from minerva.config import TrainConfig
from minerva.envs import VectorEnv, default_backend, make_vector_env
from minerva.errors import NonFiniteError, TrainingInterrupted, first_line
from minerva.logging import PhaseTimer, RunLogger
from minerva.networks import Duals, VMPOAgent
from minerva.normalization import RewardScaler
from minerva.stopping import StopOnSignal
from minerva.storage import RolloutBatch, RolloutStorage
from minerva.threads import threads_for, torch_threads


def _format_metrics(metrics: Mapping[str, float]) -> str:
    """``"a=1.0000, b=2.5000"``: keys sorted, values to 4 decimals."""
    return ", ".join(f"{key}={float(value):.4f}" for key, value in sorted(metrics.items()))


def _iter_final_info_entries(infos) -> list[tuple[int, dict]]:
    """Yield (env_index, final_info_dict) entries across possible final_info layouts.

    ``infos["final_info"]`` may be
    - gymnasium 1.x's single payload: a dict of per-env arrays, each key ``k`` with a mask
      ``_k`` (nested dicts likewise), the envs given by ``infos["_final_info"]``;
    - a dict keyed by env index;
    - a per-env list or object array (gymnasium 0.29), masked by ``infos["_final_info"]``.
    """
    if not isinstance(infos, Mapping) or infos.get("final_info") is None:
        return []
    final_info = infos["final_info"]
    mask = infos.get("_final_info")

    def selected(index: int) -> bool:
        return mask is None or bool(mask[index])

    if isinstance(final_info, Mapping):
        if final_info and all(isinstance(k, (int, np.integer)) for k in final_info):
            return [(int(i), dict(entry)) for i, entry in sorted(final_info.items())
                    if entry is not None and selected(i)]

        def env_entry(payload: Mapping, index: int) -> dict:
            """One env's slice of a batched payload, skipping keys masked out for it."""
            entry = {}
            for key, value in payload.items():
                key_mask = payload.get(f"_{key}")
                if key.startswith("_") or (key_mask is not None and not key_mask[index]):
                    continue
                entry[key] = env_entry(value, index) if isinstance(value, Mapping) else value[index]
            return entry

        if mask is None:  # no outer mask: the envs are those any top-level key mask selects
            key_masks = [np.asarray(v) for k, v in final_info.items() if k.startswith("_")]
            if not key_masks:  # a single env's info dict
                return [(0, dict(final_info))] if final_info else []
            mask = np.logical_or.reduce(key_masks)
        return [(int(i), env_entry(final_info, int(i))) for i in np.flatnonzero(mask)]

    return [(i, dict(entry)) for i, entry in enumerate(final_info)
            if entry is not None and selected(i)]


def _extract_final_observations(infos, num_envs: int) -> list[np.ndarray | None]:
    """Extract per-env terminal observations from vector-env info dict.

    Prefers a top-level ``final_obs`` (gymnasium 1.x) or ``final_observation`` (0.29),
    masked by ``_final_obs``/``_final_observation``; else looks inside the final_info
    entries. None for envs without one (and for every env of an envpool info).
    """
    observations: list[np.ndarray | None] = [None] * num_envs
    if not isinstance(infos, Mapping):
        return observations
    for key in ("final_obs", "final_observation"):
        if infos.get(key) is not None:
            mask = infos.get(f"_{key}")
            for i, observation in enumerate(infos[key][:num_envs]):
                if observation is not None and (mask is None or mask[i]):
                    observations[i] = np.asarray(observation)
            return observations
    for i, entry in _iter_final_info_entries(infos):
        observation = entry.get("final_obs", entry.get("final_observation"))
        if observation is not None and i < num_envs:
            observations[i] = np.asarray(observation)
    return observations


def _extract_episode_returns(infos) -> list[tuple[int, float]]:
    """Extract per-env episode returns from vector-env info dict.

    Reads a top-level ``episode`` (gymnasium's RecordEpisodeStatistics, vector or per env
    in a vector env: ``infos["episode"]["r"]`` masked by ``infos["_episode"]``), else each
    final_info entry's ``episode["r"]``. Empty for envpool infos.
    """
    if not isinstance(infos, Mapping):
        return []
    episode = infos.get("episode")
    if episode is not None:
        returns = np.asarray(episode["r"], dtype=np.float64).reshape(-1)
        mask = infos.get("_episode", episode.get("_r"))
        indices = range(returns.size) if mask is None else np.flatnonzero(mask)
        return [(int(i), float(returns[i])) for i in indices]
    return [(i, float(np.asarray(entry["episode"]["r"]).reshape(-1)[0]))
            for i, entry in _iter_final_info_entries(infos) if "episode" in entry]


def _resolve_env_id(env_id: str) -> str:
    """Checks ``env_id`` against gymnasium's registry and envpool's ids; returns the id to make.

    ``dm_control/<domain>/<task>`` maps to shimmy's ``dm_control/<domain>-<task>-v0``.

    Raises:
        ValueError: for an unknown id, naming it and suggesting close matches.
    """
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"environment id must be a non-empty string, got {env_id!r}")
    resolved = env_id
    parts = env_id.split("/")
    if parts[0] == "dm_control":
        if len(parts) == 3:
            resolved = f"dm_control/{parts[1]}-{parts[2]}-v0"
        try:
            import shimmy  # noqa: F401  (importing it registers the dm_control ids)
        except ImportError as error:
            named = f" (gymnasium id {resolved!r})" if resolved != env_id else ""
            raise ValueError(
                f"environment id {env_id!r}{named} needs dm_control through shimmy: "
                "pip install 'minerva[dmc]'"
            ) from error
        _quiet_dm_control()
    if envs.available_backends(resolved):
        return resolved
    known = sorted(envs.envpool_env_ids() | set(gym.registry))
    matches = difflib.get_close_matches(resolved, known, n=3)
    message = f"unknown environment id {env_id!r}"
    if resolved != env_id:
        message += f" (gymnasium id {resolved!r})"
    if matches:
        quoted = [repr(match) for match in matches]
        suggestion = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
        message += f"; did you mean {suggestion}?"
    raise ValueError(message)


@functools.cache
def _quiet_dm_control() -> None:
    """dm_control's models set a compiler attribute MuJoCo deprecates, and absl logs a
    warning about it for every env made: dozens of lines before a run starts."""
    logging.getLogger("absl").addFilter(
        lambda record: "'settotalmass' is deprecated" not in record.getMessage())


def _make_env(gym_id: str, seed: int):
    """Returns a thunk making one gymnasium env for a vector env.

    make → FlattenObservation (Dict/Tuple observations only) → RecordEpisodeStatistics,
    with the action space seeded (the env itself is seeded by the vector env's first
    reset). Deliberately no reward normalisation and no ClipAction: minerva normalises
    rewards itself, identically for the envpool and gymnasium backends, and its policy
    squashes actions into the action bounds.
    """

    def thunk() -> gym.Env:
        env = gym.wrappers.RecordEpisodeStatistics(envs.flatten_observations(gym.make(gym_id)))
        env.action_space.seed(seed)
        return env

    return thunk


def find_wrapper(env, wrapper_type):
    """The first wrapper of ``wrapper_type`` along ``env.env.env...``, or None."""
    seen = set()
    while env is not None and id(env) not in seen:
        if isinstance(env, wrapper_type):
            return env
        seen.add(id(env))
        env = getattr(env, "env", None)
    return None


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

def agent_for(config: TrainConfig, vector_env: VectorEnv) -> VMPOAgent:
    """A freshly initialised agent of ``config``'s networks for ``vector_env``'s spaces."""
    return VMPOAgent(
        vector_env.single_observation_space, vector_env.single_action_space,
        config.policy_layer_sizes, config.value_layer_sizes,
        shared_encoder=config.shared_encoder, activation=config.activation,
        normalize_observations=config.normalize_observations,
        init_log_std=config.init_log_std, state_dependent_std=config.state_dependent_std,
        min_log_std=config.min_log_std, encoder=config.encoder)


def _evaluate_vectorized(
    agent: VMPOAgent, eval_envs: VectorEnv, seed: int = 42, max_steps: int = 100_000,
    deterministic: bool = True,
) -> Dict[str, float]:
    """High-performance vectorized evaluation.
    Runs all n_episodes in parallel on one vector env (envpool or gymnasium).

    One episode per evaluation env, all stepped together, with the deterministic policy
    (mean action / argmax; ``deterministic=False``: sampled actions). The observation
    normaliser is the training one, frozen (only the trainer updates it); returns are on raw
    rewards. ``seed`` reseeds gymnasium envs; envpool envs keep the seeds they were made with
    and continue their own random streams. Episodes still running after ``max_steps`` steps
    are cut there (``eval/cut_episodes`` counts them).
    """
    device = next(agent.parameters()).device
    observations = eval_envs.reset(seed=seed)
    num_envs = eval_envs.num_envs
    returns = np.zeros(num_envs, dtype=np.float64)
    lengths = np.zeros(num_envs, dtype=np.int64)
    finished = np.zeros(num_envs, dtype=bool)
    was_training = agent.training
    agent.eval()
    with torch.inference_mode(), torch_threads(threads_for(num_envs, torch.get_num_threads())):
        for _ in range(max_steps):
            if finished.all():
                break
            action = agent.act(torch.as_tensor(observations, device=device),
                               deterministic=deterministic, with_value=False)
            result = eval_envs.step(agent.policy.to_env(action.raw).cpu().numpy())
            running = ~finished
            returns += np.where(running, result.rewards, 0.0)
            lengths += running
            finished |= result.terminated | result.truncated
            observations = result.observations
    agent.train(was_training)
    return {
        "eval/return_mean": float(returns.mean()),
        "eval/return_std": float(returns.std()),
        "eval/return_min": float(returns.min()),
        "eval/return_max": float(returns.max()),
        "eval/return_median": float(np.median(returns)),
        "eval/length_mean": float(lengths.mean()),
        "eval/cut_episodes": float((~finished).sum()),
    }


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------

class VMPOTrainer:
    """V-MPO (Song et al. 2019) on a vectorised environment.

    Each iteration collects ``rollout_steps`` steps from ``num_envs`` environments into the
    native :class:`~minerva.RolloutStorage` (:class:`~minerva.collector.RolloutCollector`,
    which hands the update the rollout on its device), computes advantages with the native
    ``gae`` kernel (``returns``: lambda = 1, ``dae``: lambda = 0), selects the top-k of the whole
    rollout with the native ``topk_mask``, then runs ``m_steps`` passes over the rollout, each
    in ``num_minibatches`` gradient steps on the V-MPO losses (:mod:`minerva.losses`). See
    :class:`~minerva.config.TrainConfig` for what every argument means.
    """

    def __init__(
        self,
        env_id: str,
        seed: int,
        device: torch.device,
        policy_layer_sizes: Tuple[int, ...],
        value_layer_sizes: Tuple[int, ...],
        rollout_steps: int,
        normalize_advantages: bool = True,
        gamma: float = 0.99,
        advantage_estimator: str = "returns",
        gae_lambda: float = 0.95,
        policy_lr: float = 5e-4,
        value_lr: float = 1e-3,
        topk_fraction: float = 0.5,
        temperature_init: float = 1.0,
        temperature_lr: float = 1e-4,
        epsilon_eta: float = 0.1,
        epsilon_mu: float = 0.01,
        epsilon_sigma: float = 0.01,
        alpha_lr: float = 1e-4,
        max_grad_norm: float = 10.0,
        optimizer_type: str = "adam",
        sgd_momentum: float = 0.9,
        num_envs: int = 1,
        shared_encoder: bool = False,
        m_steps: int = 1,
        *,
        backend: str = "auto",
        activation: str = "tanh",
        epsilon_categorical: float = 0.01,
        alpha_init: float = 1.0,
        init_log_std: float = 0.0,
        normalize_observations: bool = True,
        normalize_rewards: bool = True,
        eval_every: int = 10_000,
        eval_episodes: int = 10,
        target_return: float | None = None,
        torch_threads: int = 0,
        progress: bool = True,
        reference_ops: bool = False,
        lr_schedule: str = "constant",
        num_minibatches: int = 1,
        state_dependent_std: bool = True,
        min_log_std: float = -5.0,
        precision: str = "float32",
        compile_update: bool = False,
        pipelined_rollout: bool = False,
        eval_max_steps: int = 100_000,
        checkpoint_every_s: float = 300.0,
        dist_timeout_s: float = 600.0,
        encoder: str = "auto",
    ):
        options = {k: v for k, v in locals().items() if k != "self"}
        options.update(device=str(device), policy_layer_sizes=tuple(policy_layer_sizes),
                       value_layer_sizes=tuple(value_layer_sizes))
        self.config = TrainConfig(**options).validate()
        cfg = self.config
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.device = torch.device(device)
        # torchrun: this process's rank (one process: rank 0 of 1)
        self.ranks = distributed.init(self.device, cfg.dist_timeout_s)

        try:
            self.env_id = _resolve_env_id(env_id)
        except ValueError as error:
            raise ValueError(f"env_id: {error}") from None
        self.backend = default_backend(self.env_id) if backend == "auto" else backend
        _check_rollout_memory(cfg, *envs.env_spaces(self.env_id))
        # pipelined_rollout: on envpool half the envs step while the policy acts on the other
        # half (gymnasium steps in this thread: nothing would overlap, so it is never split)
        # rank r's env i is seeded with seed + r * num_envs + i: no two ranks' envs share one
        self.envs = make_vector_env(self.env_id, num_envs, seed + self.ranks.rank * num_envs,
                                    self.backend, make_env=_make_env,
                                    split=pipelined_rollout and self.backend == "envpool")
        # rank 0 evaluates (and logs, and writes checkpoints)
        self.eval_envs = (make_vector_env(self.env_id, eval_episodes, seed + 1000, self.backend,
                                          make_env=_make_env) if self.ranks.is_main else None)

        self.agent = agent_for(cfg, self.envs).to(self.device)
        self.duals = Duals(temperature_init, alpha_init,
                           num_alphas=1 if self.agent.discrete else 2).to(self.device)
        networks = self.agent
        # a CNN both read is clipped and stepped with the policy, as a shared trunk is
        policy_params = [*networks.encoder_parameters(), *networks.policy_trunk.parameters(),
                         *networks.policy.parameters()]
        value_params = [*networks.value_trunk.parameters(), *networks.value_head.parameters()]
        groups = [
            {"params": policy_params, "lr": policy_lr},
            {"params": value_params, "lr": value_lr},
            {"params": [self.duals.log_eta], "lr": temperature_lr},
            {"params": [self.duals.log_alpha], "lr": alpha_lr},
        ]
        # fused: one kernel per parameter instead of a dozen, which is most of a small
        # minibatch's optimiser time
        self.optimizer = (torch.optim.Adam(groups, fused=True) if optimizer_type == "adam"
                          else torch.optim.SGD(groups, momentum=sgd_momentum))
        self._policy_params, self._value_params = policy_params, value_params
        self._synchronised = [*self.agent.parameters(), *self.duals.parameters()]
        self._compiled_losses = (torch.compile(self._losses, dynamic=False) if compile_update
                                 else None)
        self._compiled_sizes: set[int] = set()
        self.compile_seconds = 0.0

        # the native ops and storage, or the pure-Python references (to measure the difference)
        self.ops = reference if reference_ops else ops
        storage_class = reference.RolloutStorage if reference_ops else RolloutStorage
        action_space = self.envs.single_action_space
        self.storage = storage_class(
            rollout_steps, num_envs, self.envs.single_observation_space.shape,
            () if self.agent.discrete else (int(np.prod(action_space.shape)),),
            discrete_actions=self.agent.discrete, dist_params_dim=self.agent.policy.params_dim,
            observation_dtype=storage_dtype(self.envs.single_observation_space),
        )
        self.reward_scaler = RewardScaler(num_envs, gamma)
        self._on_gpu = self.device.type == "cuda"
        if self._on_gpu and not reference_ops and not ops.cuda_kernels_available():
            warnings.warn("minerva: the native ops have no CUDA kernels in this build (was nvcc "
                          "found?); the GPU update uses the pure-torch reference ops",
                          RuntimeWarning, stacklevel=2)
            self.ops = reference

        self.timer = PhaseTimer()
        self._threads = torch.get_num_threads()  # each phase takes what it can use
        self.collector = RolloutCollector(
            self.envs, self.storage, self.agent, self.device,
            self.reward_scaler if normalize_rewards else None, self.ops.gae, cfg.gamma, cfg.lam,
            self.timer, threads=self._threads, value_precision=self._autocast)
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
            distributed.broadcast_parameters(self._synchronised)
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
    def from_config(cls, config: TrainConfig) -> "VMPOTrainer":
        options = dataclasses.asdict(config)
        for run_only in RUN_ONLY_OPTIONS:
            options.pop(run_only)
        trainer = cls(**options)
        trainer.config = config.validate()  # keeps total_steps and out_dir for checkpoints
        return trainer

    # --- rollout ------------------------------------------------------------------------------

    def _reset_rollout(self) -> None:
        self.storage.reset()

    def _rollout_full(self) -> bool:
        return self.storage.full

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

    # --- update -------------------------------------------------------------------------------

    def _update(self, batch: RolloutBatch) -> dict[str, float]:
        """The E-step's selection once per rollout, then ``m_steps`` passes over it, each in
        ``num_minibatches`` gradient steps (M-step, value, duals); then the KL the update
        moved the policy by and the critic's fit, measured on the whole rollout."""
        cfg = self.config
        valid = batch.valid
        size = valid.shape[0]
        advantages, selected, offset = self._selection(batch.advantages, valid)
        samples = {"observations": batch.observations, "actions": batch.actions,
                   "behaviour": batch.dist_params, "returns": batch.returns, "valid": valid}
        history: dict[str, list[torch.Tensor]] = {}
        with torch_threads(threads_for(size // cfg.num_minibatches, self._threads)):
            self._m_steps(samples, advantages, selected, history, offset)
        selected = selected[offset:offset + size]  # this rank's, for its statistics
        # every statistic of the update reaches the host in one transfer
        statistics = {name: torch.stack(values).mean() for name, values in history.items()}
        with torch.no_grad():
            with torch_threads(threads_for(size, self._threads)):
                params, values = self._forward(batch.observations)
            statistics.update({f"losses/{name}_after": p.kl for name, p in self._kl_penalties(
                batch.dist_params, params, valid).items()})
        statistics["charts/explained_variance_before"] = losses.explained_variance(
            batch.values, batch.returns, valid)
        statistics["charts/explained_variance"] = losses.explained_variance(
            values, batch.returns, valid)
        statistics["losses/eta"] = self.duals.eta.detach()
        alphas = self.duals.alphas.detach()
        if self.agent.discrete:
            statistics["losses/alpha"] = alphas[0]
        else:
            statistics["losses/alpha_mean"], statistics["losses/alpha_std"] = alphas
            _, std_old = self.agent.policy.split(batch.dist_params)
            statistics["charts/policy_std"] = std_old.mean()
            # the mean hides a std that collapsed in some states; the minimum shows it
            statistics["charts/policy_std_min"] = std_old.min()
        # masked statistics (no boolean indexing, which would synchronise a GPU each)
        count = valid.sum().clamp(min=1)
        advantage_mean = losses.masked_mean(batch.advantages, valid)
        advantage_var = (torch.where(valid, batch.advantages - advantage_mean, 0).square().sum()
                         / (count - 1).clamp(min=1))  # sample variance, as Tensor.std
        statistics["charts/topk_share"] = selected.sum() / count
        statistics["charts/advantage_mean"] = advantage_mean
        statistics["charts/advantage_std"] = advantage_var.sqrt()
        statistics["charts/value_mean"] = losses.masked_mean(batch.values, valid)
        on_host = dict(zip(statistics, torch.stack(
            [value.float() for value in statistics.values()]).tolist()))
        _check_update_finite(on_host, batch)
        return on_host

    def _selection(self, advantages: torch.Tensor,
                   valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The E-step's advantages (standardised when ``normalize_advantages``) and its
        top-k selection, over the whole rollout: a minibatch's own top half would keep the
        best of that minibatch, not the best of what the policy did. Distributed, over every
        rank's rollout (gathered in rank order); ``offset`` is this rank's first row."""
        cfg = self.config
        offset = 0
        if self.ranks.distributed:
            offset = self.ranks.rank * valid.shape[0]
            advantages = self._gather(advantages)
            valid = self._gather(valid.to(torch.uint8)).bool()  # (gloo gathers no bools)
        if cfg.normalize_advantages:
            advantages = losses.normalize_advantages(advantages, valid)
        return advantages, self.ops.topk_mask(advantages, valid, cfg.topk_fraction), offset

    def _m_steps(self, samples: dict[str, torch.Tensor], advantages: torch.Tensor,
                 selected: torch.Tensor, history: dict[str, list[torch.Tensor]],
                 offset: int = 0) -> None:
        """``m_steps`` passes over the rollout, each in ``num_minibatches`` random
        minibatches; appends each step's metrics to ``history``. ``advantages`` and
        ``selected`` are every rank's; this rank's samples are their rows from ``offset``."""
        cfg = self.config
        size = samples["valid"].shape[0]
        whole = (None if not self.ranks.distributed
                 else torch.arange(size, device=self.device) + offset)
        for _ in range(cfg.m_steps):
            order = torch.randperm(size, device=self.device) if cfg.num_minibatches > 1 else None
            for indices in ([None] if order is None
                            else order.tensor_split(cfg.num_minibatches)):
                minibatch = (samples if indices is None
                             else {name: t[indices] for name, t in samples.items()})
                # the E-step's rows of these samples (None: all, on one process)
                rows = whole if indices is None else indices + offset
                step_metrics = self._m_step(minibatch, advantages, selected, rows)
                for name, value in step_metrics.items():
                    history.setdefault(name, []).append(value.detach())

    def _kl_penalties(self, behaviour: torch.Tensor, params: torch.Tensor,
                      valid: torch.Tensor) -> dict[str, losses.KLPenalty]:
        """The trust region's terms: one categorical KL, or the decoupled mean and std KLs."""
        cfg = self.config
        alphas = self.duals.alphas
        if self.agent.discrete:
            return {"kl": losses.kl_penalty(losses.categorical_kl(behaviour, params), valid,
                                            alphas[0], cfg.epsilon_categorical)}
        mean_old, std_old = self.agent.policy.split(behaviour)
        mean, std = self.agent.policy.split(params)
        return {
            "kl_mean": losses.kl_penalty(losses.gaussian_kl_mean(mean_old, std_old, mean),
                                         valid, alphas[0], cfg.epsilon_mu),
            "kl_std": losses.kl_penalty(losses.gaussian_kl_std(std_old, std), valid,
                                        alphas[1], cfg.epsilon_sigma),
        }

    def _m_step(self, minibatch: dict[str, torch.Tensor], advantages: torch.Tensor,
                selected: torch.Tensor, indices: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """One gradient step on a minibatch (``indices`` of the rollout, of every rank's
        samples when distributed; None: all of it).

        The E-step's weights are normalised over the whole rollout's selected samples with
        the current temperature (the temperature's loss is the whole rollout's too); the
        minibatch takes its share of them (:func:`~minerva.losses.minibatch_weights`)."""
        cfg = self.config
        estep = losses.e_step(advantages, selected, self.duals.eta, cfg.epsilon_eta,
                              vmpo_weights=self.ops.vmpo_weights)
        weights = (estep.weights if indices is None
                   else losses.minibatch_weights(estep.weights, indices))
        self.optimizer.zero_grad(set_to_none=True)
        metrics = self._losses_backward(minibatch, weights, estep.temperature_loss)
        if self.ranks.distributed:  # every rank takes the same step
            distributed.average_gradients(self._synchronised, self.ranks.world_size)
        # each network clipped on its own: the critic's gradient, often far larger, would
        # otherwise shrink the policy's step
        metrics["losses/policy_grad_norm"] = nn.utils.clip_grad_norm_(
            self._policy_params, cfg.max_grad_norm)
        metrics["losses/value_grad_norm"] = nn.utils.clip_grad_norm_(
            self._value_params, cfg.max_grad_norm)
        self.optimizer.step()
        self.duals.project_()
        metrics["losses/temperature"] = estep.temperature_loss
        metrics["charts/weights_ess_fraction"] = (losses.effective_sample_size(estep.weights)
                                                  / selected.sum().clamp(min=1))
        return metrics

    def _losses(self, minibatch: dict[str, torch.Tensor],
                weights: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The M-step's and the critic's losses on a minibatch, and their terms (what
        ``compile_update`` compiles). The networks run in the update's precision; the
        log-probs, KLs, losses and duals in float32."""
        params, values = self._forward(minibatch["observations"])
        nll = losses.weighted_nll(self.agent.policy.log_prob(params, minibatch["actions"]),
                                  weights)
        penalties = self._kl_penalties(minibatch["behaviour"], params, minibatch["valid"])
        critic = losses.value_loss(values, minibatch["returns"], minibatch["valid"])
        loss = nll + critic + sum(p.policy_loss + p.alpha_loss for p in penalties.values())
        terms = {"losses/policy_nll": nll, "losses/value": critic}
        terms.update({f"losses/{name}": p.kl for name, p in penalties.items()})
        return loss, terms

    def _losses_backward(self, minibatch: dict[str, torch.Tensor], weights: torch.Tensor,
                         temperature_loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backpropagates the losses; returns their terms. With ``compile_update`` the
        first step of each minibatch size compiles (its time goes to ``time/compile_s``);
        if compiling fails, a warning names the error and the update runs eagerly."""
        def backward(losses_fn) -> dict[str, torch.Tensor]:
            loss, terms = losses_fn(minibatch, weights)
            (loss + temperature_loss).backward()
            return terms

        compiled, size = self._compiled_losses, minibatch["valid"].shape[0]
        if compiled is None or size in self._compiled_sizes:
            return backward(self._losses if compiled is None else compiled)
        start = time.perf_counter()
        try:
            terms = backward(compiled)
        except Exception as error:  # noqa: BLE001  (any compiler failure: fall back)
            warnings.warn(f"minerva: torch.compile of the update failed ({type(error).__name__}: "
                          f"{first_line(error)}); the update runs eagerly", RuntimeWarning,
                          stacklevel=2)
            self._compiled_losses = None
            self.optimizer.zero_grad(set_to_none=True)
            terms = backward(self._losses)
        self._compiled_sizes.add(size)
        self.compile_seconds += time.perf_counter() - start
        return terms

    def _forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The agent's ``(dist_params, values)`` computed in the update's precision, returned
        in float32 (what the log-probs, KLs and losses are computed in)."""
        with self._autocast():
            params, values = self.agent(observations)
        return params.float(), values.float()

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The networks' precision (``precision``): bfloat16 autocast, or float32 as is."""
        if self.config.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # the adaptive schedule's bounds (the upper one a multiple of policy_lr: at 1e-2 a
    # solved InvertedPendulum-v5, whose updates barely move the policy, was pushed into
    # steps that destroyed it) and its factor
    ADAPTIVE_LR_MIN, ADAPTIVE_LR_MAX_FACTOR, ADAPTIVE_LR_FACTOR = 1e-5, 10.0, 1.5

    def _schedule_policy_lr(self, metrics: Mapping[str, float], total_steps: int) -> float:
        """Sets the policy learning rate for the next update (``lr_schedule``); returns it.

        Adam moves every weight by about the learning rate per step whatever the gradient's
        size, so a KL bound tighter than one update's steps can reach is infeasible: its
        multiplier then grows without end and its gradient drowns the policy's. The adaptive
        schedule keeps the step size matched to the bound instead, from the KL between the
        behaviour policy and the updated one (the KL at the M-steps is measured before each
        step, so it never sees the last one)."""
        cfg = self.config
        group = self.optimizer.param_groups[0]  # the policy's
        if cfg.lr_schedule == "linear":
            group["lr"] = cfg.policy_lr * max(0.0, 1.0 - self.global_step / total_steps)
        elif cfg.lr_schedule == "adaptive":
            kl, bound = ((metrics["losses/kl_after"], cfg.epsilon_categorical)
                         if self.agent.discrete
                         else (metrics["losses/kl_mean_after"], cfg.epsilon_mu))
            if kl > 2.0 * bound:
                group["lr"] = max(group["lr"] / self.ADAPTIVE_LR_FACTOR, self.ADAPTIVE_LR_MIN)
            elif kl < 0.5 * bound:
                group["lr"] = min(group["lr"] * self.ADAPTIVE_LR_FACTOR,
                                  self.ADAPTIVE_LR_MAX_FACTOR * cfg.policy_lr)
        return group["lr"]

    def _update_normalizers(self, batch: RolloutBatch) -> None:
        # once per rollout, after the update, so the rollout's stored policy outputs and the
        # update both saw the same statistics
        gather = self._gather if self.ranks.distributed else None
        self.reward_scaler.update_statistics(gather)
        if self.agent.normalize_observations:
            self.agent.obs_normalizer.update(batch.observations[batch.valid], gather)

    def _gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's ``rows``, concatenated in rank order."""
        gathered = distributed.all_gather_rows(rows.to(self.device), self.ranks.world_size)
        return gathered.to(rows.device)

    # --- training -----------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        return _evaluate_vectorized(self.agent, self.eval_envs,
                                    seed=self.config.seed + 1000 + self.iteration,
                                    max_steps=self.config.eval_max_steps)

    def train(self, total_steps: int, out_dir: str, *, overwrite: bool | None = None):
        """Trains until ``total_steps`` environment steps (or ``target_return`` is reached).

        Writes ``metrics.jsonl``, TensorBoard events, ``vmpo_last.pt`` and ``vmpo_best.pt``
        into ``out_dir``; returns the last evaluation's metrics. A fresh trainer refuses an
        ``out_dir`` holding a run, and a resumed one a folder holding another run, unless
        ``overwrite`` (default: the config's) deletes that run's files; a folder another run
        is writing to is refused (:func:`minerva.logging.prepare_out_dir`).

        ``vmpo_last.pt`` is written after complete iterations only: at each evaluation, every
        ``checkpoint_every_s`` seconds, and when SIGINT or SIGTERM stops training (the
        iteration under way is finished first; then :class:`~minerva.errors.
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
            out = run_logging.prepare_out_dir(out_dir, self.global_step or None, overwrite)
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
        logger.print(f"minerva: V-MPO on {self.env_id} ({self.backend}, {cfg.num_envs} envs"
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
                        metrics.update(self._update(rollout.batch))
                        self._update_normalizers(rollout.batch)
                    metrics["charts/policy_lr"] = self._schedule_policy_lr(metrics, total_steps)
                    self.iteration += 1
                    metrics["charts/steps_per_second"] = (
                        (self.global_step - steps_at_start)
                        / max(logger.elapsed - time_at_start, 1e-9))
                    metrics["charts/iteration"] = self.iteration
                    metrics.update(self.timer.metrics())
                    if self._compiled_sizes:
                        metrics["time/compile_s"] = self.compile_seconds
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
                                self.save_checkpoint(out / "vmpo_best.pt")
                            self._save_last(out)
                            last_save = logger.elapsed
                            logger.print(self._console_line({**last_eval,
                                                             **_console_subset(metrics)}))
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
                            logger.print(self._console_line(_console_subset(metrics)))
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
        """Records one episode of the best policy (``vmpo_best.pt``) to
        ``out/videos/best.mp4``; returns the line that says so."""
        from minerva.evaluate import record_video

        best = checkpoint.load(out / "vmpo_best.pt")
        agent = agent_for(self.config, self.eval_envs).to(self.device)
        agent.load_state_dict(best["agent"])
        path = out / "videos" / "best.mp4"
        path.parent.mkdir(exist_ok=True)
        frames, episode_return = record_video(agent, self.env_id, path, self.config.seed + 1000,
                                              True, self.config.eval_max_steps)
        return (f"video: {path} (the best policy, step {best['global_step']}: {frames} frames, "
                f"return {episode_return:.1f})")

    def _save_last(self, out: Path) -> None:
        if self.ranks.is_main:
            self.save_checkpoint(out / "vmpo_last.pt")
        self.last_checkpoint, self._last_saved_step = out / "vmpo_last.pt", self.global_step

    def _any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (on one process: ``flag``)."""
        return distributed.any_rank(flag, self.device) if self.ranks.distributed else flag

    def checkpoint_status(self) -> str:
        """Where the last checkpoint is (for messages when training stops)."""
        if self.last_checkpoint is None:
            return "no checkpoint was written"
        return f"the last checkpoint (step {self._last_saved_step}) is {self.last_checkpoint}"

    def _console_line(self, metrics: Mapping[str, float]) -> str:
        return f"step {self.global_step}: {_format_metrics(metrics)} | {self.timer.split()}"

    # --- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to resume training or evaluate the policy, as tensors and plain
        values (:mod:`minerva.checkpoint`)."""
        return {
            "format": checkpoint.FORMAT,
            "config": dataclasses.asdict(self.config),
            "env_id": self.env_id,
            "backend": self.backend,
            "agent": self.agent.state_dict(),
            "duals": self.duals.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
            "global_step": self.global_step,
            "iteration": self.iteration,
            "best_return": self.best_return,
            "recent_returns": list(self._recent_returns),
            "rng": {**checkpoint.rng_state(),
                    # the minibatches' permutations on a GPU draw from its generator
                    "torch_cuda": (torch.cuda.get_rng_state(self.device) if self._on_gpu
                                   else None)},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict`'s output. The envs are not in it: they start new
        episodes, and the reward scaler's per-env discounted returns restart with them.

        Raises:
            CheckpointError: when the networks' or the optimiser's shapes do not match.
        """
        try:
            self.agent.load_state_dict(state["agent"])
            self.duals.load_state_dict(state["duals"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.reward_scaler.load_state_dict(state["reward_scaler"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise checkpoint.CheckpointError(f"the checkpoint does not fit this {self.env_id} "
                                             f"trainer: {first_line(error)}") from None
        self.global_step = state["global_step"]
        self.iteration = state["iteration"]
        self.best_return = state["best_return"]
        self._recent_returns.clear()
        self._recent_returns.extend(state.get("recent_returns", []))
        checkpoint.set_rng_state(state["rng"])
        if self._on_gpu and state["rng"].get("torch_cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["torch_cuda"], self.device)
        self._decorrelate_ranks()

    def save_checkpoint(self, path: str | Path) -> None:
        checkpoint.save(self.state_dict(), path)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **overrides) -> "VMPOTrainer":
        """Rebuilds the trainer saved at ``path``, with ``overrides`` of its configuration.

        Every option applies on resume (learning rates and momentum go into the optimiser,
        whatever the checkpoint's schedule had reached), except those that fix the networks,
        the optimiser or the initial values (:data:`RESUME_FIXED_OPTIONS`): changing one of
        them is an error naming it. A ``total_steps`` given must exceed the saved step.

        Raises:
            FileNotFoundError: no such file.
            CheckpointError: not a readable minerva checkpoint, or one that does not fit.
            ValueError: ``option: ...`` for an override that cannot apply.
        """
        state = checkpoint.load(path)
        saved = checkpoint.saved_config(state, path)
        if "env_id" in overrides:
            try:
                resolved = _resolve_env_id(overrides["env_id"])
            except ValueError as error:
                raise ValueError(f"env_id: {error}") from None
            if resolved != state["env_id"]:
                raise ValueError(f"env_id: the checkpoint was trained on {state['env_id']!r}; "
                                 f"a resumed run cannot change it, got {overrides['env_id']!r}")
        for name, why in RESUME_FIXED_OPTIONS.items():
            if name in overrides and overrides[name] != saved[name]:
                raise ValueError(f"{name}: the checkpoint has {saved[name]!r} ({why}); a "
                                 f"resumed run cannot change it, got {overrides[name]!r}")
        config = TrainConfig(**{**saved, **overrides}).validate()
        if "total_steps" in overrides:  # asked for: it must leave steps to train
            check_total_steps(config.total_steps, state["global_step"])
        trainer = cls.from_config(config)
        try:
            trainer.load_state_dict(state)
        except BaseException:
            trainer.close()
            raise
        for group, name in zip(trainer.optimizer.param_groups, OPTIMIZER_GROUP_LRS):
            if name in overrides:
                group["lr"] = overrides[name]
            if config.optimizer_type == "sgd" and "sgd_momentum" in overrides:
                group["momentum"] = overrides["sgd_momentum"]
        trainer.last_checkpoint, trainer._last_saved_step = Path(path), trainer.global_step
        return trainer

    def close(self) -> None:
        self.envs.close()
        if self.eval_envs is not None:
            self.eval_envs.close()


# options of a run, not of the trainer
RUN_ONLY_OPTIONS = ("total_steps", "out_dir", "overwrite", "capture_video", "wandb_project")
# the optimiser's parameter groups, in order, and the option each group's rate comes from
OPTIMIZER_GROUP_LRS = ("policy_lr", "value_lr", "temperature_lr", "alpha_lr")
# options a resumed run must keep, and why
RESUME_FIXED_OPTIONS = {
    "policy_layer_sizes": "the policy network's shape",
    "value_layer_sizes": "the value network's shape",
    "shared_encoder": "the networks' shape",
    "encoder": "the networks' shape",
    "activation": "what the networks' weights were trained with",
    "state_dependent_std": "the policy's parameters",
    "min_log_std": "how the policy's weights map to its std",
    "normalize_observations": "what the networks' inputs were during training",
    "optimizer_type": "the optimiser's state",
    "temperature_init": "an initial value: the checkpoint's temperature carries on",
    "alpha_init": "an initial value: the checkpoint's multipliers carry on",
    "init_log_std": "an initial value: the checkpoint's policy carries on",
}


def check_run_outputs(config: TrainConfig, env_id: str) -> None:
    """Raises ValueError (``capture_video: ...``, ``wandb_project: ...``) for an output a
    run of ``env_id`` (resolved) is asked for and cannot produce, before it starts."""
    run_logging.check_wandb(config.wandb_project)
    if config.capture_video:
        from minerva.evaluate import check_can_record

        try:
            check_can_record(env_id)
        except ValueError as error:
            raise ValueError(f"capture_video: {error}") from None


def check_total_steps(total_steps: int, trained_steps: int) -> None:
    """Raises ValueError (``total_steps: ...``) unless ``total_steps`` leaves steps to train
    after the ``trained_steps`` a trainer (or its checkpoint) has done."""
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps: must be a positive integer, got {total_steps!r}")
    if total_steps <= trained_steps:
        raise ValueError(f"total_steps: {total_steps} is not above the {trained_steps} steps "
                         "already trained; give a larger one to train on")


def _check_rollout_memory(config: TrainConfig, observation_space: gym.spaces.Space,
                          action_space: gym.spaces.Space) -> None:
    """Refuses a rollout whose storage cannot fit in this machine's memory, before any env
    or buffer is made (a ValueError naming the size it would need)."""
    observation_size = (int(np.prod(observation_space.shape))
                        if isinstance(observation_space, gym.spaces.Box)
                        else int(gym.spaces.flatdim(observation_space)))
    discrete = isinstance(action_space, gym.spaces.Discrete)
    action_size = 1 if discrete else int(np.prod(action_space.shape))
    params_size = int(action_space.n) if discrete else 2 * action_size
    observation_bytes = storage_dtype(observation_space).itemsize
    # the observations, float32 dist_params and 6 scalars, the actions, and 3 bool flags
    bytes_per_step = (observation_bytes * observation_size + 4 * (params_size + 6)
                      + 8 * action_size + 3)
    needed = config.rollout_steps * config.num_envs * bytes_per_step
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        raise ValueError(
            f"rollout_steps: a rollout of {config.rollout_steps:_} steps x {config.num_envs:_} "
            f"envs of {config.env_id} needs {_gib(needed)} of storage, more than this "
            f"machine's {_gib(available)} of memory")


def storage_dtype(observation_space: gym.spaces.Space) -> torch.dtype:
    """uint8 observations (images) are stored as uint8, a quarter of float32's size; any
    other as float32."""
    uint8 = isinstance(observation_space, gym.spaces.Box) and observation_space.dtype == np.uint8
    return torch.uint8 if uint8 else torch.float32


def _gib(size: float) -> str:
    return f"{size / 2**30:,.1f} GiB"


def _check_update_finite(statistics: Mapping[str, float], batch: RolloutBatch) -> None:
    """Raises NonFiniteError naming the update's losses or gradient norms that are NaN or
    infinite: checked before the normalisers take the rollout in, and before a checkpoint."""
    bad = {name: value for name, value in statistics.items()
           if name.startswith("losses/") and not math.isfinite(value)}
    if bad:
        terms = ", ".join(f"{name} = {value}" for name, value in bad.items())
        returns = batch.returns[batch.valid]
        span = (f"; this rollout's returns span [{returns.min().item():.3g}, "
                f"{returns.max().item():.3g}]" if returns.numel() else "")
        raise NonFiniteError(f"the update computed non-finite values: {terms}{span}")


def _console_subset(metrics: Mapping[str, float]) -> dict[str, float]:
    keys = ("charts/episode_return", "charts/steps_per_second", "losses/eta", "losses/value")
    return {k.split("/", 1)[1]: metrics[k] for k in keys if k in metrics}
