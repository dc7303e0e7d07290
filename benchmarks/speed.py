"""Where a training run's time goes, each number measured beside its reference in one run.

    python benchmarks/speed.py update             # the update's GFLOP/s against torch.mm's
    python benchmarks/speed.py step               # one 64-sample gradient step against its matmuls
    python benchmarks/speed.py rollout            # rollout steps/s against raw envpool's
    python benchmarks/speed.py busy --baseline-python OLD/bin/python   # beside a busy core

``update``: one V-MPO update at the original trainer's hyperparameters on HalfCheetah-v5
(a rollout of 32,768 samples, 16 full-batch M-steps, (512, 256) tanh networks), its FLOPs
counted from the layers (forward 2·B·in·out per layer, backward twice that, less the first
layers' input gradients, plus the forward pass over the rollout after the M-steps), against
``torch.mm`` over the same matrix shapes in the same precision, timed in the same process:
float32 eager, bfloat16 eager, bfloat16 compiled.

``step``: the default continuous-control update on HalfCheetah-v5 (a rollout of 2,048
samples, 10 passes of 8 minibatches of 256, (256, 256) tanh networks) and the previous
default's 32 minibatches of 64, per gradient step and per part of it (the losses' forward and
backward, with the E-step; the gradients' clipping; the optimiser's step), eager and
compiled, against ``torch.mm`` over the step's matrix shapes: what is left is the per-op
overhead of small minibatches, not arithmetic.

``rollout``: the rollout phase (acting, stepping, storing, the batched value pass and the
advantages) of the HalfCheetah-v5 preset at 8 and 64 envs against envpool stepping the same
envs with random actions and nothing else, and the time per step in each phase.

``busy``: CartPole-v1 (the preset, 30k steps) and the HalfCheetah-v5 preset (20k steps) with
torch's default thread count, on an idle machine and beside one process that keeps a core
busy, for this minerva and another installation (``--baseline-python``).

Results print as GitHub-markdown tables and go to ``benchmarks/results/speed_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from minerva.config import TrainConfig
from minerva.presets import preset
from minerva.run_log import cpu_model
from minerva.trainers.vmpo.trainer import VMPOTrainer

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
from peers import ORIGINAL, timed_run  # noqa: E402  (the benchmarks folder is not a package)

RESULTS = BENCHMARKS / "results"


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def trainer_for(env_id: str, **options) -> VMPOTrainer:
    return VMPOTrainer.from_config(TrainConfig(**{**preset(env_id), "env_id": env_id,
                                                  "seed": 1, "progress": False, **options}))


def one_update(trainer: VMPOTrainer, batch) -> dict[str, float]:
    """The trainer's update of ``batch``, as the first of a run of the env's budget."""
    return trainer.algorithm(batch, batch.valid.shape[0], preset(trainer.env_id)["total_steps"])


# --- update -----------------------------------------------------------------------------------

def update_matmuls(agent: nn.Module, rows: int, m_steps: int,
                   rollout_pass: bool = True) -> list[tuple[int, int, int]]:
    """The ``(n, k, m)`` of every matmul ``[n, k] @ [k, m]`` one update runs, per layer:
    forward ``[B, in] @ [in, out]``, input gradient ``[B, out] @ [out, in]`` (not for a
    trunk's first layer, whose input is the data) and weight gradient
    ``[out, B] @ [B, in]``, for each M-step; then (``rollout_pass``) the forward pass over
    the rollout."""
    first_layers = {id(agent.policy_trunk[0]), id(agent.value_trunk[0])}
    shapes = []
    for layer in agent.modules():
        if isinstance(layer, nn.Linear):
            fan_in, fan_out = layer.in_features, layer.out_features
            step = [(rows, fan_in, fan_out), (fan_out, rows, fan_in)]
            if id(layer) not in first_layers:
                step.append((rows, fan_out, fan_in))
            shapes += step * m_steps + ([(rows, fan_in, fan_out)] if rollout_pass else [])
    return shapes


def matmul_seconds(shapes: list[tuple[int, int, int]], dtype: torch.dtype, repeats: int) -> float:
    """Seconds for ``torch.mm`` over all ``shapes`` in ``dtype`` (median of ``repeats``)."""
    operands = {shape: (torch.randn(shape[0], shape[1], dtype=dtype),
                        torch.randn(shape[1], shape[2], dtype=dtype)) for shape in set(shapes)}

    def run() -> None:
        for shape in shapes:
            torch.mm(*operands[shape])

    run()
    return median_seconds(run, repeats)


def update(repeats: int) -> dict:
    variants = {"float32 eager": {"compile_update": False},
                "bfloat16 eager": {"precision": "bfloat16", "compile_update": False},
                "bfloat16 compiled": {"precision": "bfloat16", "compile_update": True}}
    rows = {}
    for name, options in variants.items():
        trainer = trainer_for("HalfCheetah-v5", **ORIGINAL, **options)
        batch = trainer._collect_rollout().batch
        one_update(trainer, batch)  # warm-up (and compile)
        seconds = median_seconds(lambda: one_update(trainer, batch), repeats)
        shapes = update_matmuls(trainer.agent, batch.valid.shape[0], trainer.config.m_steps)
        flops = sum(2 * n * k * m for n, k, m in shapes)
        dtype = torch.bfloat16 if options.get("precision") == "bfloat16" else torch.float32
        mm_seconds = matmul_seconds(shapes, dtype, repeats)
        rows[name] = {"seconds": seconds, "gflops": flops / seconds / 1e9,
                      "mm_seconds": mm_seconds, "mm_gflops": flops / mm_seconds / 1e9,
                      "fraction_of_mm": mm_seconds / seconds,
                      "compile_seconds": trainer.algorithm.compile_seconds}
        trainer.close()
    print(f"One update at the original trainer's hyperparameters (HalfCheetah-v5, 32,768 "
          f"samples, 16 full-batch M-steps, (512, 256) tanh), {torch.get_num_threads()} "
          f"threads, median of {repeats}\n")
    print("| update | seconds | GFLOP/s | torch.mm GFLOP/s (same shapes) | share of torch.mm |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, row in rows.items():
        print(f"| {name} | {row['seconds']:.3f} | {row['gflops']:.0f} | {row['mm_gflops']:.0f} "
              f"| {100 * row['fraction_of_mm']:.0f}% |")
    return rows


STEP_PARTS = {"forward and backward": "backward", "clipping": "clip_gradients"}


def step(repeats: int) -> dict:
    variants = {"32 of 64, eager": {"compile_update": False, "num_minibatches": 32},
                "32 of 64, compiled": {"compile_update": True, "num_minibatches": 32},
                "8 of 256, eager": {"compile_update": False},
                "8 of 256, compiled (the default)": {"compile_update": True}}
    rows = {}
    for name, options in variants.items():
        trainer = trainer_for("HalfCheetah-v5", torch_threads=1, **options)
        update = trainer.algorithm
        parts: dict[str, float] = {}

        def timed(part: str, function: Callable) -> Callable:
            def run(*args, **kwargs):
                start = time.perf_counter()
                result = function(*args, **kwargs)
                parts[part] = parts.get(part, 0.0) + time.perf_counter() - start
                return result
            return run

        # the instance's methods wrapped with timers (the class is untouched)
        for part, method in STEP_PARTS.items():
            setattr(update, method, timed(part, getattr(update, method)))
        update.optimizer.step = timed("optimiser", update.optimizer.step)
        batch = trainer._collect_rollout().batch
        one_update(trainer, batch)  # warm-up (and compile)
        parts.clear()
        seconds = median_seconds(lambda: one_update(trainer, batch), repeats)
        config = trainer.config
        steps = config.m_steps * config.num_minibatches
        minibatch = batch.valid.shape[0] // config.num_minibatches
        shapes = update_matmuls(trainer.agent, minibatch, 1, rollout_pass=False)
        rows[name] = {
            "ms_per_step": 1e3 * seconds / steps,
            "ms_per_part": {part: 1e3 * total / (steps * repeats) for part, total in parts.items()},
            "mm_ms_per_step": 1e3 * matmul_seconds(shapes, torch.float32, 50 * repeats),
            "compile_seconds": update.compile_seconds,
            "minibatch": minibatch, "steps_per_update": steps}
        trainer.close()
    print(f"The continuous-control update's gradient steps (HalfCheetah-v5, a rollout of "
          f"2,048, (256, 256) tanh), one thread, median of {repeats} updates\n")
    print("| minibatches, update | ms per update | ms per step | forward + backward | "
          "clipping | optimiser | rest | torch.mm over its shapes | overhead share |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, row in rows.items():
        part = row["ms_per_part"]
        rest = row["ms_per_step"] - sum(part.values())
        print(f"| {name} | {row['ms_per_step'] * row['steps_per_update']:.0f} | "
              f"{row['ms_per_step']:.2f} | {part['forward and backward']:.2f} | "
              f"{part['clipping']:.2f} | {part['optimiser']:.2f} | {rest:.2f} | "
              f"{row['mm_ms_per_step']:.2f} | "
              f"{100 * (1 - row['mm_ms_per_step'] / row['ms_per_step']):.0f}% |")
    return rows


# --- rollout ----------------------------------------------------------------------------------

def raw_envpool_steps_per_second(env_id: str, num_envs: int, steps: int) -> float:
    import envpool

    env = envpool.make(env_id, env_type="gymnasium", num_envs=num_envs, seed=1)
    env.reset()
    space = env.action_space
    actions = np.random.default_rng(0).uniform(space.low, space.high,
                                               (64, num_envs, *space.shape))
    start = time.perf_counter()
    for step in range(steps):
        env.step(actions[step % 64])
    seconds = time.perf_counter() - start
    env.close()
    return steps * num_envs / seconds


def rollout(rollouts: int) -> dict:
    env_id = "HalfCheetah-v5"
    rows = {}
    for num_envs in (8, 64):
        rollout_steps = 8 * 2048 // num_envs
        raw = raw_envpool_steps_per_second(env_id, num_envs, rollouts * rollout_steps)
        trainer = trainer_for(env_id, num_envs=num_envs, rollout_steps=rollout_steps)
        trainer._collect_rollout()  # warm-up
        trainer.timer.seconds.clear()
        start = time.perf_counter()
        for _ in range(rollouts):
            trainer._collect_rollout()
        seconds = time.perf_counter() - start
        steps = rollouts * rollout_steps * num_envs
        row = {"raw_envpool": raw, "steps_per_second": steps / seconds,
               "us_per_step": {phase: 1e6 * s / (rollouts * rollout_steps)
                               for phase, s in trainer.timer.seconds.items()}}
        trainer.close()
        rows[num_envs] = row
    print(f"{env_id} rollouts (the preset's networks; {rollouts} rollouts of 16,384 steps), "
          "against envpool stepping the same envs with random actions\n")
    print("| envs | raw envpool steps/s | rollout steps/s | share of raw | "
          "µs per step: inference, env step, storage, values + advantages |")
    print("| ---: | ---: | ---: | ---: | --- |")
    for num_envs, row in rows.items():
        phases = ", ".join(f"{row['us_per_step'].get(p, 0.0):.0f}"
                           for p in ("inference", "env_step", "storage", "advantages"))
        print(f"| {num_envs} | {row['raw_envpool']:,.0f} | {row['steps_per_second']:,.0f} | "
              f"{100 * row['steps_per_second'] / row['raw_envpool']:.0f}% | {phases} |")
    return rows


# --- a busy machine ---------------------------------------------------------------------------

BUSY_LOOP = "while True: pass"


def busy(baseline_python: str) -> dict:
    setups = {"CartPole-v1": {"env_id": "CartPole-v1", "steps": 30_720},
              "HalfCheetah-v5 preset": {"env_id": "HalfCheetah-v5", "steps": 20_480}}
    sides = {"baseline": baseline_python, "this": sys.executable}
    results: dict[str, dict] = {}
    for setup, options in setups.items():
        results[setup] = {}
        for side, python in sides.items():
            idle = timed_run(python, {**options, "seed": 1})
            competitor = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
            try:
                time.sleep(0.5)
                loaded = timed_run(python, {**options, "seed": 1})
            finally:
                competitor.kill()
                competitor.wait()
            results[setup][side] = {"idle": idle["steps_per_second"],
                                    "busy": loaded["steps_per_second"]}
    print(f"steps/s with torch's default threads ({torch.get_num_threads()}), idle and beside "
          "one process that keeps a core busy\n")
    print("| run | code | idle steps/s | busy steps/s | slowdown |")
    print("| --- | --- | ---: | ---: | ---: |")
    for setup, by_side in results.items():
        for side, row in by_side.items():
            print(f"| {setup} | {side} | {row['idle']:,.0f} | {row['busy']:,.0f} | "
                  f"{row['idle'] / row['busy']:.2f}x |")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("update").add_argument("--repeats", type=int, default=3)
    commands.add_parser("step").add_argument("--repeats", type=int, default=3)
    commands.add_parser("rollout").add_argument("--rollouts", type=int, default=4)
    commands.add_parser("busy").add_argument(
        "--baseline-python", required=True,
        help="python of an environment with the minerva to compare")
    args = parser.parse_args()
    if args.command == "update":
        results = update(args.repeats)
    elif args.command == "step":
        results = step(args.repeats)
    elif args.command == "rollout":
        results = rollout(args.rollouts)
    else:
        results = busy(args.baseline_python)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"speed_{args.command}.json"
    path.write_text(json.dumps({"machine": cpu_model(), "threads": torch.get_num_threads(),
                                "results": results}, indent=2) + "\n")
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()
