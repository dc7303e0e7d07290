"""Benchmarks minerva's native ops and rollout storage against the pure-torch references.

    python benchmarks/bench_ops.py [--json PATH] [--quick]

Each row times the reference implementation (:mod:`minerva.reference`) and the native one,
and where it applies a peer and a bandwidth floor:

* ``gae``: the peer is TorchRL's ``vec_generalized_advantage_estimate`` (when ``torchrl`` is
  installed, the ``bench`` extra); the floor is the time of a ``copy_`` moving as many bytes
  as GAE reads and writes.
* ``topk_mask+vmpo_weights``: the peer is the torch composite ``torch.topk(...,
  sorted=False)`` on the valid advantages followed by ``torch.softmax`` (torch.topk's default
  ``sorted=True`` is slower; it is timed too and noted below the table).
* ``RolloutStorage.insert``: one step of a HalfCheetah-sized rollout (float64 observations
  from numpy, as envpool returns them).
* ``overhead``: each native op on minimal inputs; the peer is ``torch.add`` on 1-element
  tensors, for scale.

With a CUDA GPU and minerva's CUDA kernels, a second table times the same ops on the GPU:
the reference on the GPU, the CUDA kernels, and the peers on the GPU (TorchRL's GAE, the
top-k composite); ``fraction of copy`` is the kernel's achieved bandwidth (the bytes the op
must read and write, over its time) as a fraction of the device's measured ``copy_``
bandwidth in the same run. GAE at T=2048, N=1 is also timed with a one-thread-per-column
sequential kernel (``torch.ops.minerva._gae_single_thread``), the baseline a parallel scan
over time must beat. ``--no-cuda`` skips the GPU table.

Times are medians. The table is GitHub markdown; the results also go to a JSON file
(``benchmarks/results/bench_ops.json`` unless ``--json`` says otherwise). ``--quick`` uses
shorter timing budgets and fewer shapes, as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.benchmark import Timer

import minerva
from minerva.native import ops, reference
from minerva.run_log import cpu_model

try:
    import torchrl
    from torchrl.objectives.value.functional import vec_generalized_advantage_estimate
except ImportError:  # the optional `bench` extra
    torchrl = None

GAMMA, LAM = 0.99, 0.95
DONE_PROBABILITY = 0.05
TOPK_FRACTION = 0.5
VALID_PROBABILITY = 0.9
ETA = 0.5
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "bench_ops.json"


# ----------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Budget:
    """How long to time each function."""

    min_run_time: float  # seconds of blocked_autorange for fast functions
    slow_run_time: float  # seconds spent on repeats of a function slower than min_run_time / 3
    max_slow_repeats: int


FULL = Budget(min_run_time=0.5, slow_run_time=2.0, max_slow_repeats=5)
QUICK = Budget(min_run_time=0.1, slow_run_time=0.5, max_slow_repeats=3)


@dataclass
class Timing:
    median_s: float
    calls: int  # timed calls behind the median (warm-up excluded)


def measure(fn: Callable[[], Any], budget: Budget,
            check: Callable[[Any], None] | None = None) -> Timing:
    """Median time of ``fn()``. One warm-up call first (its result goes to ``check``); functions
    that take longer than a third of ``min_run_time`` are timed call by call, a few times,
    the rest with ``torch.utils.benchmark``'s ``blocked_autorange``."""
    start = time.perf_counter()
    result = fn()
    _synchronize()
    first = time.perf_counter() - start
    if check is not None:
        check(result)
    del result
    if first > budget.min_run_time / 3:
        repeats = max(1, min(budget.max_slow_repeats, int(budget.slow_run_time / first)))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            _synchronize()
            times.append(time.perf_counter() - start)
        return Timing(statistics.median(times), repeats)
    # Timer defaults to one thread; time with the threads the ops would really get. (It
    # synchronises CUDA around each block of calls itself.)
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=budget.min_run_time)
    return Timing(measurement.median, len(measurement.times) * measurement.number_per_run)


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- results


