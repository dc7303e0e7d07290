"""minerva/config.py's bounds on a TrainConfig: options that would make a run endless,
overflow or exhaust the machine (M-steps, threads, envs, seeds beyond their ranges; initial
duals or a minimum log-std out of bounds; a negative checkpoint cadence; no evaluation
steps) are refused by name."""

import math

import pytest

from minerva.config import TrainConfig


@pytest.mark.parametrize("options,message", [
    (dict(m_steps=1_000_000_000), "m_steps: must be at most 1_000"),
    (dict(torch_threads=5000), "torch_threads: must be between 0 .* [0-9]+ CPUs, got 5000"),
    (dict(temperature_init=1e-40), r"temperature_init: must be in \[1e-08, 10000\]"),
    (dict(alpha_init=1e300), r"alpha_init: must be in \[1e-08, 10000\], the multipliers"),
    (dict(seed=-5), r"seed: must be an integer in \[0, 2_000_000_000\]"),
    (dict(seed=2**32), "seed: must be an integer in"),
    (dict(num_envs=10**9), "num_envs: must be at most 65_536"),
    (dict(min_log_std=-math.inf), "min_log_std: must be a finite number"),
    (dict(checkpoint_every_s=-1.0), "checkpoint_every_s: must be a number >= 0"),
    (dict(eval_max_steps=0), "eval_max_steps: must be a positive integer"),
])
def test_configuration_bounds_keep_runs_finite(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options).validate()
