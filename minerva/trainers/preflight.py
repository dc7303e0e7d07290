"""Checks a run makes before it starts (each an OptionError naming the option), and the options
a run treats specially."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from minerva import checkpoint
from minerva.config import TrainConfig, torch_device
from minerva.env_ids import resolve_env_id, supported_observation_box
from minerva.episodes import check_can_record
from minerva.errors import OptionError, first_line
from minerva.native.layout import RolloutViews
from minerva.networks import agent_for
from minerva.run_log import check_wandb

# options of a run, not of the trainer
RUN_ONLY_OPTIONS = ("total_steps", "out_dir", "overwrite", "capture_video", "wandb_project")
# options a resumed run must keep, and why
RESUME_FIXED_OPTIONS = {
    "algo": "the algorithm the checkpoint's state belongs to",
    "policy_layer_sizes": "the policy network's shape",
    "value_layer_sizes": "the value network's shape",
    "shared_encoder": "the networks' shape",
    "encoder": "the networks' shape",
    "activation": "what the networks' weights were trained with",
    "state_dependent_std": "the policy's parameters",
    "min_log_std": "how the policy's weights map to its std",
    "std_parameterization": "how the policy's weights map to its std",
    "action_bounds": "how the policy's outputs map to actions",
    "normalize_observations": "what the networks' inputs were during training",
    "temperature_init": "an initial value: the checkpoint's temperature carries on",
    "alpha_init": "an initial value: the checkpoint's multipliers carry on",
    "init_log_std": "an initial value: the checkpoint's policy carries on",
}


def check_run_outputs(config: TrainConfig, env_id: str) -> None:
    """Raises OptionError (``capture_video: ...``, ``wandb_project: ...``) for an output a
    run of ``env_id`` (resolved) is asked for and cannot produce, before it starts."""
    check_wandb(config.wandb_project)
    if config.capture_video:
        try:
            check_can_record(env_id)
        except ValueError as error:
            raise OptionError("capture_video", str(error)) from None


def check_total_steps(total_steps: int, trained_steps: int) -> None:
    """Raises OptionError (``total_steps: ...``) unless ``total_steps`` leaves steps to train
    after the ``trained_steps`` a trainer (or its checkpoint) has done."""
    if not isinstance(total_steps, int) or total_steps < 1:
        raise OptionError("total_steps", f"must be a positive integer, got {total_steps!r}")
    if total_steps <= trained_steps:
        raise OptionError("total_steps", f"{total_steps} is not above the {trained_steps} steps "
                         "already trained; give a larger one to train on")


def check_rollout_memory(config: TrainConfig, observation_space: gym.spaces.Space,
                          action_space: gym.spaces.Space) -> None:
    """Refuses a rollout whose storage cannot fit in this machine's memory, before any env
    or buffer is made (an OptionError naming the size it would need)."""
    discrete = isinstance(action_space, gym.spaces.Discrete)
    action_shape = () if discrete else (int(np.prod(action_space.shape)),)
    bytes_per_step = RolloutViews.bytes_per_step(
        observation_space.shape if isinstance(observation_space, gym.spaces.Box)
        else (int(gym.spaces.flatdim(observation_space)),),
        action_shape, discrete, int(action_space.n) if discrete else 2 * action_shape[0],
        storage_dtype(observation_space))
    needed = config.rollout_steps * config.num_envs * bytes_per_step
    available, whose = _memory(torch.device("cpu"))
    if needed > available:
        raise OptionError(
            "rollout_steps", f"a rollout of {config.rollout_steps:_} steps x {config.num_envs:_} "
            f"envs of {config.env_id} needs {_gib(needed)} of storage, more than {whose} "
            f"{_gib(available)} of memory")


def check_network_memory(config: TrainConfig, observation_space: gym.spaces.Space,
                         action_space: gym.spaces.Space, training: bool = True) -> None:
    """Refuses networks that cannot fit in the memory of the config's device, before any is
    allocated (an OptionError naming :func:`wider_network`'s option and the size they would
    need): their weights, gradients and optimiser state, counted on the networks built on
    torch's meta device (which allocates nothing), and a minibatch's hidden activations and
    their gradients; not ``training`` (evaluating), the weights and the evaluation's
    activations only."""
    name = wider_network(config)
    box = supported_observation_box(config.env_id, observation_space, action_space)
    try:  # (warnings about the spaces come once, when the real networks are made)
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            agent = agent_for(config, box, action_space)
    except RuntimeError as error:  # sizes whose tensors torch cannot even describe
        raise OptionError(name, f"layers too large for any memory ({first_line(error)}), "
                         f"got {getattr(config, name)}") from None
    parameters = sum(p.numel() for p in agent.parameters())
    # the weights, their gradients and Adam's two moments, in float32 (evaluating: the weights)
    copies = 4 if training else 1
    minibatch = (-(-config.num_envs * config.rollout_steps // config.num_minibatches)
                 if training else config.eval_episodes)
    activations = 2 * minibatch * sum((*config.policy_layer_sizes, *config.value_layer_sizes))
    needed = 4 * (copies * parameters + activations)
    available, whose = _memory(torch.device(config.device))
    if needed > available:
        raise OptionError(
            name, f"the networks need {_gib(needed)} ({parameters:,} parameters"
            + (" with their gradients and the optimiser's state, and a minibatch's activations"
               if training else ", and the evaluation's activations") + "), more than "
            f"{whose} {_gib(available)} of memory, got {getattr(config, name)}")


def wider_network(config: TrainConfig) -> str:
    """``policy_layer_sizes`` or ``value_layer_sizes``, whichever has the more units: the
    option to name when the networks do not fit."""
    return max(("policy_layer_sizes", "value_layer_sizes"),
               key=lambda name: sum(getattr(config, name)))


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed for want of memory (torch's CPU
    allocator raises a plain RuntimeError saying so)."""
    return (isinstance(error, (MemoryError, torch.OutOfMemoryError))
            or "can't allocate memory" in str(error))


