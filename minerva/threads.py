"""torch's intra-op threads per phase of training.

A network pass over a small batch is a chain of ops of a few microseconds each, and with
several threads every op waits for all of them. When another process holds a core, a
descheduled worker stalls each op for a scheduler slice: CartPole's update, 512 samples,
ran 4x slower on two threads beside one busy process, and as fast as ever on one. A large
batch's ops take milliseconds, so a late worker costs a fraction of each and more threads
pay. Hence: acting (a row per env) on one thread, and a pass over a batch on all threads
only when it has at least :data:`PARALLEL_MIN_ROWS` rows.

(The threads' wait policy is left as it is: OpenMP's passive policy, sleeping at once
instead of spinning, made the small-minibatch update 2.8x slower on an idle machine.)
"""

from __future__ import annotations

import contextlib

import torch

PARALLEL_MIN_ROWS = 4096


def threads_for(rows: int, available: int) -> int:
    """Threads for a pass over ``rows`` samples: ``available`` from
    :data:`PARALLEL_MIN_ROWS` rows up, else one."""
    return available if rows >= PARALLEL_MIN_ROWS else 1


@contextlib.contextmanager
def torch_threads(count: int):
    """torch's intra-op thread count set to ``count`` inside the block."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
