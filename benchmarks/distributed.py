"""Steps/s of one process against ``torchrun`` ranks, and what the ranks exchange per update.

    python benchmarks/distributed.py --envs CartPole-v1 HalfCheetah-v5 --ranks 2 --steps 100000

Each env trains with its preset for ``--steps`` steps, once in one process and once as
``--ranks`` ranks (each rank with the preset's ``num_envs``, so the global batch grows with
the ranks), one torch thread per process, without evaluations (``--eval-every`` beyond the
budget) and to the whole budget. Reported: the last ``charts/steps_per_second`` of each
run (all ranks' steps), their ratio, and the bytes each rank sends and receives per update,
from the agent's parameter count and the rollout's size:

- per gradient step (``m_steps x num_minibatches`` of them), one all-reduce of every
  gradient (float32), for which a ring all-reduce moves 2 (K - 1) / K of the buffer;
- per rollout, the all-gather of the advantages (float32) and valid flags (uint8), and of
  the observation and reward statistics (float64 count, mean, variance), plus two flags.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from learning import Job, report_failures, run_all

from minerva import envs
from minerva.config import TrainConfig
from minerva.networks import VMPOAgent
from minerva.presets import preset

RESULTS = Path(__file__).resolve().parent / "results" / "distributed.json"


def exchanged_bytes(env_id: str, ranks: int) -> dict[str, float]:
    """What one rank sends and receives per update (see the module docstring)."""
    config = TrainConfig(**{**preset(env_id), "env_id": env_id})
    observation_space, action_space = envs.env_spaces(env_id)
    observation_box = envs.supported_observation_box(env_id, observation_space, action_space)
    agent = VMPOAgent(observation_box, action_space, config.policy_layer_sizes,
                      config.value_layer_sizes, shared_encoder=config.shared_encoder)
    parameters = sum(p.numel() for p in agent.parameters()) + 1 + (1 if agent.discrete else 2)
    steps = config.m_steps * config.num_minibatches
    ring = 2 * (ranks - 1) / ranks
    gradients = steps * 4 * parameters * ring
    rows = config.rollout_steps * config.num_envs
    observation_size = int(observation_box.shape[0]) if observation_box.shape else 1
    gathered = (ranks - 1) * (rows * (4 + 1) + 8 * (1 + 2 * observation_size) + 8 * 3)
    return {"parameters": parameters, "gradient_steps": steps,
            "gradient_bytes": gradients, "rollout_bytes": gathered,
            "total_bytes": gradients + gathered}


def plan(env_id: str, ranks: int, steps: int, out: Path) -> list[Job]:
    common = ["--env-id", env_id, "--total-steps", str(steps), "--torch-threads", "1",
              "--no-progress", "--target-return", "none", "--eval-every", str(10 * steps)]
    single = out / f"{env_id}-1"
    many = out / f"{env_id}-{ranks}"
    return [
        Job(env_id, 1, single, (sys.executable, "-P", "-m", "minerva.train", *common,
                                "--out-dir", str(single))),
        Job(env_id, ranks, many, (sys.executable, "-P", "-m", "torch.distributed.run",
                                  "--nproc-per-node", str(ranks), "-m", "minerva.train",
                                  *common, "--out-dir", str(many))),
    ]


def steps_per_second(run: Path) -> float:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [e["charts/steps_per_second"] for e in events if "charts/steps_per_second" in e][-1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "HalfCheetah-v5"])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for env_id in args.envs:
            jobs = plan(env_id, args.ranks, args.steps, Path(folder))
            failed = run_all(jobs, 1)  # one at a time: each run has the machine to itself
            if failed:
                print(report_failures(failed), file=sys.stderr)
                return 1
            single, many = (steps_per_second(job.out_dir) for job in jobs)
            rows.append({"env_id": env_id, "ranks": args.ranks, "steps": args.steps,
                         "steps_per_second_1": single, "steps_per_second_k": many,
                         "speedup": many / single, **exchanged_bytes(env_id, args.ranks)})
    print(f"| env | steps/s, 1 process | steps/s, {args.ranks} ranks | ratio | parameters | "
          "gradient steps per update | sent and received per update and rank |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['env_id']} | {row['steps_per_second_1']:,.0f} | "
              f"{row['steps_per_second_k']:,.0f} | {row['speedup']:.2f}x | "
              f"{row['parameters']:,} | {row['gradient_steps']} | "
              f"{row['total_bytes'] / 2**20:,.1f} MiB "
              f"({row['gradient_bytes'] / 2**20:,.1f} MiB gradients) |")
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
