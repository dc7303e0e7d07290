"""The benchmarks' own arithmetic and the timed run they share, on small cases."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from minerva.networks import VMPOAgent

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (with the folder on sys.path while it loads:
    the benchmarks import each other)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_benchmark",
                                                      BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.fixture(scope="module")
def speed():
    return load_benchmark("speed")


def test_update_matmuls_count_every_layer_forward_and_backward(speed):
    observations = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    actions = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    agent = VMPOAgent(observations, actions, (4, 5), (6,))
    shapes = speed.update_matmuls(agent, rows=10, m_steps=2)
    # per M-step: forward and weight gradient, 2·B·in·out each, and the input gradient
    # except for the trunks' first layers; then one forward pass over the rollout:
    # (3,4): 2·4·120 + 240, (4,5): 2·6·200 + 400, (3,6): 2·4·180 + 360,
    # value head (6,1): 2·6·60 + 120, mean and log-std heads (5,1): 2·6·50 + 100 each
    assert sum(2 * n * k * m for n, k, m in shapes) == 1200 + 2800 + 1800 + 840 + 700 + 700
    assert len(shapes) == 2 * (2 * 2 + 1) + 4 * (3 * 2 + 1)
    assert (10, 3, 4) in shapes and (4, 10, 3) in shapes and (10, 4, 3) not in shapes
    # one gradient step alone: the same per layer, without the pass over the rollout
    step = speed.update_matmuls(agent, rows=10, m_steps=1, rollout_pass=False)
    assert len(step) == 2 * 2 + 4 * 3
    assert sum(2 * n * k * m for n, k, m in step) == (1200 - 240 + 2800 - 400 + 1800 - 360
                                                      + 840 - 120 + 700 - 100 + 700 - 100) // 2


def test_the_speed_benchmark_updates_as_the_trainer_does(speed):
    pytest.importorskip("envpool")
    trainer = speed.trainer_for("HalfCheetah-v5", compile_update=False, rollout_steps=16,
                                num_envs=2, torch_threads=1)
    batch = trainer._collect_rollout().batch
    statistics = speed.one_update(trainer, batch)
    trainer.close()
    assert math.isfinite(statistics["losses/policy_nll"]) and statistics["charts/policy_lr"] > 0


@pytest.mark.slow
def test_timed_run_reports_steps_phases_and_leaves_evaluation_out():
    pytest.importorskip("envpool")
    options = {"env_id": "CartPole-v1", "steps": 1024, "seed": 3, "torch_threads": 1}
    completed = subprocess.run([sys.executable, "-P", str(BENCHMARKS / "timed_run.py"),
                                json.dumps(options)], capture_output=True, text=True,
                               timeout=120, check=True)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["steps"] == 1024
    assert result["steps_per_second"] == pytest.approx(1024 / result["seconds"])
    assert {"inference", "env_step", "storage", "update"} <= set(result["phases"])
    assert "evaluation" not in result["phases"] and result["compile_seconds"] == 0.0
    assert sum(result["phases"].values()) <= result["seconds"]


@pytest.fixture(scope="module")
def resume_benchmark():
    return load_benchmark("resume")


def _write_events(folder: Path, events: list[dict]) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def test_resume_comparison_finds_where_the_runs_part(resume_benchmark, tmp_path):
    def update(step, eta, seconds, last100=None):
        event = {"global_step": step, "losses/eta": eta, "time/elapsed_s": seconds,
                 "time/update_s": seconds, "charts/steps_per_second": 100.0 / seconds}
        if last100 is not None:
            event["charts/episode_return_last100"] = last100
        return event

    def evaluation(step, value):
        return {"global_step": step, "eval/return_mean": value}

    shared = [update(100, 1.0, 1.0), update(200, 1.1, 2.0, 5.0), evaluation(200, -50.0)]
    _write_events(tmp_path / "seed4-uninterrupted", [
        *shared, update(300, 1.2, 3.0, 6.0), evaluation(300, -40.0),
        update(400, 1.3, 4.0, 7.0), evaluation(400, -30.0)])
    # the same events up to the checkpoint (timings apart), then other data
    _write_events(tmp_path / "seed4-stopped", [
        {**event, "time/elapsed_s": 9.0} for event in shared])
    _write_events(tmp_path / "seed4-resumed", [
        update(300, 1.25, 0.5, 8.0), evaluation(300, -60.0),
        update(400, 1.35, 1.0, 9.0), evaluation(400, -20.0)])
    row = resume_benchmark.compare_seed(tmp_path, 4)
    assert row["checkpoint_step"] == 200 and row["identical_until"] == 200
    assert row["first_update_after"] == {"global_step": 300, "eta_uninterrupted": 1.2,
                                         "eta_resumed": 1.25}
    assert row["uninterrupted"] == {"eval_after_checkpoint": -35.0, "final_eval": -30.0,
                                    "last100": 7.0}
    assert row["resumed"] == {"eval_after_checkpoint": -40.0, "final_eval": -20.0,
                              "last100": 9.0}
    summary = resume_benchmark.summarize(tmp_path, [4], "Toy-v0")
    assert summary["over_seeds"]["resumed/final_eval"] == {"mean": -20.0, "std": 0.0}
    assert "| 4 | 200 | 200 | 1.2000 / 1.2500 |" in (tmp_path / "summary.md").read_text()


def test_distributed_volume_counts_gradients_and_gathers():
    pytest.importorskip("envpool")
    volume = load_benchmark("distributed").exchanged_bytes("CartPole-v1", 2)
    # CartPole's preset: 4 observations, (64, 64) tanh trunks, 2 logits, 1 value; eta and
    # one alpha: 2 x (4·64 + 64 + 64·64 + 64) + 64·2 + 2 + 64 + 1 + 2 = 9,157
    assert volume["parameters"] == 9_157 and volume["gradient_steps"] == 8
    assert volume["gradient_bytes"] == 8 * 4 * 9_157 * 1.0  # ring factor 2 (K - 1) / K = 1
    # 64 x 8 rows of advantages (4 bytes) and flags (1), statistics of 4 features, returns'
    assert volume["rollout_bytes"] == 512 * 5 + 8 * (1 + 2 * 4) + 8 * 3
