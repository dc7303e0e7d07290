"""The PPO update (Schulman et al. 2017), in the form of CleanRL's ``ppo.py`` and
``ppo_continuous_action.py``.

``m_steps`` epochs over the rollout, each in ``num_minibatches`` random minibatches; each
gradient step minimises

    clipped surrogate - entropy_coef * entropy + value_coef * value loss

with the advantages standardised per minibatch (``normalize_advantages``), the value loss
clipped around the rollout's values (``clip_value_loss``), and one gradient norm over the
policy and the value function clipped to ``max_grad_norm``. The advantages and returns are the
rollout's (native ``gae``), computed once per rollout by the collector. The losses are pure
functions in :mod:`minerva.trainers.ppo.losses`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from minerva import losses
from minerva.config import TrainConfig
from minerva.distributed import Ranks
from minerva.native.layout import RolloutBatch
from minerva.networks import Agent
from minerva.trainers.ppo import losses as ppo_losses
from minerva.trainers.update import Update

# CleanRL's Adam epsilon (torch's default is 1e-8)
ADAM_EPSILON = 1e-5


class PPOUpdate(Update):
    """PPO's update of ``agent``: see the module docstring. Its optimiser has two groups,
    the policy and the value function, both annealed by the ``linear`` schedule."""

    def __init__(self, agent: Agent, config: TrainConfig, device: torch.device, ranks: Ranks,
                 ops, threads: int) -> None:
        super().__init__(agent, config, device, ranks, ops, threads)
        self.optimizer = self.make_optimizer(self.network_groups(), eps=ADAM_EPSILON)

    def samples(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        return {"observations": batch.observations, "actions": batch.actions,
                "log_probs": batch.log_probs, "advantages": batch.advantages,
                "returns": batch.returns, "values": batch.values, "valid": batch.valid}

    def clip_gradients(self) -> dict[str, torch.Tensor]:
        """One norm over the policy and the value function, as CleanRL's."""
        [norm] = self.clip_norms([*self.policy_params, *self.value_params])
        return {"losses/grad_norm": norm}

    def update_statistics(self, batch: RolloutBatch,
                          params: torch.Tensor) -> dict[str, torch.Tensor]:
        """How far the whole update moved the policy, on the rollout's actions."""
        after = ppo_losses.clipped_surrogate(
            self.agent.policy.log_prob(params, batch.actions), batch.log_probs,
            batch.advantages, self.config.clip_coef, batch.valid)
        return {"losses/approx_kl_after": after.approx_kl}

    def loss(self, minibatch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """PPO's loss on a minibatch and its terms (what ``compile_update`` compiles)."""
        cfg = self.config
        valid = minibatch["valid"]
        params, values = self.forward(minibatch["observations"])
        advantages = minibatch["advantages"]
        if cfg.normalize_advantages:
            advantages = losses.normalize_advantages(advantages, valid)
        surrogate = ppo_losses.clipped_surrogate(
            self.agent.policy.log_prob(params, minibatch["actions"]), minibatch["log_probs"],
            advantages, cfg.clip_coef, valid)
        if cfg.clip_value_loss:
            critic = ppo_losses.clipped_value_loss(values, minibatch["values"],
                                                   minibatch["returns"], cfg.clip_coef, valid)
        else:
            critic = losses.value_loss(values, minibatch["returns"], valid)
        entropy = losses.masked_mean(self.agent.policy.entropy(params), valid)
        loss = surrogate.loss - cfg.entropy_coef * entropy + cfg.value_coef * critic
        return loss, {"losses/policy": surrogate.loss, "losses/value": critic,
                      "losses/entropy": entropy, "losses/approx_kl": surrogate.approx_kl,
                      "charts/clip_fraction": surrogate.clip_fraction}

    def schedule(self, statistics: Mapping[str, float], global_step: int,
                 total_steps: int) -> float:
        """``linear``: both networks' rates anneal to 0 at ``total_steps`` (CleanRL's
        ``anneal_lr``); ``constant`` leaves them. Returns the policy's."""
        cfg = self.config
        groups = self.optimizer.param_groups
        if cfg.lr_schedule == "linear":
            self.linear_schedule(groups, [cfg.policy_lr, cfg.value_lr], global_step,
                                 total_steps)
        return groups[0]["lr"]
