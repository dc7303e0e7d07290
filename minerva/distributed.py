"""Data-parallel training across processes with ``torch.distributed`` (``torchrun``).

Every rank steps its own envs and keeps a full copy of the networks; what makes them one
agent is synchronised here, with PyTorch's collectives (gloo on the CPU, NCCL on a GPU):

- the initial weights and duals are rank 0's (a broadcast);
- each gradient step's gradients (the networks' and the duals') are averaged in one flat
  all-reduce, so every rank applies the same step;
- the E-step is global: the ranks' advantages are gathered, so the normalisation, the top-k
  selection and the weights' normaliser are those of all ranks' samples, and each rank
  trains on its share of the global weights;
- the observation normaliser's and the reward scaler's statistics are merged once per
  rollout from every rank's (count, mean, variance), with the parallel-variance formula;
- stopping (a signal on any rank, the target return on rank 0) is agreed on once per
  iteration.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from minerva.errors import first_line


class DistributedError(RuntimeError):
    """A collective failed: another rank died, raised, or did not answer in time."""


def _collective(name: str, operation, *args, **kwargs) -> None:
    try:
        operation(*args, **kwargs)
    except (RuntimeError, dist.DistError) as error:
        raise DistributedError(
            f"rank {dist.get_rank()} of {dist.get_world_size()}: the {name} failed, so another "
            "rank has stopped (it failed, was killed, or did not answer within "
            f"--dist-timeout-s): {first_line(error)}") from None


@dataclass(frozen=True)
class Ranks:
    """This process's place in a distributed run (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_ranks() -> Ranks:
    """The ranks ``torchrun`` set in the environment (``RANK``, ``WORLD_SIZE``)."""
    return Ranks(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def init(device: torch.device, timeout_s: float) -> Ranks:
    """Joins the process group ``torchrun`` set up (gloo on the CPU, NCCL for CUDA), with a
    timeout after which a collective that some rank never joins raises instead of hanging.
    One process: nothing to join."""
    ranks = launched_ranks()
    if ranks.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return ranks


def broadcast_parameters(tensors: list[torch.Tensor]) -> None:
    """Rank 0's values in every rank's ``tensors`` (one flat broadcast)."""
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    _collective("broadcast of the initial weights", dist.broadcast, flat, src=0)
    with torch.no_grad():
        for tensor, value in zip(tensors, flat.split([t.numel() for t in tensors])):
            tensor.copy_(value.view_as(tensor))


def average_gradients(parameters: list[torch.Tensor], world_size: int) -> None:
    """Every rank's gradients replaced by their mean over ranks, in one flat all-reduce
    (a parameter without a gradient counts as zeros)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    _collective("all-reduce of the gradients", dist.all_reduce, flat)
    flat /= world_size
    for parameter, value in zip(parameters, flat.split([p.numel() for p in parameters])):
        parameter.grad = value.view_as(parameter).clone()


def gather_rows(rows: torch.Tensor, device: torch.device, world_size: int) -> torch.Tensor:
    """:func:`all_gather_rows` of ``rows`` through ``device`` (the process group's: NCCL
    gathers on the GPU), returned where ``rows`` were."""
    return all_gather_rows(rows.to(device), world_size).to(rows.device)


def all_gather_rows(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """Every rank's ``tensor`` (the same shape on each), concatenated along dim 0 in rank
    order."""
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    _collective("all-gather of the rollouts' statistics", dist.all_gather, parts,
                tensor.contiguous())
    return torch.cat(parts)


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank."""
    value = torch.tensor([float(flag)], device=device)
    _collective("agreement on stopping", dist.all_reduce, value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def from_main(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank."""
    value = torch.tensor([float(flag)], device=device)
    _collective("broadcast of rank 0's evaluation", dist.broadcast, value, src=0)
    return bool(value.item())


def finish() -> None:
    """Leaves the process group once every rank is done: a rank whose peers exit while it
    still holds connections can abort."""
    if dist.is_initialized():
        _collective("final barrier", dist.barrier)
        dist.destroy_process_group()