@dataclass
class Row:
    family: str
    op: str
    shape: str
    reference_s: float | None = None
    native_s: float | None = None
    peer: str | None = None
    peer_s: float | None = None
    floor_s: float | None = None
    bytes_moved: int | None = None
    calls: dict[str, int] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float | None:
        """reference time / native time."""
        return _ratio(self.reference_s, self.native_s)

    @property
    def speedup_vs_peer(self) -> float | None:
        """peer time / native time (> 1: native is faster)."""
        return _ratio(self.peer_s, self.native_s)

    @property
    def native_over_floor(self) -> float | None:
        """native time / floor time (1 is the floor itself)."""
        return _ratio(self.native_s, self.floor_s)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup,
                "speedup_vs_peer": self.speedup_vs_peer,
                "native_over_floor": self.native_over_floor}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def time_row(row: Row, budget: Budget, *, reference_fn=None, native_fn=None, peer_fn=None,
             peer_check=None) -> Row:
    """Fills ``row``'s times from whichever of the functions are given."""
    for name, fn, check in (("reference", reference_fn, None), ("native", native_fn, None),
                            ("peer", peer_fn, peer_check)):
        if fn is None:
            continue
        timing = measure(fn, budget, check)
        setattr(row, f"{name}_s", timing.median_s)
        row.calls[name] = timing.calls
    return row


# ----------------------------------------------------------------------------- bandwidth


