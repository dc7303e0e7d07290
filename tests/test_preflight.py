"""minerva/trainers/preflight.py: a rollout or networks too large for the machine's memory
are refused by name before any env is made, and networks within the bound that the
allocator still refuses are a bad option (exit 2, one line), not a crash."""

import subprocess
import sys
import tempfile

import pytest
from helpers import make_trainer, one_line_error

from minerva.trainers.vmpo.trainer import VMPOTrainer

pytest.importorskip("envpool")


@pytest.mark.parametrize("rollout_steps", [10**9, 2**62])
def test_a_rollout_that_cannot_fit_in_memory_is_refused_before_any_env(rollout_steps,
                                                                       monkeypatch):
    import minerva.trainers.on_policy as trainer_module

    def no_envs(*args, **kwargs):
        raise AssertionError("an env was made")

    monkeypatch.setattr(trainer_module, "make_vector_env", no_envs)
    with pytest.raises(ValueError, match=r"rollout_steps: a rollout of .* needs .* GiB of "
                                         r"storage, more than this machine's"):
        make_trainer(rollout_steps=rollout_steps)


@pytest.mark.parametrize("sizes,message", [
    ((10**9,), r"policy_layer_sizes: the networks need [\d,.]+ GiB \(7,000,000,\d+ parameters "
               r"with their gradients .*\), more than this machine's .* GiB of memory, got "
               r"\(1000000000,\)"),
    ((64, 2**62), r"policy_layer_sizes: layers too large for any memory \(.*overflow"),
])
def test_networks_that_cannot_fit_in_memory_are_refused_before_any_env(sizes, message,
                                                                      monkeypatch):
    import minerva.trainers.on_policy as trainer_module
    import minerva.trainers.preflight as checks

    def no_envs(*args, **kwargs):
        raise AssertionError("an env was made")

    monkeypatch.setattr(trainer_module, "make_vector_env", no_envs)
    # a machine of 64 GiB, whatever this one has
    monkeypatch.setattr(checks, "_memory", lambda device: (64 * 2**30, "this machine's"))
    with pytest.raises(ValueError, match=message):
        VMPOTrainer("CartPole-v1", 0, "cpu", sizes, (16,), 16, backend="envpool")


@pytest.mark.slow
def test_networks_that_fail_to_allocate_are_a_bad_option(tmp_path):
    """Networks within the bound (here made to pass) that the allocator refuses: exit 2."""
    script = ("import re, resource, sys\n"
              "import minerva.trainers.preflight as checks\n"
              "from minerva.train import main\n"
              "checks._memory = lambda device: (2**50, 'this machine\\'s')\n"
              "status = open('/proc/self/status').read()\n"
              "size = int(re.search(r'VmSize:\\s+(\\d+)', status).group(1)) * 1024\n"
              "# 2 GiB more address space than now: the 6.4 GB layer cannot be allocated\n"
              "resource.setrlimit(resource.RLIMIT_AS, (size + 2**31, resource.RLIM_INFINITY))\n"
              "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", script, "--policy-layer-sizes", "40000", "40000", "--backend",
         "gymnasium", "--total-steps", "64", "--out-dir", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir())
    one_line_error(result, r"--policy-layer-sizes: the networks do not fit in the memory left "
                            r"on cpu \(allocating them failed\), got \(40000, 40000\)$")
    assert not out.exists()
