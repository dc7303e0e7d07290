"""Rollout collection: the agent acts in a vector env, the storage fills, and the update gets
the rollout as one batch on its device with values, advantages and returns.

This is the one home of the CPU/GPU split. The environments step on the host and the
storage lives there; on a GPU the policy acts there, each rollout moves there once
(:class:`DeviceRollout`), and its values and advantages are computed there.
On the CPU the batch is a view of the storage.

Acting runs only the policy. The value network scores the whole rollout's observations (and
the observation after it) afterwards in one batch: it does not change during a rollout, so
this gives the same values as scoring each step, at a fraction of the per-step cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from minerva.envs import StepResult, VectorEnv
from minerva.errors import NonFiniteError
from minerva.native.layout import RolloutBatch, RolloutViews, flatten
from minerva.networks import Action, Agent, precision_context
from minerva.normalization import RewardScaler
from minerva.run_log import PhaseTimer
from minerva.threads import threads_for, torch_threads


class Rollout(NamedTuple):
    batch: RolloutBatch  # [T * N, ...] on the update's device, advantages and returns filled
    metrics: dict[str, float]  # valid fraction and the statistics of the episodes that ended
    finished_returns: list[float]  # raw returns of the episodes that ended, in order


class DeviceRollout:
    """Moves a storage's buffers to a CUDA device once per rollout without blocking the host:
    each buffer is copied into a page-locked twin (a host memcpy), and from there to the
    device asynchronously, ordered on the current stream before the update's kernels. (For
    another device the twins are ordinary memory and the copies synchronous.)

    A twin is rewritten only at the next rollout's transfer, after the update that read the
    previous copy has finished (its statistics reach the host), so no copy is in flight."""

    def __init__(self, storage: RolloutViews, device: torch.device) -> None:
        self.device = device
        pin = torch.device(device).type == "cuda"
        self._pinned = {name: torch.empty_like(tensor, pin_memory=pin)
                        for name, tensor in storage.buffers.items()}

    def transfer(self, storage: RolloutViews) -> dict[str, torch.Tensor]:
        """The storage's buffers on the device, ``[T, N, ...]`` each."""
        on_device = {}
        buffers = storage.buffers
        for name, pinned in self._pinned.items():
            pinned.copy_(buffers[name])
            on_device[name] = pinned.to(self.device, non_blocking=True)
        return on_device


