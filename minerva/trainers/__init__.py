"""Trainers built on minerva's native ops: one on-policy loop
(:class:`~minerva.trainers.on_policy.OnPolicyTrainer`) and an update per algorithm."""

from minerva.trainers.on_policy import OnPolicyTrainer
from minerva.trainers.ppo.trainer import PPOTrainer
from minerva.trainers.vmpo.trainer import VMPOTrainer

__all__ = ["OnPolicyTrainer", "PPOTrainer", "VMPOTrainer"]
