"""The benchmarks' own arithmetic and the timed run they share, on small cases."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from minerva.networks import VMPOAgent

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("speed_benchmark", BENCHMARKS / "speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