class RolloutCollector:
    """Fills ``storage`` from ``envs`` with ``agent`` and hands over the batch.

    Args:
        envs: the training envs.
        storage: ``[T, N]`` rollout storage (native or reference).
        agent: the policy and value networks, on ``device``.
        device: where the agent acts and the update runs.
        reward_scaler: scales rewards by the running return std (None: raw rewards).
        gae: the advantages op, ``ops.gae`` or ``reference.gae``.
        gamma, lam: the discount and the GAE lambda.
        timer: accumulates the time per phase (``inference``, ``env_step``, ``storage``,
            ``advantages``).
        threads: torch threads available; acting takes one (:mod:`minerva.threads`), the
            batched value pass as many as its size warrants.
        precision: the networks' precision for the batched value pass (the ``precision``
            option: ``float32`` or ``bfloat16``, as the update's).
    """

    def __init__(self, envs: VectorEnv, storage: RolloutViews, agent: Agent,
                 device: torch.device, reward_scaler: RewardScaler | None, gae: Callable,
                 gamma: float, lam: float, timer: PhaseTimer, threads: int = 1,
                 precision: str = "float32") -> None:
        self.envs, self.storage, self.agent, self.device = envs, storage, agent, device
        self.reward_scaler, self.gae, self.gamma, self.lam = reward_scaler, gae, gamma, lam
        self.timer, self.threads = timer, threads
        self.precision = precision
        self.on_gpu = device.type == "cuda"
        self.device_rollout = DeviceRollout(storage, device) if self.on_gpu else None
        num_envs = envs.num_envs
        self.observations: np.ndarray | None = None
        self.previous_done = np.zeros(num_envs, dtype=bool)
        self.episode_return = np.zeros(num_envs, dtype=np.float64)
        self.episode_length = np.zeros(num_envs, dtype=np.int64)
        # the storage's value slot while acting; the batched pass fills the values after
        self._values_later = np.zeros(num_envs, dtype=np.float32)
        self._finished_returns: list[float] = []
        self._finished_lengths: list[int] = []

    def collect(self) -> Rollout:
        """One rollout: ``T`` steps of every env, then values and advantages."""
        self.storage.reset()
        self._finished_returns, self._finished_lengths = [], []
        if self.observations is None:
            self.observations = self.envs.reset()
            _check_finite(self.envs.env_id, "observation", self.observations, "at reset")
        with torch.inference_mode(), torch_threads(threads_for(self.envs.num_envs, self.threads)):
            while not self.storage.full:
                action, env_actions = self._act(self.observations)
                with self.timer("env_step"):
                    result = self.envs.step(env_actions)
                self._record(action, result)
        # outside inference mode: the update's autograd saves some of the batch's tensors
        rows = self.storage.num_steps * self.envs.num_envs
        with self.timer("advantages"), torch.no_grad(), torch_threads(
                threads_for(rows, self.threads)):
            batch = self._batch_with_advantages()
        metrics = {"charts/valid_fraction": float(self.storage.valid.float().mean())}
        if self._finished_returns:
            metrics["charts/episode_return"] = float(np.mean(self._finished_returns))
            metrics["charts/episode_length"] = float(np.mean(self._finished_lengths))
            metrics["charts/episodes"] = float(len(self._finished_returns))
        return Rollout(batch, metrics, self._finished_returns)

    def _act(self, observations: np.ndarray) -> tuple[Action, np.ndarray]:
        """The policy's action for ``observations``, on the host; and the env's actions."""
        with self.timer("inference"):
            action = self.agent.act(torch.as_tensor(observations, device=self.device),
                                    with_value=False)
            env_actions = self.agent.policy.to_env(action.raw)
            if self.on_gpu:  # all outputs to the host with one synchronisation
                action = Action(*(t.to("cpu", non_blocking=True) for t in action[:3]), None)
                env_actions = env_actions.to("cpu", non_blocking=True)
                torch.cuda.current_stream(self.device).synchronize()
            return action, env_actions.numpy()

    def _record(self, action: Action, result: StepResult) -> None:
        """Stores one step of every env and keeps the episode statistics."""
        with self.timer("storage"):
            # the step after an episode ended is envpool's (and gymnasium's) autoreset: its
            # action was ignored, so it is not experience
            valid = ~self.previous_done
            step = f"at step {self.storage.step} of the rollout"
            _check_finite(self.envs.env_id, "reward", np.where(valid, result.rewards, 0.0), step)
            # the last step's observations are not acted on, but they bootstrap the values
            _check_finite(self.envs.env_id, "observation", result.observations, step)
            done = result.terminated | result.truncated
            rewards = (result.rewards if self.reward_scaler is None
                       else self.reward_scaler(result.rewards, done, valid))
            self.storage.insert(self.observations, action.raw, action.log_prob,
                                action.dist_params, self._values_later, rewards,
                                result.terminated, result.truncated, valid)
            self.episode_return += np.where(valid, result.rewards, 0.0)
            self.episode_length += valid
            for i in np.flatnonzero(done & valid):
                self._finished_returns.append(float(self.episode_return[i]))
                self._finished_lengths.append(int(self.episode_length[i]))
            self.episode_return[done] = 0.0
            self.episode_length[done] = 0
            self.previous_done = done
            self.observations = result.observations

    def _batch_with_advantages(self) -> RolloutBatch:
        """The rollout where the update runs, its values scored in one batch (the step
        after the rollout's last included) and its advantages and returns computed there
        (:func:`advantages_from_critic`). On the CPU the tensors are the storage's, which is
        filled in place."""
        rollout = (self.storage.buffers if self.device_rollout is None
                   else self.device_rollout.transfer(self.storage))
        stored = rollout["observations"]
        last = torch.as_tensor(self.observations, device=self.device).to(stored.dtype)
        inputs = GAEInputs(rollout["rewards"], rollout["terminated"],
                           rollout["terminated"] | rollout["truncated"], last)
        with precision_context(self.precision, self.device):
            values, advantages, returns = advantages_from_critic(
                self.agent, stored.flatten(0, 1), inputs, self.gae, self.gamma, self.lam)
        rollout["values"].copy_(values)
        rollout["advantages"].copy_(advantages)
        rollout["returns"].copy_(returns)
        return flatten(rollout)


class GAEInputs(NamedTuple):
    """What a rollout's advantages take beyond its observations: ``[T, N]`` rewards (as
    trained on: scaled when ``normalize_rewards``), terminations and ends, and the
    observations that followed the last step (``[N, ...]``)."""

    rewards: torch.Tensor
    terminated: torch.Tensor
    done: torch.Tensor
    last_observations: torch.Tensor


def advantages_from_critic(agent: Agent, observations: torch.Tensor, inputs: GAEInputs,
                           gae: Callable, gamma: float, lam: float
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A rollout's values, advantages and returns (each ``[T, N]``) from ``agent``'s critic:
    the values of its ``[T * N, ...]`` observations and of the ones after its last step in
    one batch, then GAE (``gae``: :func:`minerva.ops.gae`) with ``next_values[t]`` the value
    of the observation that followed step t (with next-step autoreset, the true final one
    when step t ended an episode)."""
    num_steps, num_envs = inputs.rewards.shape
    values = agent.value(torch.cat([observations, inputs.last_observations])).float()
    values = values.view(num_steps + 1, num_envs)
    advantages, returns = gae(inputs.rewards, values[:-1], values[1:], inputs.terminated,
                              inputs.done, gamma, lam)
    return values[:-1], advantages, returns


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_finite(env_id: str, quantity: str, values: np.ndarray, when: str) -> None:
    """Raises NonFiniteError naming the env that gave a NaN or an infinity (or a float64
    beyond float32's range, which the storage and the networks would turn into one), before
    it reaches the policy, the storage or a running statistic. One vectorised test per call."""
    if values.dtype.kind != "f":
        return
    bad = ~(np.abs(values) <= _FLOAT32_MAX)  # NaN compares False
    if not bad.any():
        return
    per_env = bad.reshape(len(values), -1)
    env = int(np.flatnonzero(per_env.any(axis=1))[0])
    feature = int(np.flatnonzero(per_env[env])[0])
    value = values.reshape(len(values), -1)[env, feature]
    where = f" in feature {feature}" if per_env.shape[1] > 1 else ""
    beyond = " (beyond float32's range)" if np.isfinite(value) else ""
    raise NonFiniteError(f"{env_id}: env {env} gave a non-finite {quantity} "
                         f"({value}{where}){beyond} {when}")
