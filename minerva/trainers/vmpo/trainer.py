"""V-MPO trainer (the seed API of ``minerva.trainers.vmpo.trainer``).

:class:`VMPOTrainer` is the on-policy loop (:class:`~minerva.trainers.on_policy.
OnPolicyTrainer`) with V-MPO's update (:class:`~minerva.trainers.vmpo.update.VMPOUpdate`).
The helpers at the top read vector-env infos (gymnasium's layouts; envpool's infos carry
neither final observations nor episode statistics, so they yield nothing there); the others
are minerva's own functions under the names the seed API gives them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, Tuple

import numpy as np
import torch

from minerva.config import REMOVED_OPTIONS, TrainConfig
from minerva.env_ids import resolve_env_id
from minerva.envs import VectorEnv, gymnasium_env_factory
from minerva.episodes import evaluate_vectorized
from minerva.errors import OptionError
from minerva.networks import Agent
from minerva.trainers.on_policy import OnPolicyTrainer, format_metrics
from minerva.trainers.vmpo.update import Duals, VMPOUpdate


def _format_metrics(metrics: Mapping[str, float]) -> str:
    """``"a=1.0000, b=2.5000"``: keys sorted, values to 4 decimals."""
    return format_metrics(metrics)


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
    """Checks ``env_id`` against gymnasium's registry and envpool's ids; returns the id to
    make (:func:`minerva.env_ids.resolve_env_id`)."""
    return resolve_env_id(env_id)


def _make_env(gym_id: str, seed: int):
    """A thunk making one gymnasium env for a vector env
    (:func:`minerva.envs.gymnasium_env_factory`)."""
    return gymnasium_env_factory(gym_id, seed)


def find_wrapper(env, wrapper_type):
    """The first wrapper of ``wrapper_type`` along ``env.env.env...``, or None."""
    seen = set()
    while env is not None and id(env) not in seen:
        if isinstance(env, wrapper_type):
            return env
        seen.add(id(env))
        env = getattr(env, "env", None)
    return None


def _evaluate_vectorized(agent: Agent, eval_envs: VectorEnv, seed: int = 42,
                         max_steps: int = 100_000, deterministic: bool = True) -> Dict[str, float]:
    """High-performance vectorized evaluation.
    Runs all n_episodes in parallel on one vector env (envpool or gymnasium): one episode
    per env (:func:`minerva.episodes.evaluate_vectorized`)."""
    return evaluate_vectorized(agent, eval_envs, seed, max_steps, deterministic)


class VMPOTrainer(OnPolicyTrainer):
    """V-MPO (Song et al. 2019) on a vectorised environment.

    Each iteration collects ``rollout_steps`` steps from ``num_envs`` environments into the
    native :class:`~minerva.RolloutStorage`, computes advantages with the native ``gae``
    kernel (``returns``: lambda = 1, ``dae``: lambda = 0), then runs V-MPO's update
    (:class:`~minerva.trainers.vmpo.update.VMPOUpdate`): the top-k of the whole rollout
    selected with the native ``topk_mask``, then ``m_steps`` passes over the rollout, each in
    ``num_minibatches`` gradient steps on the V-MPO losses. See
    :class:`~minerva.config.TrainConfig` for what every argument means. The named arguments
    and their defaults are the original trainer's; any other ``TrainConfig`` option is taken
    by keyword (``backend="envpool"``, ``num_minibatches=8``), over ``TrainConfig``'s
    defaults, V-MPO's. :meth:`from_config` builds one from a whole config.
    """

    ALGORITHM = "vmpo"
    NAME = "V-MPO"
    UPDATE = VMPOUpdate
    CONSOLE_KEYS = ("charts/episode_return", "charts/steps_per_second", "losses/eta",
                    "losses/value")

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
        **options: Any,
    ):
        if optimizer_type != "adam":  # (sgd_momentum only ever acted with SGD)
            raise OptionError("optimizer_type", f"{REMOVED_OPTIONS['optimizer_type'][1]}, got "
                                                f"{optimizer_type!r}")
        seed_options = {k: v for k, v in locals().items()
                        if k not in ("self", "__class__", "options", "optimizer_type",
                                     "sgd_momentum")}
        seed_options.update(device=str(device), policy_layer_sizes=tuple(policy_layer_sizes),
                            value_layer_sizes=tuple(value_layer_sizes))
        super().__init__(TrainConfig(**{**options, **seed_options}))

    @property
    def duals(self) -> Duals:
        """The temperature and the KL multipliers."""
        return self.algorithm.duals

    def _reset_rollout(self) -> None:
        self.storage.reset()

    def _rollout_full(self) -> bool:
        return self.storage.full