@dataclass
class Bandwidth:
    """Copy bandwidth (bytes read + written per second) of ``dst.copy_(src)``."""

    big_bytes: int
    big_bytes_per_s: float
    device: str = "cpu"

    def copy_time(self, bytes_moved: int, budget: Budget) -> float:
        """Time of a ``copy_`` reading and writing ``bytes_moved`` bytes in all."""
        numel = max(1, bytes_moved // 8)  # float32: 4 bytes read + 4 written per element
        src = torch.rand(numel, device=self.device)
        dst = torch.empty(numel, device=self.device)
        return measure(lambda: dst.copy_(src), budget).median_s

    def fraction(self, bytes_moved: int, seconds: float | None) -> float | None:
        """Achieved bandwidth of moving ``bytes_moved`` in ``seconds``, over the big copy's."""
        return None if not seconds else bytes_moved / seconds / self.big_bytes_per_s


def measure_bandwidth(budget: Budget, megabytes: int = 256, device: str = "cpu") -> Bandwidth:
    numel = megabytes * 2**20 // 4
    src, dst = torch.rand(numel, device=device), torch.empty(numel, device=device)
    seconds = measure(lambda: dst.copy_(src), budget).median_s
    return Bandwidth(big_bytes=numel * 4, big_bytes_per_s=2 * numel * 4 / seconds,
                     device=device)


# ----------------------------------------------------------------------------- GAE


def gae_bytes(steps: int, envs: int) -> int:
    """Bytes GAE must move: rewards, values, next_values (float32) and the terminated / done
    masks (bool) read; advantages and returns (float32) written."""
    return steps * envs * (3 * 4 + 2 * 1 + 2 * 4)


def gae_inputs(steps: int, envs: int, generator: torch.Generator,
               device: str = "cpu") -> dict[str, torch.Tensor]:
    def uniform():
        return torch.rand(steps, envs, generator=generator)

    rewards, values, next_values = torch.randn(3, steps, envs, generator=generator).unbind(0)
    terminated = uniform() < DONE_PROBABILITY / 2
    truncated = uniform() < DONE_PROBABILITY / 2
    inputs = {"rewards": rewards, "values": values, "next_values": next_values,
              "terminated": terminated, "done": terminated | truncated}
    return {name: tensor.contiguous().to(device) for name, tensor in inputs.items()}


def torchrl_gae_call(inputs: dict[str, torch.Tensor]) -> Callable[[], Any]:
    """TorchRL's vectorised GAE on the same data, laid out as it wants it: ``[N, T, 1]``
    (batch, time, feature), contiguous, prepared here outside the timed region."""

    def layout(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.t().contiguous().unsqueeze(-1)

    value, next_value, reward, done, terminated = (
        layout(inputs[name]) for name in ("values", "next_values", "rewards", "done",
                                          "terminated"))
    return lambda: vec_generalized_advantage_estimate(
        GAMMA, LAM, value, next_value, reward, done, terminated=terminated)


def torchrl_gae_check(expected: tuple[torch.Tensor, torch.Tensor]) -> Callable[[Any], None]:
    """Asserts TorchRL computed what minerva does (so the comparison is like for like)."""

    def check(result: tuple[torch.Tensor, torch.Tensor]) -> None:
        for ours, theirs in zip(expected, result):
            torch.testing.assert_close(theirs.squeeze(-1).t(), ours, rtol=1e-4, atol=1e-4)

    return check


def bench_gae(shapes, budget: Budget, bandwidth: Bandwidth, generator) -> list[Row]:
    """GAE rows on ``bandwidth.device`` (family ``gae``, or ``gae-cuda`` on the GPU)."""
    device = bandwidth.device
    on_gpu = device != "cpu"
    rows = []
    for steps, envs in shapes:
        inputs = gae_inputs(steps, envs, generator, device)
        args = (*inputs.values(), GAMMA, LAM)
        bytes_moved = gae_bytes(steps, envs)
        row = Row("gae-cuda" if on_gpu else "gae", "gae", f"T={steps} N={envs}",
                  bytes_moved=bytes_moved, peer="torchrl vec_gae" if torchrl else None,
                  params={"T": steps, "N": envs, "gamma": GAMMA, "lam": LAM})
        expected = ops.gae(*args)
        torch.testing.assert_close(expected, reference.gae(*args))
        time_row(row, budget,
                 reference_fn=lambda: reference.gae(*args),
                 native_fn=lambda: ops.gae(*args),
                 peer_fn=torchrl_gae_call(inputs) if torchrl else None,
                 peer_check=torchrl_gae_check(expected) if torchrl else None)
        row.floor_s = bandwidth.copy_time(bytes_moved, budget)
        row.params["floor_big_copy_s"] = bytes_moved / bandwidth.big_bytes_per_s
        row.params["fraction_of_copy"] = bandwidth.fraction(bytes_moved, row.native_s)
        if on_gpu and envs == 1:
            single = torch.ops.minerva._gae_single_thread
            torch.testing.assert_close(single(*args), expected)
            row.params["single_thread_s"] = measure(lambda: single(*args), budget).median_s
        rows.append(row)
        print(f"  gae {row.shape} on {device}", file=sys.stderr)
    return rows


# ----------------------------------------------------------------------------- top-k + weights


def topk_inputs(size: int, generator: torch.Generator, device: str = "cpu"):
    advantages = torch.randn(size, generator=generator)
    valid = torch.rand(size, generator=generator) < VALID_PROBABILITY
    return advantages.to(device), valid.to(device), torch.tensor(ETA, device=device)


def topk_bytes(size: int) -> int:
    """Bytes top-k + weights must move: advantages (float32) and valid read, selected
    written; advantages and selected read again, weights (float32) written."""
    return size * (4 + 1 + 1 + 4 + 1 + 4)


def bench_topk(sizes, budget: Budget, generator, bandwidth: Bandwidth | None = None) -> list[Row]:
    """Top-k + weights rows; on ``bandwidth.device`` (family ``topk-cuda``) when given."""
    device = "cpu" if bandwidth is None else bandwidth.device
    rows = []
    for size in sizes:
        advantages, valid, eta = topk_inputs(size, generator, device)
        k = max(1, math.floor(TOPK_FRACTION * int(valid.sum())))

        def native():
            selected = ops.topk_mask(advantages, valid, TOPK_FRACTION)
            return ops.vmpo_weights(advantages, selected, eta)

        def ref():
            selected = reference.topk_mask(advantages, valid, TOPK_FRACTION)
            return reference.vmpo_weights(advantages, selected, eta)

        def composite(in_order=True):
            values, _ = torch.topk(advantages[valid], k, sorted=in_order)
            return torch.softmax(values / eta, 0)

        torch.testing.assert_close(native(), ref())
        # The selection needs no order, so the peer is the composite with sorted=False (the
        # stronger one); torch.topk's default sorted=True is timed for the note.
        row = Row("topk" if device == "cpu" else "topk-cuda", "topk_mask+vmpo_weights",
                  f"B={size}", peer="torch topk(sorted=False)+softmax",
                  bytes_moved=topk_bytes(size),
                  params={"B": size, "fraction": TOPK_FRACTION, "eta": ETA, "k": k})
        rows.append(time_row(row, budget, reference_fn=ref, native_fn=native,
                             peer_fn=lambda: composite(in_order=False)))
        row.params["peer_sorted_s"] = measure(composite, budget).median_s
        if bandwidth is not None:
            row.params["fraction_of_copy"] = bandwidth.fraction(row.bytes_moved, row.native_s)
        print(f"  topk {row.shape} on {device}", file=sys.stderr)
    return rows


# ----------------------------------------------------------------------------- storage


OBSERVATION_SHAPE, ACTION_SHAPE, DIST_PARAMS_DIM = (17,), (6,), 12  # HalfCheetah
STORAGE_STEPS = 2048


def step_arrays(envs: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One step from ``envs`` environments, in envpool's dtypes."""
    def floats(*shape):
        return rng.standard_normal((envs, *shape), dtype=np.float32)

    return {"observations": rng.standard_normal((envs, *OBSERVATION_SHAPE)),  # float64
            "actions": floats(*ACTION_SHAPE), "log_probs": floats(),
            "dist_params": floats(DIST_PARAMS_DIM), "values": floats(), "rewards": floats(),
            "terminated": rng.random(envs) < DONE_PROBABILITY / 2,
            "truncated": rng.random(envs) < DONE_PROBABILITY / 2}


def fill_call(storage_class, envs: int, steps: int, arrays) -> Callable[[], None]:
    """A call that resets a storage and inserts ``steps`` steps into it."""
    storage = storage_class(steps, envs, OBSERVATION_SHAPE, ACTION_SHAPE,
                            dist_params_dim=DIST_PARAMS_DIM)

    def fill():
        storage.reset()
        for _ in range(steps):
            storage.insert(**arrays)

    return fill


def bench_storage(env_counts, budget: Budget, rng, steps: int = STORAGE_STEPS,
                  family: str = "storage", op: str = "RolloutStorage.insert") -> list[Row]:
    """Time per ``insert``: whole rollouts of ``steps`` inserts (with one reset) are timed
    and divided by ``steps``."""
    rows = []
    for envs in env_counts:
        arrays = step_arrays(envs, rng)
        row = Row(family, op, f"N={envs} obs=(17,) f64", params={"N": envs, "T": steps})
        time_row(row, budget,
                 reference_fn=fill_call(reference.RolloutStorage, envs, steps, arrays),
                 native_fn=fill_call(minerva.RolloutStorage, envs, steps, arrays))
        row.reference_s /= steps
        row.native_s /= steps
        row.calls = {name: calls * steps for name, calls in row.calls.items()}
        rows.append(row)
        print(f"  {op} {row.shape}", file=sys.stderr)
    return rows


# ----------------------------------------------------------------------------- overhead


def bench_overhead(budget: Budget, rng, generator) -> list[Row]:
    """Each native op on minimal inputs; ``torch.add`` of 1-element tensors as the peer."""
    one, other = torch.ones(1), torch.ones(1)

    def add():
        return torch.add(one, other)

    gae_args = (*gae_inputs(1, 1, generator).values(), GAMMA, LAM)
    advantages, valid, eta = torch.ones(1), torch.ones(1, dtype=torch.bool), torch.tensor(ETA)
    rows = [
        time_row(Row("overhead", "gae", "T=1 N=1", peer="torch.add 1-elem"), budget,
                 reference_fn=lambda: reference.gae(*gae_args),
                 native_fn=lambda: ops.gae(*gae_args), peer_fn=add),
        time_row(Row("overhead", "topk_mask", "B=1", peer="torch.add 1-elem"), budget,
                 reference_fn=lambda: reference.topk_mask(advantages, valid, TOPK_FRACTION),
                 native_fn=lambda: ops.topk_mask(advantages, valid, TOPK_FRACTION),
                 peer_fn=add),
        time_row(Row("overhead", "vmpo_weights", "B=1", peer="torch.add 1-elem"), budget,
                 reference_fn=lambda: reference.vmpo_weights(advantages, valid, eta),
                 native_fn=lambda: ops.vmpo_weights(advantages, valid, eta), peer_fn=add),
    ]
    rows += bench_storage([1], budget, rng, family="overhead", op="RolloutStorage.insert")
    return rows


# ----------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    passed: bool | None  # None: not measured
    measured: str


def check_targets(rows: list[Row]) -> list[Target]:
    def find(family, shape):
        return next((r for r in rows if r.family == family and r.shape == shape), None)

    targets = []

    row = find("gae", "T=2048 N=1")
    targets.append(Target(
        "native GAE >= 100x reference at T=2048 N=1",
        None if row is None else row.speedup >= 100,
        "not measured" if row is None else f"{row.speedup:.0f}x"))

    row = find("gae", "T=128 N=4096")
    targets.append(Target(
        "native GAE within 2x of the bandwidth floor at T=128 N=4096",
        None if row is None else row.native_over_floor <= 2,
        "not measured" if row is None else
        f"{row.native_over_floor:.2f}x of a same-size copy "
        f"({row.native_s / row.params['floor_big_copy_s']:.2f}x of the 256 MB-copy floor)"))

    gae_peer = [r for r in rows if r.family == "gae" and r.peer_s is not None]
    slowest = min(gae_peer, key=lambda r: r.speedup_vs_peer, default=None)
    targets.append(Target(
        "native GAE faster than TorchRL at every shape",
        None if slowest is None else slowest.speedup_vs_peer > 1,
        "torchrl not installed" if slowest is None else
        f"min {slowest.speedup_vs_peer:.1f}x faster ({slowest.shape})"))

    topk = [r for r in rows if r.family == "topk"]
    worst = min(topk, key=lambda r: r.speedup_vs_peer, default=None)
    small = [r for r in topk if r.params["B"] <= 16384]
    worst_small = min(small, key=lambda r: r.speedup_vs_peer, default=None)
    targets.append(Target(
        "top-k+weights no slower than the torch composite at every B",
        None if worst is None else worst.speedup_vs_peer >= 1,
        "not measured" if worst is None else f"min {worst.speedup_vs_peer:.2f}x ({worst.shape})"))
    targets.append(Target(
        "top-k+weights >= 2x the torch composite at B <= 16k",
        None if worst_small is None else worst_small.speedup_vs_peer >= 2,
        "not measured" if worst_small is None else
        f"min {worst_small.speedup_vs_peer:.2f}x ({worst_small.shape})"))

    targets += check_cuda_targets(rows)

    overhead = [r for r in rows if r.family == "overhead"]
    heaviest = max(overhead, key=lambda r: r.native_s, default=None)
    targets.append(Target(
        "per-call overhead <= 10 us (every native op, storage insert N=1)",
        None if heaviest is None else heaviest.native_s <= 10e-6,
        "not measured" if heaviest is None else
        f"max {format_time(heaviest.native_s)} ({heaviest.op}); "
        + ", ".join(f"{r.op} {format_time(r.native_s)}" for r in overhead)))
    return targets


def check_cuda_targets(rows: list[Row]) -> list[Target]:
    gae = [r for r in rows if r.family == "gae-cuda"]
    topk = [r for r in rows if r.family == "topk-cuda"]
    if not gae and not topk:
        return []
    targets = []
    for name, family_rows, size in (("GAE", gae, lambda r: r.params["T"] * r.params["N"]),
                                    ("top-k+weights", topk, lambda r: r.params["B"])):
        big = [r for r in family_rows if size(r) >= 2**20]
        worst = min(big, key=lambda r: r.params["fraction_of_copy"], default=None)
        targets.append(Target(
            f"CUDA {name} >= 50% of copy bandwidth at sizes >= 1M",
            None if worst is None else worst.params["fraction_of_copy"] >= 0.5,
            "not measured" if worst is None else
            f"min {worst.params['fraction_of_copy']:.0%} ({worst.shape}); " + ", ".join(
                f"{r.shape} {r.params['fraction_of_copy']:.0%}" for r in big)))
        peers = [r for r in family_rows if size(r) >= 2**16 and r.peer_s is not None]
        slowest = min(peers, key=lambda r: r.speedup_vs_peer, default=None)
        targets.append(Target(
            f"CUDA {name} faster than its peer ({family_rows[0].peer if family_rows else ''}) "
            "at every size >= 64k",
            None if slowest is None else slowest.speedup_vs_peer > 1,
            "not measured" if slowest is None else
            f"min {slowest.speedup_vs_peer:.2f}x ({slowest.shape})"))
    long = next((r for r in gae if r.params["T"] == 2048 and r.params["N"] == 1), None)
    targets.append(Target(
        "CUDA GAE at T=2048 N=1 >= 10x a one-thread-per-column sequential kernel",
        None if long is None else long.params["single_thread_s"] / long.native_s >= 10,
        "not measured" if long is None else
        f"{long.params['single_thread_s'] / long.native_s:.1f}x "
        f"({format_time(long.params['single_thread_s'])} vs {format_time(long.native_s)})"))
    return targets


# ----------------------------------------------------------------------------- output


def format_time(seconds: float | None) -> str:
    if seconds is None:
        return ""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_ratio(ratio: float | None) -> str:
    if ratio is None:
        return ""
    return f"{ratio:.3g}x" if ratio < 1000 else f"{ratio:,.0f}x"


def markdown_table(rows: list[Row]) -> str:
    header = ["op", "shape", "reference", "native", "speed-up", "peer", "peer time",
              "native vs peer", "floor", "native / floor"]
    body = [[r.op, r.shape, format_time(r.reference_s), format_time(r.native_s),
             format_ratio(r.speedup), r.peer or "", format_time(r.peer_s),
             format_ratio(r.speedup_vs_peer), format_time(r.floor_s),
             format_ratio(r.native_over_floor)] for r in rows]
    return render_table(header, body, text_columns={0, 1, 5})


def cuda_markdown_table(rows: list[Row]) -> str:
    header = ["op", "shape", "reference (GPU)", "CUDA", "speed-up", "peer", "peer time",
              "CUDA vs peer", "fraction of copy"]
    body = [[r.op, r.shape, format_time(r.reference_s), format_time(r.native_s),
             format_ratio(r.speedup), r.peer or "", format_time(r.peer_s),
             format_ratio(r.speedup_vs_peer),
             "" if r.params.get("fraction_of_copy") is None
             else f"{r.params['fraction_of_copy']:.0%}"] for r in rows]
    return render_table(header, body, text_columns={0, 1, 5})


def render_table(header: list[str], body: list[list[str]], text_columns: set[int]) -> str:
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def render(line):
        cells = [cell.ljust(w) if i in text_columns else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(line, widths))]
        return "| " + " | ".join(cells) + " |"

    rule = ["-" * w if i in text_columns else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
    return "\n".join([render(header), render(rule), *map(render, body)])


def environment() -> dict[str, Any]:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model(),
            "python": platform.python_version(), "minerva": minerva.__version__,
            "native": ops.native_available(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "cuda_kernels": ops.cuda_kernels_available(),
            "torchrl": torchrl.__version__ if torchrl else None}


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help="where to write the results (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="shorter timing budgets and fewer shapes (a smoke test)")
    parser.add_argument("--no-cuda", action="store_true", help="skip the GPU table")
    args = parser.parse_args()
    use_cuda = (not args.no_cuda and torch.cuda.is_available()
                and ops.cuda_kernels_available())

    started = time.perf_counter()
    budget = QUICK if args.quick else FULL
    if args.quick:
        gae_shapes = [(128, 1), (128, 4096), (2048, 1), (2048, 64)]
        topk_sizes = [1024, 16384, 262144]
        storage_envs = [8]
        cuda_gae_shapes = [(128, 8), (2048, 1), (128, 8192), (2048, 8192)]
        cuda_topk_sizes = [1024, 1 << 20, 16 << 20]
    else:
        gae_shapes = [(t, n) for t in (128, 2048) for n in (1, 8, 64, 1024, 4096)]
        topk_sizes = [1024, 16384, 262144, 1048576]
        storage_envs = [8, 64]
        # T*N from 1k to 16M, wide (T=128) and long (T=2048)
        cuda_gae_shapes = [(128, n) for n in (8, 512, 8192, 131072)] + [
            (2048, n) for n in (1, 32, 512, 8192)]
        cuda_topk_sizes = [1 << p for p in (10, 14, 16, 18, 20, 22, 24)]

    env = environment()
    print(f"torch {env['torch']}, {env['threads']} threads, CPU: {env['cpu']}, "
          f"Python {env['python']}, minerva {env['minerva']} "
          f"({'native' if env['native'] else 'REFERENCE FALLBACK'}), "
          f"torchrl {env['torchrl'] or 'not installed'}")
    if not env["native"]:
        print("warning: minerva's native library did not load; 'native' times are the "
              "references", file=sys.stderr)
    if torchrl is None:
        print("note: torchrl is not installed (pip install 'minerva[bench]'); the GAE peer "
              "columns stay empty")

    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    print("timing (progress on stderr) ...", file=sys.stderr)
    bandwidth = measure_bandwidth(budget)
    rows = bench_gae(gae_shapes, budget, bandwidth, generator)
    rows += bench_topk(topk_sizes, budget, generator)
    rows += bench_storage(storage_envs, budget, rng)
    rows += bench_overhead(budget, rng, generator)
    gpu_bandwidth = None
    if use_cuda:
        gpu_bandwidth = measure_bandwidth(budget, megabytes=1024, device="cuda")
        rows += bench_gae(cuda_gae_shapes, budget, gpu_bandwidth, generator)
        rows += bench_topk(cuda_topk_sizes, budget, generator, gpu_bandwidth)
    targets = check_targets(rows)
    elapsed = time.perf_counter() - started

    print(f"copy bandwidth (read + write, {bandwidth.big_bytes // 2**20} MB float32 copy_): "
          f"{bandwidth.big_bytes_per_s / 1e9:.1f} GB/s")
    print()
    cpu_rows = [r for r in rows if not r.family.endswith("-cuda")]
    cuda_rows = [r for r in rows if r.family.endswith("-cuda")]
    print(markdown_table(cpu_rows))
    print()
    print("speed-up = reference / native; native vs peer = peer / native (> 1: native is "
          "faster); floor = time of a copy_ moving the bytes GAE reads and writes "
          "(T*N*22 bytes); native / floor = native / floor.")
    print("top-k peer with torch.topk's default sorted=True: " + ", ".join(
        f"{r.shape} {format_time(r.params['peer_sorted_s'])} "
        f"(native vs it {format_ratio(r.params['peer_sorted_s'] / r.native_s)})"
        for r in rows if r.family == "topk"))
    if gpu_bandwidth is not None:
        print()
        print(f"GPU: {env['gpu']}; copy bandwidth (read + write, 1 GB float32 copy_): "
              f"{gpu_bandwidth.big_bytes_per_s / 1e9:.0f} GB/s")
        print()
        print(cuda_markdown_table(cuda_rows))
        print()
        print("fraction of copy = (bytes the op must move / CUDA time) / copy bandwidth; GAE "
              "moves T*N*22 bytes, top-k + weights B*15. One-thread-per-column GAE: " + ", ".join(
                  f"{r.shape} {format_time(r.params['single_thread_s'])}"
                  for r in cuda_rows if "single_thread_s" in r.params))
    print()
    print("targets:")
    for target in targets:
        verdict = {True: "PASS", False: "MISS", None: "n/a "}[target.passed]
        print(f"  {verdict}  {target.name}: {target.measured}")
    print(f"\ntotal time {elapsed:.0f} s")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {"environment": env, "quick": args.quick, "budget": asdict(budget),
              "copy_bandwidth": asdict(bandwidth),
              "gpu_copy_bandwidth": asdict(gpu_bandwidth) if gpu_bandwidth else None,
              "elapsed_s": elapsed,
              "rows": [row.to_json() for row in rows],
              "targets": [asdict(target) for target in targets]}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
