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
from collections.abc import Callable, Iterator, Mapping
from typing import ClassVar

import torch
from torch import nn

from minerva import distributed, losses
from minerva.config import TrainConfig
from minerva.distributed import Ranks
from minerva.errors import NonFiniteError, first_line
from minerva.networks import Agent
from minerva.rollout import RolloutBatch
from minerva.threads import threads_for, torch_threads

LossFunction = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


class Update:
    """One algorithm's update of ``agent`` from a rollout (:meth:`__call__`).

    Subclasses set :attr:`OPTIMIZER_GROUP_LRS` (the option each of their optimiser's groups
    takes its learning rate from: resume overrides go there), build ``self.optimizer`` from
    :meth:`network_groups` and their own groups, and implement :meth:`__call__`,
    :meth:`schedule` and, for state beyond the optimiser's, :meth:`state_dict`.
    """

    OPTIMIZER_GROUP_LRS: ClassVar[tuple[str, ...]] = ("policy_lr", "value_lr")

    def __init__(self, agent: Agent, config: TrainConfig, device: torch.device, ranks: Ranks,
                 ops, losses_fn: LossFunction, threads: int) -> None:
        self.agent, self.config, self.device, self.ranks, self.ops = (
            agent, config, device, ranks, ops)
        self.threads = threads
        # a CNN both heads read is clipped and stepped with the policy, as a shared trunk is
        self.policy_params = [*agent.encoder_parameters(), *agent.policy_trunk.parameters(),
                              *agent.policy.parameters()]
        self.value_params = [*agent.value_trunk.parameters(), *agent.value_head.parameters()]
        self.optimizer: torch.optim.Optimizer
        self._losses = losses_fn
        self._compiled = (torch.compile(losses_fn, dynamic=False) if config.compile_update
                          else None)
        self._compiled_sizes: set[int] = set()
        self.compile_seconds = 0.0

    # --- what an algorithm provides --------------------------------------------------------

    def __call__(self, batch: RolloutBatch) -> dict[str, float]:
        """Updates the agent from one rollout; returns the update's statistics on the host."""
        raise NotImplementedError

    def schedule(self, metrics: Mapping[str, float], global_step: int,
                 total_steps: int) -> float:
        """Sets the learning rates for the next update (``lr_schedule``); returns the
        policy's."""
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
        """Adam (fused: one kernel per parameter instead of a dozen, which is most of a small
        minibatch's optimiser time) or SGD with momentum (``optimizer_type``)."""
        cfg = self.config
        if cfg.optimizer_type == "adam":
            return torch.optim.Adam(groups, eps=eps, fused=True)
        return torch.optim.SGD(groups, momentum=cfg.sgd_momentum)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The networks' precision (``precision``): bfloat16 autocast, or float32 as is."""
        if self.config.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The agent's ``(dist_params, values)`` computed in the update's precision, returned
        in float32 (what the log-probs, KLs and losses are computed in)."""
        with self.autocast():
            params, values = self.agent(observations)
        return params.float(), values.float()

    def minibatches(self, samples: dict[str, torch.Tensor], passes: int | None = None,
                    ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor | None]]:
        """``passes`` (``m_steps``) passes over ``samples`` (tensors of the rollout's rows), each in
        ``num_minibatches`` random minibatches of (nearly) equal size: each minibatch and the
        rollout rows it holds (None: one full-batch step, all of them). Each pass gathers the
        samples once in a random order and cuts the minibatches from it as views, instead of
        gathering every minibatch on its own: one index per tensor per pass, not per step."""
        cfg = self.config
        size = samples["valid"].shape[0]
        for _ in range(cfg.m_steps if passes is None else passes):
            if cfg.num_minibatches == 1:
                yield samples, None
                continue
            order = torch.randperm(size, device=self.device)
            parts = {name: t[order].tensor_split(cfg.num_minibatches)
                     for name, t in samples.items()}
            for k, rows in enumerate(order.tensor_split(cfg.num_minibatches)):
                yield {name: chunks[k] for name, chunks in parts.items()}, rows

    def step_threads(self, size: int) -> contextlib.AbstractContextManager:
        """The torch threads a gradient step on a minibatch of a ``size``-sample rollout
        warrants (:mod:`minerva.threads`)."""
        return torch_threads(threads_for(size // self.config.num_minibatches, self.threads))

    def backward(self, *args: torch.Tensor | dict | None) -> dict[str, torch.Tensor]:
        """Backpropagates the algorithm's loss on ``args`` (a minibatch first); returns its
        terms. With ``compile_update`` the first step of each minibatch size compiles
        (its time goes to ``time/compile_s``); if compiling fails, a warning names the error
        and the update runs eagerly."""
        def run(losses_fn: LossFunction) -> dict[str, torch.Tensor]:
            loss, terms = losses_fn(*args)
            loss.backward()
            return terms

        size = args[0]["valid"].shape[0]
        if self._compiled is None or size in self._compiled_sizes:
            return run(self._losses if self._compiled is None else self._compiled)
        start = time.perf_counter()
        try:
            terms = run(self._compiled)
        except Exception as error:  # noqa: BLE001  (any compiler failure: fall back)
            warnings.warn(f"minerva: torch.compile of the update failed ({type(error).__name__}: "
                          f"{first_line(error)}); the update runs eagerly", RuntimeWarning,
                          stacklevel=2)
            self._compiled = None
            self.optimizer.zero_grad(set_to_none=True)
            terms = run(self._losses)
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

    def clip_gradients(self, *parameter_sets: list[nn.Parameter]) -> list[torch.Tensor]:
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
