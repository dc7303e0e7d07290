"""minerva against the tools users know, each pair measured in one run on one machine.

    python benchmarks/peers.py cartpole [--seeds 3]        # wall-clock to eval return 475
    python benchmarks/peers.py throughput [--steps 50000]  # HalfCheetah-v5 steps/s

``cartpole``: minerva's V-MPO (the CartPole-v1 preset, envpool) against Stable-Baselines3's
PPO with the RL Baselines3 Zoo hyperparameters for CartPole-v1 (8 envs, n_steps 32, batch
256, 20 epochs, gamma 0.98, gae_lambda 0.8, linearly decayed lr 1e-3 and clip 0.2). Both
evaluate every 10k environment steps on 10 deterministic episodes and stop at a mean of 475;
the clock covers training and evaluation, not imports. Needs the ``bench`` extra.

``throughput``: end-to-end environment steps/s on HalfCheetah-v5 with 8 envs (otherwise the
preset),
minerva as it is (envpool, native ops and storage) against the same algorithm run the way
the original trainer did: gymnasium's ``SyncVectorEnv`` and the pure-Python reference ops and
storage (``--backend gymnasium --reference-ops``).

Results print as GitHub-markdown tables and go to ``benchmarks/results/peers_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from minerva.config import TrainConfig
from minerva.logging import cpu_model
from minerva.presets import preset
from minerva.trainers.vmpo.trainer import VMPOTrainer

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 475.0
EVAL_EVERY = 10_000
BUDGET = 100_000


def minerva_cartpole(seed: int) -> dict:
    options = {**preset("CartPole-v1"), "env_id": "CartPole-v1", "seed": seed,
               "total_steps": BUDGET, "eval_every": EVAL_EVERY, "eval_episodes": 10,
               "target_return": TARGET, "progress": False}
    trainer = VMPOTrainer.from_config(TrainConfig(**options))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = trainer.train(BUDGET, out)
        seconds = time.perf_counter() - start
    trainer.close()
    solved = result.get("eval/return_mean", 0.0) >= TARGET
    return {"seed": seed, "solved": solved, "steps": trainer.global_step, "seconds": seconds,
            "eval_return": result.get("eval/return_mean")}


def sb3_cartpole(seed: int) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
    from stable_baselines3.common.env_util import make_vec_env

    def linear(initial: float):
        return lambda progress_remaining: progress_remaining * initial

    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=seed + 1000)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98,
                n_epochs=20, ent_coef=0.0, learning_rate=linear(1e-3), clip_range=linear(0.2),
                seed=seed, device="cpu", verbose=0)
    stop = StopTrainingOnRewardThreshold(reward_threshold=TARGET, verbose=0)
    callback = EvalCallback(eval_env, callback_on_new_best=stop, n_eval_episodes=10,
                            eval_freq=EVAL_EVERY // 8, deterministic=True, verbose=0)
    start = time.perf_counter()
    model.learn(total_timesteps=BUDGET, callback=callback)
    seconds = time.perf_counter() - start
    solved = callback.best_mean_reward >= TARGET
    return {"seed": seed, "solved": solved, "steps": model.num_timesteps, "seconds": seconds,
            "eval_return": float(callback.last_mean_reward)}


def cartpole(seeds: int) -> dict:
    rows = {"minerva V-MPO (envpool)": [minerva_cartpole(s) for s in range(1, seeds + 1)],
            "SB3 PPO (zoo)": [sb3_cartpole(s) for s in range(1, seeds + 1)]}
    print(f"CartPole-v1: wall-clock to an evaluation return of {TARGET:g} "
          f"(budget {BUDGET:,} steps, evaluation every {EVAL_EVERY:,})\n")
    print("| trainer | seeds solved | steps to solve (per seed) | wall-clock (per seed) | "
          "mean wall-clock |")
    print("| --- | ---: | --- | --- | ---: |")
    for name, runs in rows.items():
        solved = [r for r in runs if r["solved"]]
        mean = statistics.mean(r["seconds"] for r in solved) if solved else float("nan")
        steps = ", ".join(f"{r['steps']:,}" for r in runs)
        seconds = ", ".join(f"{r['seconds']:.1f} s" for r in runs)
        print(f"| {name} | {len(solved)}/{len(runs)} | {steps} | {seconds} | {mean:.1f} s |")
    return rows


def steps_per_second(**overrides) -> float:
    steps = overrides.pop("steps")
    options = {**preset("HalfCheetah-v5"), "env_id": "HalfCheetah-v5", "seed": 1,
               "num_envs": 8, "total_steps": steps, "eval_every": 10 * steps,
               "eval_episodes": 1, "progress": False, **overrides}
    trainer = VMPOTrainer.from_config(TrainConfig(**options))
    with tempfile.TemporaryDirectory() as out:
        trainer.train(steps, out)
        events = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    trainer.close()
    # the last update event: all steps, no evaluation yet
    return [e for e in events if "charts/steps_per_second" in e][-1]["charts/steps_per_second"]


def throughput(steps: int) -> dict:
    ours = steps_per_second(steps=steps)
    original = steps_per_second(steps=steps, backend="gymnasium", reference_ops=True)
    print(f"HalfCheetah-v5, 8 envs, {steps:,} steps, updates included\n")
    print("| setup | steps/s |")
    print("| --- | ---: |")
    print(f"| minerva: envpool + native ops and storage | {ours:,.0f} |")
    print(f"| gymnasium SyncVectorEnv + reference ops and storage | {original:,.0f} |")
    print(f"| ratio | {ours / original:.2f}x |")
    return {"minerva": ours, "gymnasium_reference": original, "ratio": ours / original}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("cartpole").add_argument("--seeds", type=int, default=3)
    commands.add_parser("throughput").add_argument("--steps", type=int, default=50_000)
    args = parser.parse_args()
    results = cartpole(args.seeds) if args.command == "cartpole" else throughput(args.steps)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"peers_{args.command}.json"
    path.write_text(json.dumps({"machine": cpu_model(), "results": results}, indent=2) + "\n")
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()
