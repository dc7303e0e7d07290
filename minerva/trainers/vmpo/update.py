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

import math
from collections.abc import Mapping

import torch
from torch import nn

from minerva import distributed, losses
from minerva.config import ADAPTIVE_LR_SCHEDULES, TrainConfig
from minerva.distributed import Ranks
from minerva.networks import Agent
from minerva.rollout import RolloutBatch
from minerva.threads import threads_for, torch_threads
from minerva.trainers.update import Update, remaining_fraction, stack_history
from minerva.trainers.vmpo import losses as vmpo_losses


class Duals(nn.Module):
    """V-MPO's Lagrange multipliers, parameterised by their logarithms so they stay positive.

    ``eta`` is the E-step temperature; ``alphas`` are the KL multipliers (mean and std for a
    Gaussian policy, one for a categorical). In log space each optimiser step changes a
    multiplier by a factor (about ``exp(lr)`` for Adam), so one that climbed far comes back
    as fast as it went; a softplus is linear above ~2 and needs hundreds of updates to return.
    :meth:`project_` keeps the logarithms in a bounded range after every optimiser step.
    """

    LOG_MIN, LOG_MAX = math.log(1e-8), math.log(1e4)

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
    # the adaptive schedule's bounds (the upper one a multiple of policy_lr: at 1e-2 a
    # solved InvertedPendulum-v5, whose updates barely move the policy, was pushed into
    # steps that destroyed it) and its factor
    ADAPTIVE_LR_MIN, ADAPTIVE_LR_MAX_FACTOR, ADAPTIVE_LR_FACTOR = 1e-5, 10.0, 1.5

    def __init__(self, agent: Agent, config: TrainConfig, device: torch.device, ranks: Ranks,
                 ops, threads: int) -> None:
        super().__init__(agent, config, device, ranks, ops, self.compute_losses, threads)
        self.duals = Duals(config.temperature_init, config.alpha_init,
                           num_alphas=1 if agent.discrete else 2).to(device)
        self.optimizer = self.make_optimizer([
            *self.network_groups(),
            {"params": [self.duals.log_eta], "lr": config.temperature_lr},
            {"params": [self.duals.log_alpha], "lr": config.alpha_lr},
        ])

    def synchronised(self) -> list[torch.Tensor]:
        return [*self.agent.parameters(), *self.duals.parameters()]

    def state_dict(self) -> dict:
        return {"duals": self.duals.state_dict(), **super().state_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        self.duals.load_state_dict(state["duals"])
        super().load_state_dict(state)

    def __call__(self, batch: RolloutBatch) -> dict[str, float]:
        """The E-step's selection once per rollout, then ``m_steps`` passes over it, each in
        ``num_minibatches`` gradient steps (M-step, value, duals); then the KL the update
        moved the policy by and the critic's fit, measured on the whole rollout."""
        valid = batch.valid
        size = valid.shape[0]
        advantages, selected, offset = self.selection(batch.advantages, valid)
        samples = {"observations": batch.observations, "actions": batch.actions,
                   "behaviour": batch.dist_params, "returns": batch.returns, "valid": valid}
        # the E-step's rows of this rank's samples (None: all, on one process)
        whole = (None if not self.ranks.distributed
                 else torch.arange(size, device=self.device) + offset)
        history: dict[str, list[torch.Tensor]] = {}
        with self.step_threads(size):
            for minibatch, indices in self.minibatches(samples):
                rows = whole if indices is None else indices + offset
                for name, value in self.m_step(minibatch, advantages, selected, rows).items():
                    history.setdefault(name, []).append(value.detach())
        selected = selected[offset:offset + size]  # this rank's, for its statistics
        statistics = stack_history(history)
        with torch.no_grad():
            with torch_threads(threads_for(size, self.threads)):
                params, values = self.forward(batch.observations)
            statistics.update({f"losses/{name}_after": p.kl for name, p in self.kl_penalties(
                batch.dist_params, params, valid).items()})
        statistics.update(self.rollout_statistics(batch, values))
        statistics["losses/eta"] = self.duals.eta.detach()
        alphas = self.duals.alphas.detach()
        if self.agent.discrete:
            statistics["losses/alpha"] = alphas[0]
        else:
            statistics["losses/alpha_mean"], statistics["losses/alpha_std"] = alphas
        statistics["charts/topk_share"] = selected.sum() / valid.sum().clamp(min=1)
        return self.to_host(statistics, batch)

    def selection(self, advantages: torch.Tensor,
                  valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The E-step's advantages (standardised when ``normalize_advantages``) and its
        top-k selection, over the whole rollout: a minibatch's own top half would keep the
        best of that minibatch, not the best of what the policy did. Distributed, over every
        rank's rollout (gathered in rank order); ``offset`` is this rank's first row."""
        cfg = self.config
        offset = 0
        if self.ranks.distributed:
            offset = self.ranks.rank * valid.shape[0]
            advantages = distributed.gather_rows(advantages, self.device, self.ranks.world_size)
            valid = distributed.gather_rows(valid.to(torch.uint8), self.device,
                                            self.ranks.world_size).bool()  # (gloo: no bools)
        if cfg.normalize_advantages:
            advantages = losses.normalize_advantages(advantages, valid)
        return advantages, self.ops.topk_mask(advantages, valid, cfg.topk_fraction), offset

    def m_step(self, minibatch: dict[str, torch.Tensor], advantages: torch.Tensor,
               selected: torch.Tensor, rows: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """One gradient step on a minibatch (``rows`` of the rollout, of every rank's samples
        when distributed; None: all of it): the losses of :meth:`compute_losses`, the
        gradients averaged across ranks and clipped, the optimiser's step and the duals
        projected into their range."""
        self.optimizer.zero_grad(set_to_none=True)
        metrics = self.backward(minibatch, advantages, selected, rows)
        self.average_gradients()
        # each network clipped on its own: the critic's gradient, often far larger, would
        # otherwise shrink the policy's step
        metrics["losses/policy_grad_norm"], metrics["losses/value_grad_norm"] = (
            self.clip_gradients(self.policy_params, self.value_params))
        self.optimizer.step()
        self.duals.project_()
        return metrics

    def kl_penalties(self, behaviour: torch.Tensor, params: torch.Tensor,
                     valid: torch.Tensor) -> dict[str, vmpo_losses.KLPenalty]:
        """The trust region's terms: one categorical KL, or the decoupled mean and std KLs."""
        cfg = self.config
        alphas = self.duals.alphas
        if self.agent.discrete:
            return {"kl": vmpo_losses.kl_penalty(
                vmpo_losses.categorical_kl(behaviour, params), valid, alphas[0],
                cfg.epsilon_categorical)}
        mean_old, std_old = self.agent.policy.split(behaviour)
        mean, std = self.agent.policy.split(params)
        return {
            "kl_mean": vmpo_losses.kl_penalty(
                vmpo_losses.gaussian_kl_mean(mean_old, std_old, mean), valid, alphas[0],
                cfg.epsilon_mu),
            "kl_std": vmpo_losses.kl_penalty(
                vmpo_losses.gaussian_kl_std(std_old, std), valid, alphas[1], cfg.epsilon_sigma),
        }

    def compute_losses(self, minibatch: dict[str, torch.Tensor], advantages: torch.Tensor,
                       selected: torch.Tensor, rows: torch.Tensor | None,
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one gradient step and its terms (what ``compile_update`` compiles):
        the E-step's temperature loss, the M-step's weighted likelihood with its KL trust
        regions, and the critic's regression.

        The E-step's weights are normalised over the whole rollout's selected samples with
        the current temperature (the temperature's loss is the whole rollout's too); the
        minibatch (``rows`` of the rollout) takes its share of them
        (:func:`~minerva.trainers.vmpo.losses.minibatch_weights`). The networks run in the
        update's precision; the log-probs, KLs, losses and duals in float32."""
        cfg = self.config
        estep = vmpo_losses.e_step(advantages, selected, self.duals.eta, cfg.epsilon_eta,
                                   vmpo_weights=self.ops.vmpo_weights)
        weights = (estep.weights if rows is None
                   else vmpo_losses.minibatch_weights(estep.weights, rows))
        params, values = self.forward(minibatch["observations"])
        nll = vmpo_losses.weighted_nll(
            self.agent.policy.log_prob(params, minibatch["actions"]), weights)
        penalties = self.kl_penalties(minibatch["behaviour"], params, minibatch["valid"])
        critic = losses.value_loss(values, minibatch["returns"], minibatch["valid"])
        loss = (nll + critic + estep.temperature_loss
                + sum(p.policy_loss + p.alpha_loss for p in penalties.values()))
        terms = {"losses/policy_nll": nll, "losses/value": critic,
                 "losses/temperature": estep.temperature_loss.detach(),
                 "charts/weights_ess_fraction": (
                     vmpo_losses.effective_sample_size(estep.weights)
                     / selected.sum().clamp(min=1))}
        terms.update({f"losses/{name}": p.kl for name, p in penalties.items()})
        return loss, terms

    def schedule(self, metrics: Mapping[str, float], global_step: int,
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
            kl, bound = ((metrics["losses/kl_after"], cfg.epsilon_categorical)
                         if self.agent.discrete
                         else (metrics["losses/kl_mean_after"], cfg.epsilon_mu))
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
