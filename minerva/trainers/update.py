"""What every algorithm's update shares: the agent's parameters in optimiser groups, the
networks run in the update's precision (and compiled when asked), minibatch passes, gradients
averaged across ranks and clipped, and the rollout's statistics checked and moved to the host
in one transfer.

An algorithm (:class:`~minerva.trainers.vmpo.update.VMPOUpdate`,
:class:`~minerva.trainers.ppo.update.PPOUpdate`) subclasses :class:`Update`: the on-policy
loop (:class:`~minerva.trainers.on_policy.OnPolicyTrainer`) calls it once per rollout and
knows nothing else of it.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import ClassVar

import torch
from torch import nn

from minerva import distributed, losses
from minerva.config import TrainConfig
from minerva.distributed import Ranks
from minerva.errors import NonFiniteError, first_line
from minerva.native.layout import RolloutBatch
from minerva.networks import Agent, precision_context
from minerva.threads import threads_for, torch_threads


class Update:
    """One algorithm's update of ``agent`` from a rollout (:meth:`__call__`, the skeleton
    every algorithm shares): ``m_steps`` passes over the rollout, each in
    ``num_minibatches`` gradient steps on :meth:`loss`; then the updated networks measured on
    the whole rollout, the statistics moved to the host in one transfer, and the learning
    rates set for the next update (:meth:`schedule`).

    An algorithm subclasses it: it sets :attr:`OPTIMIZER_GROUP_LRS` (the option each of its
    optimiser's groups takes its learning rate from: resume overrides go there), builds
    ``self.optimizer`` from :meth:`network_groups` and its own groups, and supplies
    :meth:`samples`, :meth:`loss`, :meth:`clip_gradients` and :meth:`schedule`, and where it
    needs them :meth:`pass_inputs`, :meth:`after_step`, :meth:`update_statistics` and
    :meth:`state_dict`.
    """

    OPTIMIZER_GROUP_LRS: ClassVar[tuple[str, ...]] = ("policy_lr", "value_lr")

    def __init__(self, agent: Agent, config: TrainConfig, device: torch.device, ranks: Ranks,
                 ops, threads: int) -> None:
        self.agent, self.config, self.device, self.ranks, self.ops = (
            agent, config, device, ranks, ops)
        self.threads = threads
        # a CNN both heads read is clipped and stepped with the policy, as a shared trunk is
        self.policy_params = [*agent.encoder_parameters(), *agent.policy_trunk.parameters(),
                              *agent.policy.parameters()]
        self.value_params = [*agent.value_trunk.parameters(), *agent.value_head.parameters()]
        self.optimizer: torch.optim.Optimizer
        self._compiled = (torch.compile(self.loss, dynamic=False) if config.compile_update
                          else None)
        self._compiled_sizes: set[int] = set()
        self.compile_seconds = 0.0

    def __call__(self, batch: RolloutBatch, global_step: int,
                 total_steps: int) -> dict[str, float]:
        """Updates the agent from one rollout (``global_step`` of ``total_steps`` trained,
        the rollout included); returns the update's statistics on the host, the policy's
        learning rate for the next update among them (``charts/policy_lr``)."""
        size = batch.valid.shape[0]
        samples = self.samples(batch)
        history: dict[str, list[torch.Tensor]] = {}
        inputs: tuple = ()
        with self.step_threads(size):
            for pass_index in range(self.config.m_steps):
                inputs = self.pass_inputs(batch, pass_index)
                for minibatch in self.minibatches(samples):
                    self.optimizer.zero_grad(set_to_none=True)
                    terms = self.backward(minibatch, *inputs)
                    self.average_gradients()
                    terms.update(self.clip_gradients())
                    self.optimizer.step()
                    self.after_step()
                    for name, value in terms.items():
                        history.setdefault(name, []).append(value.detach())
        statistics = stack_history(history)
        with torch.no_grad():
            with torch_threads(threads_for(size, self.threads)):
                params, values = self.forward(batch.observations)
            statistics.update(self.update_statistics(batch, params, *inputs))
        statistics.update(self.rollout_statistics(batch, values))
        on_host = self.to_host(statistics, batch)
        on_host["charts/policy_lr"] = self.schedule(on_host, global_step, total_steps)
        return on_host

    # --- what an algorithm provides --------------------------------------------------------

    def samples(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """The rollout's tensors (one row per sample) the minibatches are cut from."""
        raise NotImplementedError

    def pass_inputs(self, batch: RolloutBatch, pass_index: int) -> tuple:
        """What :meth:`loss` reads beyond its minibatch during pass ``pass_index`` (computed
        before the pass): none by default."""
        return ()

    def loss(self, minibatch: dict[str, torch.Tensor], *inputs: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One gradient step's loss on ``minibatch`` and its terms to log (what
        ``compile_update`` compiles)."""
        raise NotImplementedError

    def clip_gradients(self) -> dict[str, torch.Tensor]:
        """Clips the step's gradients; returns the norms before clipping, by metric name."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Anything an algorithm does after each optimiser step."""

    def update_statistics(self, batch: RolloutBatch, params: torch.Tensor,
                          *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The algorithm's statistics of the whole update (``params``: the updated policy's
        on the rollout; ``inputs``: the last pass's :meth:`pass_inputs`)."""
        return {}

    def schedule(self, statistics: Mapping[str, float], global_step: int,
                 total_steps: int) -> float:
        """Sets the learning rates for the next update (``lr_schedule``) from this update's
        ``statistics``; returns the policy's."""
        raise NotImplementedError

    def synchronised(self) -> list[torch.Tensor]:
        """The tensors every rank must hold equal: broadcast from rank 0 at the start, their
        gradients averaged at each step."""
        return list(self.agent.parameters())

    def state_dict(self) -> dict:
        """The update's part of a checkpoint (the optimiser's state, and any more)."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    # --- shared machinery ------------------------------------------------------------------

    def network_groups(self, **options) -> list[dict]:
        """The policy's and the value function's optimiser groups (in
        :attr:`OPTIMIZER_GROUP_LRS` order), with ``options`` added to both."""
        cfg = self.config
        return [{"params": self.policy_params, "lr": cfg.policy_lr, **options},
                {"params": self.value_params, "lr": cfg.value_lr, **options}]

    def make_optimizer(self, groups: list[dict], eps: float = 1e-8) -> torch.optim.Optimizer:
        """Adam, fused: one kernel per parameter instead of a dozen, which is most of a small
        minibatch's optimiser time."""
        return torch.optim.Adam(groups, eps=eps, fused=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The networks' precision (``precision``): bfloat16 autocast, or float32 as is."""
        return precision_context(self.config.precision, self.device)

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The agent's ``(dist_params, values)`` computed in the update's precision, returned
        in float32 (what the log-probs, KLs and losses are computed in)."""
        with self.autocast():
            params, values = self.agent(observations)
        return params.float(), values.float()

    def minibatches(self, samples: dict[str, torch.Tensor]
                    ) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over ``samples`` (tensors of the rollout's rows) in ``num_minibatches``
        random minibatches of (nearly) equal size (1: the whole rollout, as it is). The pass
        gathers the samples once in a random order and cuts the minibatches from it as views,
        instead of gathering every minibatch on its own: one index per tensor per pass."""
        count = self.config.num_minibatches
        if count == 1:
            yield samples
            return
        order = torch.randperm(samples["valid"].shape[0], device=self.device)
        parts = {name: t[order].tensor_split(count) for name, t in samples.items()}
        for k in range(count):
            yield {name: chunks[k] for name, chunks in parts.items()}

    def step_threads(self, size: int) -> contextlib.AbstractContextManager:
        """The torch threads a gradient step on a minibatch of a ``size``-sample rollout
        warrants (:mod:`minerva.threads`)."""
        return torch_threads(threads_for(size // self.config.num_minibatches, self.threads))

    def backward(self, *args: torch.Tensor | dict) -> dict[str, torch.Tensor]:
        """Backpropagates :meth:`loss` on ``args`` (a minibatch first); returns its
        terms. With ``compile_update`` the first step of each minibatch size compiles
        (its time goes to ``time/compile_s``); if compiling fails, a warning names the error
        and the update runs eagerly."""
        def run(loss_fn) -> dict[str, torch.Tensor]:
            loss, terms = loss_fn(*args)
            loss.backward()
            return terms

        size = args[0]["valid"].shape[0]
        if self._compiled is None or size in self._compiled_sizes:
            return run(self.loss if self._compiled is None else self._compiled)
        start = time.perf_counter()
        try:
            terms = run(self._compiled)
        except Exception as error:  # noqa: BLE001  (any compiler failure: fall back)
            warnings.warn(f"minerva: torch.compile of the update failed ({type(error).__name__}: "
                          f"{first_line(error)}); the update runs eagerly", RuntimeWarning,
                          stacklevel=2)
            self._compiled = None
            self.optimizer.zero_grad(set_to_none=True)
            terms = run(self.loss)
        self._compiled_sizes.add(size)
        self.compile_seconds += time.perf_counter() - start
        return terms

    @property
    def compiled(self) -> bool:
        """Whether a compiled step has run (``time/compile_s`` is then logged)."""
        return bool(self._compiled_sizes)

    def average_gradients(self) -> None:
        """Every rank takes the same step (a no-op on one process)."""
        if self.ranks.distributed:
            distributed.average_gradients(self.synchronised(), self.ranks.world_size)

    def clip_norms(self, *parameter_sets: list[nn.Parameter]) -> list[torch.Tensor]:
        """Clips each set's gradient norm to ``max_grad_norm`` on its own; returns the norms
        before clipping."""
        return [nn.utils.clip_grad_norm_(parameters, self.config.max_grad_norm)
                for parameters in parameter_sets]

    def rollout_statistics(self, batch: RolloutBatch,
                           values: torch.Tensor) -> dict[str, torch.Tensor]:
        """What every algorithm logs of a rollout: the critic's fit before and after the update
        (``values``: the updated critic's on the rollout), the advantages, the values and the
        behaviour policy's std (Gaussian: its mean, and its minimum, which shows a std that
        collapsed in some states). Masked, without boolean indexing (which would synchronise a
        GPU)."""
        valid = batch.valid
        statistics = {
            "charts/explained_variance_before": losses.explained_variance(
                batch.values, batch.returns, valid),
            "charts/explained_variance": losses.explained_variance(values, batch.returns, valid),
        }
        count = valid.sum().clamp(min=1)
        advantage_mean = losses.masked_mean(batch.advantages, valid)
        advantage_var = (torch.where(valid, batch.advantages - advantage_mean, 0).square().sum()
                         / (count - 1).clamp(min=1))  # sample variance, as Tensor.std
        statistics["charts/advantage_mean"] = advantage_mean
        statistics["charts/advantage_std"] = advantage_var.sqrt()
        statistics["charts/value_mean"] = losses.masked_mean(batch.values, valid)
        if not self.agent.discrete:
            _, std_old = self.agent.policy.split(batch.dist_params)
            statistics["charts/policy_std"] = std_old.mean()
            statistics["charts/policy_std_min"] = std_old.min()
        return statistics

    def to_host(self, statistics: Mapping[str, torch.Tensor],
                batch: RolloutBatch) -> dict[str, float]:
        """``statistics`` as floats, in one transfer, after checking the losses are finite."""
        on_host = dict(zip(statistics, torch.stack(
            [torch.as_tensor(value).float() for value in statistics.values()]).tolist()))
        check_update_finite(on_host, batch)
        return on_host

    def linear_schedule(self, groups: list[dict], initial: list[float], global_step: int,
                        total_steps: int) -> None:
        """Anneals each group's rate linearly from its initial one to 0 at ``total_steps``."""
        fraction = remaining_fraction(global_step, total_steps)
        for group, lr in zip(groups, initial):
            group["lr"] = lr * fraction


def remaining_fraction(global_step: int, total_steps: int) -> float:
    """The share of the run still to train, from 1 at the start to 0 at ``total_steps`` (and
    after it): what the linear schedules anneal by."""
    return max(0.0, 1.0 - global_step / total_steps)


def stack_history(history: Mapping[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of each metric over an update's gradient steps."""
    return {name: torch.stack(values).mean() for name, values in history.items()}


def check_update_finite(statistics: Mapping[str, float], batch: RolloutBatch) -> None:
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
