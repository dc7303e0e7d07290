"""minerva against the tools users know and against an earlier minerva, each comparison
measured in one run on one machine.

    python benchmarks/peers.py cartpole [--seeds 5]
    python benchmarks/peers.py throughput --baseline-python OLD/bin/python [--iterations 5]
    python benchmarks/peers.py ppo [--env-id Hopper-v5] [--steps 100000] [--repeats 2]

``cartpole``: wall clock to an evaluation return of 475 on CartPole-v1: minerva's V-MPO (the
CartPole-v1 preset, envpool) against Stable-Baselines3's PPO with the RL Baselines3 Zoo
hyperparameters for CartPole-v1 (8 envs, n_steps 32, batch 256, 20 epochs, gamma 0.98,
gae_lambda 0.8, linearly decayed lr 1e-3 and clip 0.2). Both evaluate every 2,048
environment steps on 10 deterministic episodes and stop at a mean of 475 or at 100k steps;
each clock covers training only: imports, construction and the evaluations are left out.
SB3 runs with torch's default thread count and with one thread (its faster setting for these
small networks, which minerva's thread policy picks by itself); the speed-up is against the
faster of the two. Needs the ``bench`` extra.

``throughput``: end-to-end environment steps/s and the time per phase, at the original V-MPO
trainer's hyperparameters on HalfCheetah-v5 (8 envs, 4,096 steps per env per rollout, 16
full-batch M-steps, (512, 256) tanh networks) and at the HalfCheetah-v5 preset, for:
another installation of minerva (``--baseline-python``: the interpreter of an environment
where it is installed, e.g. a ``git worktree`` of an earlier commit) with its defaults, and
this one eager (``--no-compile-update``) and with its defaults (the HalfCheetah-v5 preset
compiles the update). bfloat16 is left out: on a CPU without native bfloat16 its matmuls are
emulated (``speed.py update`` measures it). Every run is its own
process (:mod:`timed_run`), one after another, ``--repeats`` times interleaved; each side's
median run is reported (this machine's speed drifts by 10-20% from run to run). Evaluation
and compile time are left out of the clock (the compile time is reported).

``ppo``: PPO's training speed (environment steps/s, and the wall clock that makes per 1M
steps) on a MuJoCo env: minerva's PPO (its continuous-control preset, envpool) against
Stable-Baselines3's PPO with the same hyperparameters (CleanRL's ``ppo_continuous_action``:
one env, 2,048 steps per rollout, 10 epochs of minibatches of 64, lr 3e-4 annealed, gamma
0.99, lambda 0.95, clip 0.2, (64, 64) tanh, observation and reward normalisation with
VecNormalize) on gymnasium's env, one after the other, ``--repeats`` times interleaved; the
clock covers training only (no evaluation). SB3 runs with one torch thread, as minerva does.

Results print as GitHub-markdown tables and go to ``benchmarks/results/peers_<name>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minerva.config import TrainConfig
from minerva.presets import preset
from minerva.run_log import cpu_model
from minerva.trainers.ppo.trainer import PPOTrainer
from minerva.trainers.vmpo.trainer import VMPOTrainer

RESULTS = Path(__file__).resolve().parent / "results"
TIMED_RUN = Path(__file__).resolve().parent / "timed_run.py"
TARGET = 475.0
EVAL_EVERY = 2_048
EVAL_EPISODES = 10
BUDGET = 100_000


# --- CartPole race ----------------------------------------------------------------------------

def minerva_cartpole(seed: int) -> dict:
    options = {**preset("CartPole-v1"), "env_id": "CartPole-v1", "seed": seed,
               "total_steps": BUDGET, "eval_every": EVAL_EVERY,
               "eval_episodes": EVAL_EPISODES, "target_return": TARGET, "progress": False}
    trainer = VMPOTrainer.from_config(TrainConfig(**options))
    # the trainer's console lines would bury the table (and printing them is not training)
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        result = trainer.train(BUDGET, out)
        seconds = time.perf_counter() - start
    trainer.close()
    evaluation = trainer.timer.seconds["evaluation"]
    return {"seed": seed, "solved": result.get("eval/return_mean", 0.0) >= TARGET,
            "steps": trainer.global_step, "seconds": seconds - evaluation,
            "evaluation_seconds": evaluation, "eval_return": result.get("eval/return_mean")}


def sb3_cartpole(seed: int, threads: int) -> dict:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
    from stable_baselines3.common.env_util import make_vec_env

    class TimedEvalCallback(EvalCallback):
        """EvalCallback that keeps the seconds its evaluations take."""

        evaluation_seconds = 0.0

        def _on_step(self) -> bool:
            start = time.perf_counter()
            keep_going = super()._on_step()
            if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
                self.evaluation_seconds += time.perf_counter() - start
            return keep_going

    def linear(initial: float):
        return lambda progress_remaining: progress_remaining * initial

    num_envs = 8
    env = make_vec_env("CartPole-v1", n_envs=num_envs, seed=seed)
    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=seed + 1000)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98,
                n_epochs=20, ent_coef=0.0, learning_rate=linear(1e-3), clip_range=linear(0.2),
                seed=seed, device="cpu", verbose=0)
    stop = StopTrainingOnRewardThreshold(reward_threshold=TARGET, verbose=0)
    # eval_freq counts vector-env steps, each of num_envs environment steps
    callback = TimedEvalCallback(eval_env, callback_on_new_best=stop,
                                 n_eval_episodes=EVAL_EPISODES,
                                 eval_freq=EVAL_EVERY // num_envs, deterministic=True, verbose=0)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        model.learn(total_timesteps=BUDGET, callback=callback)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous_threads)
    return {"seed": seed, "solved": callback.best_mean_reward >= TARGET,
            "steps": model.num_timesteps, "seconds": seconds - callback.evaluation_seconds,
            "evaluation_seconds": callback.evaluation_seconds,
            "eval_return": float(callback.last_mean_reward)}


def cartpole(seeds: int) -> dict:
    import torch

    threads = torch.get_num_threads()
    ours = "minerva V-MPO (envpool)"
    peers = {f"SB3 PPO (zoo), {threads} threads": threads, "SB3 PPO (zoo), 1 thread": 1}
    rows: dict[str, list[dict]] = {ours: [], **{name: [] for name in peers}}
    for seed in range(1, seeds + 1):  # interleaved, so drifts in machine speed hit all
        rows[ours].append(minerva_cartpole(seed))
        for name, peer_threads in peers.items():
            rows[name].append(sb3_cartpole(seed, peer_threads))
    print(f"CartPole-v1: wall clock to an evaluation return of {TARGET:g} (both evaluated "
          f"every {EVAL_EVERY:,} steps on {EVAL_EPISODES} deterministic episodes, evaluation "
          f"time excluded; budget {BUDGET:,} steps; seeds 1-{seeds})\n")
    print("| trainer | seeds solved | steps to solve (per seed) | training seconds (per seed) "
          "| median seconds |")
    print("| --- | ---: | --- | --- | ---: |")
    medians = {}
    for name, runs in rows.items():
        solved = [r for r in runs if r["solved"]]
        medians[name] = (statistics.median(r["seconds"] for r in solved) if solved
                         else float("nan"))
        steps = ", ".join(f"{r['steps']:,}" for r in runs)
        seconds = ", ".join(f"{r['seconds']:.1f}" for r in runs)
        print(f"| {name} | {len(solved)}/{len(runs)} | {steps} | {seconds} | "
              f"{medians[name]:.2f} s |")
    fastest_peer = min(peers, key=lambda name: medians[name])
    speedup = medians[fastest_peer] / medians[ours]
    print(f"\nmedian speed-up against the faster SB3 setting ({fastest_peer}): {speedup:.2f}x")
    return {"runs": rows, "median_seconds": medians, "speedup": speedup,
            "fastest_peer": fastest_peer}


# --- throughput -------------------------------------------------------------------------------

# --- PPO speed -----------------------------------------------------------------------------

def minerva_ppo(env_id: str, steps: int, seed: int) -> dict:
    options = {**preset(env_id, "ppo"), "algo": "ppo", "env_id": env_id, "seed": seed,
               "total_steps": steps,
               "eval_every": steps, "eval_episodes": 1, "progress": False, "torch_threads": 1}
    trainer = PPOTrainer.from_config(TrainConfig(**options))
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        trainer.train(steps, out)
        seconds = time.perf_counter() - start - trainer.timer.seconds["evaluation"]
    trainer.close()
    return {"steps": trainer.global_step, "seconds": seconds}


def sb3_ppo(env_id: str, steps: int, seed: int) -> dict:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env = VecNormalize(make_vec_env(env_id, n_envs=1, seed=seed), gamma=0.99)
    model = PPO("MlpPolicy", env, n_steps=2048, batch_size=64, n_epochs=10,
                learning_rate=lambda remaining: 3e-4 * remaining, gamma=0.99, gae_lambda=0.95,
                clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, seed=seed,
                device="cpu", verbose=0)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        model.learn(total_timesteps=steps)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous_threads)
    env.close()
    return {"steps": model.num_timesteps, "seconds": seconds}


def ppo_speed(env_id: str, steps: int, repeats: int) -> dict:
    sides = {"minerva PPO (envpool)": minerva_ppo, "SB3 PPO (gymnasium)": sb3_ppo}
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for repeat in range(repeats):  # interleaved, so drifts in machine speed hit both
        for side, run in sides.items():
            runs[side].append(run(env_id, steps, repeat + 1))
    results = {side: {"runs": side_runs, "steps_per_second": statistics.median(
        r["steps"] / r["seconds"] for r in side_runs)} for side, side_runs in runs.items()}
    ours = results["minerva PPO (envpool)"]["steps_per_second"]
    print(f"{env_id}: PPO training speed, median of {repeats} runs of {steps:,} steps each "
          "(one torch thread, no evaluation)\n")
    print("| trainer | steps/s | wall clock per 1M steps | minerva's speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for side, result in results.items():
        rate = result["steps_per_second"]
        print(f"| {side} | {rate:,.0f} | {1e6 / rate / 60:.1f} min | {ours / rate:.2f}x |")
    return {"env_id": env_id, "steps": steps, **results}


ORIGINAL = {"num_envs": 8, "rollout_steps": 4096, "m_steps": 16, "num_minibatches": 1,
            "policy_layer_sizes": [512, 256], "value_layer_sizes": [512, 256]}
PHASES = ("inference", "env_step", "storage", "advantages", "update")


def timed_run(python: str, options: dict) -> dict:
    """One run of :mod:`timed_run` with ``python``; its JSON result."""
    completed = subprocess.run([python, "-P", str(TIMED_RUN), json.dumps(options)],
                               capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{python} {TIMED_RUN.name} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def throughput(baseline_python: str, iterations: int, repeats: int) -> dict:
    setups = {
        "original trainer's hyperparameters": {**ORIGINAL, "steps": iterations * 8 * 4096},
        "HalfCheetah-v5 preset": {"steps": iterations * 8 * 2048},
    }
    sides = {"baseline (its defaults)": (baseline_python, {}),
             "this (float32 eager)": (sys.executable, {"compile_update": False}),
             "this (its defaults)": (sys.executable, {})}
    runs: dict[str, dict[str, list[dict]]] = {setup: {side: [] for side in sides}
                                              for setup in setups}
    for _ in range(repeats):  # interleaved, so drifts in machine speed hit every side
        for setup, options in setups.items():
            for side, (python, extra) in sides.items():
                runs[setup][side].append(timed_run(python, {"env_id": "HalfCheetah-v5",
                                                            "seed": 1, **options, **extra}))
    # each side's median run by steps/s
    results = {setup: {side: sorted(side_runs, key=lambda r: r["steps_per_second"])[
        len(side_runs) // 2] | {"steps_per_second_all": [r["steps_per_second"]
                                                          for r in side_runs]}
        for side, side_runs in by_side.items()} for setup, by_side in runs.items()}
    print(f"HalfCheetah-v5, end to end (evaluation and compile time excluded); each side's "
          f"median of {repeats} runs, and its seconds per 1,000 steps in each phase\n")
    print("| setup | code | steps/s | vs baseline | " + " | ".join(PHASES) + " | compile s |")
    print("| --- | --- | ---: | ---: |" + " ---: |" * (len(PHASES) + 1))
    for setup, by_side in results.items():
        baseline = by_side["baseline (its defaults)"]["steps_per_second"]
        for side, run in by_side.items():
            per_k = [1000 * run["phases"].get(p, 0.0) / run["steps"] for p in PHASES]
            print(f"| {setup} | {side} | {run['steps_per_second']:,.0f} | "
                  f"{run['steps_per_second'] / baseline:.2f}x | "
                  + " | ".join(f"{s:.3f}" for s in per_k)
                  + f" | {run['compile_seconds']:.1f} |")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("cartpole").add_argument("--seeds", type=int, default=5)
    throughput_parser = commands.add_parser("throughput")
    throughput_parser.add_argument("--baseline-python", required=True,
                                   help="python of an environment with the minerva to compare")
    throughput_parser.add_argument("--iterations", type=int, default=5,
                                   help="rollouts + updates per run")
    throughput_parser.add_argument("--repeats", type=int, default=3,
                                   help="runs per side (the median is reported)")
    ppo_parser = commands.add_parser("ppo")
    ppo_parser.add_argument("--env-id", default="Hopper-v5")
    ppo_parser.add_argument("--steps", type=int, default=100_000, help="steps per run")
    ppo_parser.add_argument("--repeats", type=int, default=2,
                            help="runs per side (the median is reported)")
    args = parser.parse_args()
    if args.command == "cartpole":
        results = cartpole(args.seeds)
    elif args.command == "ppo":
        results = ppo_speed(args.env_id, args.steps, args.repeats)
    else:
        results = throughput(args.baseline_python, args.iterations, args.repeats)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"peers_{args.command}.json"
    path.write_text(json.dumps({"machine": cpu_model(), "results": results}, indent=2) + "\n")
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()
