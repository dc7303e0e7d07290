"""How a trainer saves itself and resumes (:class:`Resumable`, a mixin of
:class:`~minerva.trainers.on_policy.OnPolicyTrainer`): everything a run needs in one
checkpoint of tensors and plain values (:mod:`minerva.checkpoint`), and the rules of which
options a resumed run may change."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from minerva import checkpoint
from minerva.config import TrainConfig, torch_device
from minerva.env_ids import resolve_env_id
from minerva.errors import OptionError, first_line
from minerva.trainers.preflight import RESUME_FIXED_OPTIONS, check_total_steps


class Resumable:
    """:meth:`state_dict`, :meth:`load_state_dict`, :meth:`save_checkpoint` and
    :meth:`from_checkpoint` of an on-policy trainer."""

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
        if cls.ALGORITHM and saved["algo"] != cls.ALGORITHM:
            raise checkpoint.CheckpointError(
                f"{path} is a {saved['algo']} checkpoint; {cls.__name__} trains {cls.ALGORITHM}")
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
