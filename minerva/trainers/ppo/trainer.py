"""PPO trainer: the on-policy loop (:class:`~minerva.trainers.on_policy.OnPolicyTrainer`)
with PPO's update (:class:`~minerva.trainers.ppo.update.PPOUpdate`)."""

from __future__ import annotations

import dataclasses

from minerva.config import TrainConfig
from minerva.presets import algorithm_table
from minerva.trainers.on_policy import OnPolicyTrainer
from minerva.trainers.ppo.update import PPOUpdate


class PPOTrainer(OnPolicyTrainer):
    """PPO (Schulman et al. 2017) on a vectorised environment, on the same machinery as
    :class:`~minerva.trainers.vmpo.trainer.VMPOTrainer`: the same collector, native storage
    and ``gae``, normalisers, networks, evaluation and checkpoints.

    ``PPOTrainer(env_id="Hopper-v5", seed=2, ...)`` takes any :class:`~minerva.config.
    TrainConfig` option by name (``algo`` is ``ppo``) over PPO's defaults, CleanRL's (the
    ``[ppo]`` table of ``presets.toml``; the options it does not name are ``TrainConfig``'s).
    The per-env presets ``python -m minerva.train --algo ppo`` adds on top (the
    continuous-control table, an env's budget) are ``minerva.presets.preset(env_id, "ppo")``.
    :meth:`from_config` takes a whole config.
    """

    ALGORITHM = "ppo"
    NAME = "PPO"
    UPDATE = PPOUpdate
    CONSOLE_KEYS = ("charts/episode_return", "charts/steps_per_second",
                    "losses/approx_kl_after", "losses/value")

    def __init__(self, config: TrainConfig | None = None, **options):
        defaults = dataclasses.asdict(config) if config is not None else algorithm_table("ppo")
        options = {**defaults, **options, "algo": "ppo"}
        for name in ("policy_layer_sizes", "value_layer_sizes"):
            if name in options:
                options[name] = tuple(options[name])
        if "device" in options:
            options["device"] = str(options["device"])
        super().__init__(TrainConfig(**options))