def _memory(device: torch.device) -> tuple[int, str]:
    """The memory of ``device`` in bytes (a GPU's own, or this machine's), and whose."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, "the GPU's"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's"


def storage_dtype(observation_space: gym.spaces.Space) -> torch.dtype:
    """uint8 observations (images) are stored as uint8, a quarter of float32's size; any
    other as float32."""
    uint8 = isinstance(observation_space, gym.spaces.Box) and observation_space.dtype == np.uint8
    return torch.uint8 if uint8 else torch.float32


def _gib(size: float) -> str:
    return f"{size / 2**30:,.1f} GiB"


def resumed_config(state: dict, path: str | Path, overrides: dict, trainer: type) -> TrainConfig:
    """The configuration a run resumed from checkpoint ``state`` (read from ``path``) trains
    with: the saved one with ``overrides``. Every option applies on resume except those that
    fix the networks, the optimiser or the initial values (:data:`RESUME_FIXED_OPTIONS`);
    ``trainer`` is the class resuming it (its ``ALGORITHM``; None trains any).

    Raises:
        OptionError: an override that cannot apply, naming it (a ``total_steps`` given must
            exceed the saved step).
        CheckpointError: the checkpoint is another algorithm's.
    """
    saved = checkpoint.saved_config(state, path)
    if "env_id" in overrides:
        try:
            resolved = resolve_env_id(overrides["env_id"])
        except ValueError as error:
            raise OptionError("env_id", str(error)) from None
        if resolved != state["env_id"]:
            raise OptionError("env_id", f"the checkpoint was trained on {state['env_id']!r}; "
                             f"a resumed run cannot change it, got {overrides['env_id']!r}")
    for name, why in RESUME_FIXED_OPTIONS.items():
        if name in overrides and overrides[name] != saved[name]:
            raise OptionError(name, f"the checkpoint has {saved[name]!r} ({why}); a "
                             f"resumed run cannot change it, got {overrides[name]!r}")
    if trainer.ALGORITHM and saved["algo"] != trainer.ALGORITHM:
        raise checkpoint.CheckpointError(f"{path} is a {saved['algo']} checkpoint; "
                                         f"{trainer.__name__} trains {trainer.ALGORITHM}")
    config = TrainConfig(**{**saved, **overrides})
    if "device" not in overrides:  # the device it was trained on may not be here
        try:
            torch_device(config.device)
        except ValueError as error:
            raise OptionError("device", f"the checkpoint was trained on {config.device!r}, "
                             f"which {error}; choose another, e.g. cpu") from None
    config.validate()
    if "total_steps" in overrides:  # asked for: it must leave steps to train
        check_total_steps(config.total_steps, state["global_step"])
    return config
