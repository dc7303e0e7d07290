"""Shared test setup: hypothesis profiles, a fixed torch seed and thread count per test, a
CLI run in this process (``in_process``, ``cli``), and the saved runs and checkpoints that
several files read (``saved_run``, ``saved``), each made once for the session."""

import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

# test modules import their shared helpers (tests/helpers.py) by name
sys.path.insert(0, os.path.dirname(__file__))

settings.register_profile(
    "default", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _torch_threads():
    # a CLI run in this process (tests' run_main) may set torch's threads for its run
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def in_process(tmp_path_factory, monkeypatch, capsys):
    """``in_process(main, *args)``: a CLI's ``main`` run in this process from a folder of its
    own, reported as ``subprocess.run`` would (:func:`helpers.run_main`)."""
    from helpers import run_main

    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    return lambda main, *args: run_main(main, [str(arg) for arg in args], capsys)


@pytest.fixture
def cli(in_process):
    """``python -m minerva.train ARGS`` run in this process (errors need no process of their
    own; the signal tests in test_stopping.py run it as one)."""
    import functools

    from minerva.train import main

    return functools.partial(in_process, main)


@pytest.fixture(scope="session")
def saved_run(tmp_path_factory):
    """A short CartPole run's folder (vmpo_last.pt at step 128): metrics, run.json, last and
    best checkpoints. Trained once for the session: tests read it, or copy it to change it."""
    pytest.importorskip("envpool")
    from helpers import make_trainer

    out = tmp_path_factory.mktemp("run") / "run"
    trainer = make_trainer(eval_every=64)
    trainer.train(128, str(out))
    trainer.close()
    return out


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
    """An untrained V-MPO trainer's CartPole checkpoint (gymnasium backend). Tests read it,
    or write edited copies of it (helpers.edited)."""
    from minerva.trainers.vmpo.trainer import VMPOTrainer

    path = tmp_path_factory.mktemp("saved") / "vmpo_last.pt"
    trainer = VMPOTrainer("CartPole-v1", 0, "cpu", (16,), (16,), 16, num_envs=2,
                          eval_episodes=1, progress=False, backend="gymnasium")
    trainer.save_checkpoint(path)
    trainer.close()
    return path
