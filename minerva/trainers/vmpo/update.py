"""The V-MPO update (Song et al. 2019): the E-step, the M-step, the duals and their
statistics, in one place.

Once per rollout: advantages standardised over the valid samples and the top-k of the whole
rollout selected (native ``topk_mask``; distributed, over every rank's rollout). Then
``m_steps`` passes of ``num_minibatches`` gradient steps, each on the sum of

- the E-step's temperature loss (native ``vmpo_weights``, differentiable in ``eta``), over the
  whole rollout's selected samples with the current temperature;
- the M-step's weighted likelihood, the minibatch taking its share of those weights;
- the KL trust region(s) with their multipliers (decoupled mean and std KLs for a Gaussian,
  one categorical KL), and the critic's regression to the returns.

The losses are pure functions in :mod:`minerva.trainers.vmpo.losses`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import nn

from minerva import distributed, losses
from minerva.config import ADAPTIVE_LR_SCHEDULES, DUAL_RANGE, TrainConfig
from minerva.distributed import Ranks
from minerva.native.layout import RolloutBatch
from minerva.networks import Agent
from minerva.trainers.update import Update, remaining_fraction
from minerva.trainers.vmpo import losses as vmpo_losses


class Duals(nn.Module):
    """V-MPO's Lagrange multipliers: ``eta``, the E-step's temperature, and ``alphas``, the KL
    multipliers (the mean's and the std's for a Gaussian policy; one for a categorical).

    Parameterised by their logarithms (``log_eta``, ``log_alpha``): each optimiser step changes
    a multiplier by a factor (about ``exp(lr)`` for Adam), so one that climbed far comes back
    as fast as it went; :meth:`project_` keeps the logarithms in ``[log 1e-8, log 1e4]`` after
    every step.
    """

    LOG_MIN, LOG_MAX = math.log(DUAL_RANGE[0]), math.log(DUAL_RANGE[1])

    def __init__(self, temperature_init: float, alpha_init: float, num_alphas: int):
        super().__init__()
        self.log_eta = nn.Parameter(torch.tensor(math.log(temperature_init)))
        self.log_alpha = nn.Parameter(torch.full((num_alphas,), math.log(alpha_init)))

    @property
    def eta(self) -> torch.Tensor:
        return self.log_eta.exp()

    @property
    def alphas(self) -> torch.Tensor:
        return self.log_alpha.exp()

    @torch.no_grad()
    def project_(self) -> None:
        self.log_eta.clamp_(self.LOG_MIN, self.LOG_MAX)
        self.log_alpha.clamp_(self.LOG_MIN, self.LOG_MAX)


class VMPOUpdate(Update):
    """V-MPO's update of ``agent``: see the module docstring. Its optimiser has four groups:
    the policy, the value function, the temperature and the KL multipliers."""

    OPTIMIZER_GROUP_LRS = ("policy_lr", "value_lr", "temperature_lr", "alpha_lr")
    # the adaptive schedule's bounds and factor; the upper bound is a multiple of policy_lr,
    # as a fixed one pushed a solved task's tiny updates into destructive steps
    ADAPTIVE_LR_MIN, ADAPTIVE_LR_MAX_FACTOR, ADAPTIVE_LR_FACTOR = 1e-5, 10.0, 1.5

    def __init__(self, agent: Agent, config: TrainConfig, device: torch.device, ranks: Ranks,
                 ops, threads: int) -> None:
        super().__init__(agent, config, device, ranks, ops, threads)
        self.duals = Duals(config.temperature_init, config.alpha_init,
                           1 if agent.discrete else 2).to(device)
        self.optimizer = self.make_optimizer([
            *self.network_groups(),
            {"params": [self.duals.log_eta], "lr": config.temperature_lr},
            {"params": [self.duals.log_alpha], "lr": config.alpha_lr},
        ])
        # the KL anchor when target_update_period > 0: a copy of the agent, refreshed every
        # that many gradient steps
        self.target = copy.deepcopy(agent).requires_grad_(False) if (
            config.target_update_period > 0) else None
        self.gradient_steps = 0

    def synchronised(self) -> list[torch.Tensor]:
        return [*self.agent.parameters(), *self.duals.parameters()]

    def state_dict(self) -> dict:
        state = {"duals": self.duals.state_dict(), **super().state_dict()}
        if self.target is not None:
            state["target_policy"] = {"agent": self.target.state_dict(),
                                      "gradient_steps": self.gradient_steps}
        return state

    def load_state_dict(self, state: Mapping) -> None:
        self.duals.load_state_dict(state["duals"])
        super().load_state_dict(state)
        if self.target is not None:
            target = state.get("target_policy")
            if target is None:  # a checkpoint trained without one: start from the policy
                self.target.load_state_dict(self.agent.state_dict())
            else:
                self.target.load_state_dict(target["agent"])
                self.gradient_steps = int(target["gradient_steps"])

    def samples(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """The minibatches' tensors; ``rows``: each sample's row among the E-step's (every
        rank's samples when distributed). The target policy starts from the policy here, where
        every rank holds the same weights."""
        if self.target is not None and self.gradient_steps == 0:
            self.target.load_state_dict(self.agent.state_dict())
        size = batch.valid.shape[0]
        rows = torch.arange(size, device=self.device) + self.ranks.rank * size
        return {"observations": batch.observations, "actions": batch.actions,
                "behaviour": batch.dist_params, "returns": batch.returns, "valid": batch.valid,
                "rows": rows}

    def pass_inputs(self, batch: RolloutBatch,
                    pass_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The E-step's advantages and top-k selection over the whole rollout, made before
        the first pass and kept for the others."""
        if pass_index == 0:
            self._selection = self.selection(batch.advantages, batch.valid)
        return self._selection

    def selection(self, advantages: torch.Tensor,
                  valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The E-step's advantages (standardised when ``normalize_advantages``) and its
        top-k selection, over the whole rollout: a minibatch's own top half would keep the
        best of that minibatch, not the best of what the policy did. Distributed, over every
        rank's rollout (gathered in rank order)."""
        cfg = self.config
        if self.ranks.distributed:
            advantages = distributed.gather_rows(advantages, self.device, self.ranks.world_size)
            valid = distributed.gather_rows(valid.to(torch.uint8), self.device,
                                            self.ranks.world_size).bool()  # (gloo: no bools)
        if cfg.normalize_advantages:
            advantages = losses.normalize_advantages(advantages, valid)
        return advantages, self.ops.topk_mask(advantages, valid, cfg.topk_fraction)

    def clip_gradients(self) -> dict[str, torch.Tensor]:
        """Each network's gradient clipped on its own (the critic's, often far larger, would
        otherwise shrink the policy's step); the duals' together, with
        ``dual_max_grad_norm``."""
        norms = dict(zip(("losses/policy_grad_norm", "losses/value_grad_norm"),
                         self.clip_norms(self.policy_params, self.value_params)))
        if self.config.dual_max_grad_norm > 0:
            norms["losses/dual_grad_norm"] = nn.utils.clip_grad_norm_(
                list(self.duals.parameters()), self.config.dual_max_grad_norm)
        return norms

    def after_step(self) -> None:
        """The duals projected into their range; the target policy refreshed on its period."""
        self.duals.project_()
        self.gradient_steps += 1
        if self.target is not None and self.gradient_steps % self.config.target_update_period == 0:
            self.target.load_state_dict(self.agent.state_dict())

    def constraints(self, anchor: torch.Tensor,
                    params: torch.Tensor) -> dict[str, vmpo_losses.KLConstraint]:
        """The trust regions around ``anchor`` (the behaviour or the target policy's
        parameters): one categorical KL, or the decoupled mean and std KLs."""
        cfg = self.config
        alphas = self.duals.alphas
        if self.agent.discrete:
            return {"kl": vmpo_losses.KLConstraint(
                vmpo_losses.categorical_kl(anchor, params), alphas[0], cfg.epsilon_categorical)}
        mean_old, std_old = self.agent.policy.split(anchor)
        mean, std = self.agent.policy.split(params)
        return {
            "kl_mean": vmpo_losses.KLConstraint(
                vmpo_losses.gaussian_kl_mean(mean_old, std_old, mean), alphas[0],
                cfg.epsilon_mu),
            "kl_std": vmpo_losses.KLConstraint(
                vmpo_losses.gaussian_kl_std(std_old, std), alphas[1], cfg.epsilon_sigma),
        }

    def kl_penalties(self, anchor: torch.Tensor, params: torch.Tensor,
                     valid: torch.Tensor) -> dict[str, vmpo_losses.KLPenalty]:
        """:meth:`constraints`' terms over the ``valid`` samples."""
        return {name: vmpo_losses.kl_penalty(c.kl_per_sample, valid, c.alpha, c.epsilon)
                for name, c in self.constraints(anchor, params).items()}

    def loss(self, minibatch: dict[str, torch.Tensor], advantages: torch.Tensor,
             selected: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one gradient step and its terms (what ``compile_update`` compiles):
        V-MPO's objective (:func:`~minerva.trainers.vmpo.losses.vmpo_loss`: the E-step's
        temperature loss, the M-step's weighted likelihood and the KL trust regions around
        the behaviour policy, or the target policy) and the critic's regression. The networks
        run in the update's precision; the log-probs, KLs, losses and duals in float32."""
        cfg = self.config
        params, values = self.forward(minibatch["observations"])
        anchor = minibatch["behaviour"]
        if self.target is not None:
            with torch.no_grad(), self.autocast():
                anchor = self.target.policy_params(minibatch["observations"]).float()
        constraints = self.constraints(anchor, params)
        policy = vmpo_losses.vmpo_loss(
            self.agent.policy.log_prob(params, minibatch["actions"]), advantages, selected,
            self.duals.eta, cfg.epsilon_eta, tuple(constraints.values()), minibatch["valid"],
            minibatch["rows"], vmpo_weights=self.ops.vmpo_weights)
        critic = losses.value_loss(values, minibatch["returns"], minibatch["valid"])
        terms = {"losses/policy_nll": policy.policy_nll, "losses/value": critic,
                 "losses/temperature": policy.temperature_loss,
                 "charts/weights_ess_fraction": (
                     vmpo_losses.effective_sample_size(policy.weights)
                     / selected.sum().clamp(min=1))}
        terms.update({f"losses/{name}": kl for name, kl in zip(constraints, policy.kls)})
        return policy.loss + critic, terms

    def update_statistics(self, batch: RolloutBatch, params: torch.Tensor,
                          advantages: torch.Tensor,
                          selected: torch.Tensor) -> dict[str, torch.Tensor]:
        """The KLs the update moved the policy by on the rollout, the duals, and the share
        of this rank's valid samples the last E-step selected."""
        valid = batch.valid
        statistics = {f"losses/{name}_after": p.kl for name, p in
                      self.kl_penalties(batch.dist_params, params, valid).items()}
        statistics["losses/eta"] = self.duals.eta.detach()
        alphas = self.duals.alphas.detach()
        if self.agent.discrete:
            statistics["losses/alpha"] = alphas[0]
        else:
            statistics["losses/alpha_mean"], statistics["losses/alpha_std"] = alphas
        size = valid.shape[0]
        mine = selected[self.ranks.rank * size:(self.ranks.rank + 1) * size]
        statistics["charts/topk_share"] = mine.sum() / valid.sum().clamp(min=1)
        return statistics

    def schedule(self, statistics: Mapping[str, float], global_step: int,
                 total_steps: int) -> float:
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
            self.linear_schedule([group], [cfg.policy_lr], global_step, total_steps)
        elif cfg.lr_schedule in ADAPTIVE_LR_SCHEDULES:
            kl, bound = ((statistics["losses/kl_after"], cfg.epsilon_categorical)
                         if self.agent.discrete
                         else (statistics["losses/kl_mean_after"], cfg.epsilon_mu))
            if kl > 2.0 * bound:
                group["lr"] /= self.ADAPTIVE_LR_FACTOR
            elif kl < 0.5 * bound:
                group["lr"] *= self.ADAPTIVE_LR_FACTOR
            group["lr"] = min(max(group["lr"], self.ADAPTIVE_LR_MIN),
                              self.adaptive_lr_max(global_step, total_steps))
        return group["lr"]

    def adaptive_lr_max(self, global_step: int, total_steps: int) -> float:
        """The adaptive schedule's upper bound: ``ADAPTIVE_LR_MAX_FACTOR x policy_lr``;
        annealed linearly to ``ADAPTIVE_LR_MIN`` at ``total_steps`` (``adaptive_annealed``),
        so that the policy settles where a fixed bound would keep a solved task's updates at
        their largest (its advantages are then noise the top-k still selects from)."""
        upper = self.ADAPTIVE_LR_MAX_FACTOR * self.config.policy_lr
        if self.config.lr_schedule == "adaptive":
            return upper
        return self.ADAPTIVE_LR_MIN + (upper - self.ADAPTIVE_LR_MIN) * remaining_fraction(
            global_step, total_steps)
