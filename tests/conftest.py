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
