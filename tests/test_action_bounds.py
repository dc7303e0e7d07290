"""Box action bounds: the policy's per-dimension squash (minerva.networks) and the env-side
check (minerva.envs.validate_actions) on fully, partly and un-bounded spaces."""

import math
import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from minerva import checkpoint
from minerva.checkpoint import CheckpointError
from minerva.envs import validate_actions
from minerva.networks import GaussianPolicy
from minerva.trainers.vmpo.trainer import VMPOTrainer

INF = np.inf
F32_MAX = float(np.finfo(np.float32).max)
LN2 = math.log(2.0)
EXTREMES = [0.0, 1e4, -1e4, F32_MAX, -F32_MAX]  # u is finite, but may be large


def box(low, high, shape=None) -> spaces.Box:
    return spaces.Box(np.asarray(low, np.float32), np.asarray(high, np.float32), shape,
                      np.float32)


def policy(space: spaces.Box) -> GaussianPolicy:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning unless a test expects one
        return GaussianPolicy(4, space)


def to_env(space: spaces.Box, rows) -> np.ndarray:
    """The policy's env actions for pre-squash rows ``[B, D]``, checked by validate_actions."""
    raw = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow would warn
        actions = policy(space).to_env(raw).numpy()
        validated = validate_actions(actions, space, len(rows))
    assert actions.shape == (len(rows), *space.shape)
    assert np.isfinite(actions).all()
    np.testing.assert_array_equal(validated, actions)  # already within the bounds: not clipped
    return actions


@pytest.mark.parametrize("low,high,u,expected", [
    # both bounds: center + half_width * tanh(u), here 1 + 2 tanh(u)
    (-1.0, 3.0, [0.0, math.atanh(0.5), 1e4, -1e4], [1.0, 2.0, 3.0, -1.0]),
    # none: u itself
    (-INF, INF, [0.0, -2.5, 1e4, -F32_MAX], [0.0, -2.5, 1e4, -F32_MAX]),
    # float32's largest value is gymnasium's "unbounded"; squashing into it would give inf
    (-F32_MAX, F32_MAX, [0.0, -2.5, 1e4, F32_MAX], [0.0, -2.5, 1e4, F32_MAX]),
    # lower only: low + softplus(u)
    (0.5, INF, [0.0, math.log(math.e - 1), 1e4, -1e4], [0.5 + LN2, 1.5, 1e4 + 0.5, 0.5]),
    (0.5, F32_MAX, [0.0, F32_MAX], [0.5 + LN2, F32_MAX]),
    # upper only: high - softplus(-u)
    (-INF, 2.0, [0.0, -math.log(math.e - 1), -1e4, 1e4], [2.0 - LN2, 1.0, 2.0 - 1e4, 2.0]),
    (-F32_MAX, 2.0, [0.0, -F32_MAX], [2.0 - LN2, -F32_MAX]),
])
def test_each_kind_of_dimension(low, high, u, expected):
    space = box([low], [high])
    np.testing.assert_allclose(to_env(space, [[x] for x in u])[:, 0], expected, rtol=1e-6)


def test_fully_bounded_spaces_squash_as_before():
    space = box([-2.0, 0.0], [2.0, 10.0])
    raw = torch.randn(64, 2) * 3
    low, high = torch.tensor(space.low), torch.tensor(space.high)
    before = low + (torch.tanh(raw) + 1.0) * 0.5 * (high - low)
    torch.testing.assert_close(policy(space).to_env(raw), before)


def test_one_box_mixing_every_kind():
    space = box([-1.0, -INF, 0.0, -INF, -F32_MAX], [1.0, INF, INF, 2.0, F32_MAX])
    actions = to_env(space, [[0.0] * 5, [3.0] * 5, [-3.0] * 5])
    np.testing.assert_allclose(actions, [
        [0.0, 0.0, LN2, 2.0 - LN2, 0.0],
        [math.tanh(3.0), 3.0, math.log1p(math.exp(3.0)), 2.0 - math.log1p(math.exp(-3.0)), 3.0],
        [-math.tanh(3.0), -3.0, math.log1p(math.exp(-3.0)), 2.0 - math.log1p(math.exp(3.0)),
         -3.0],
    ], rtol=1e-6)


def test_a_shaped_box_keeps_its_layout():
    low = [[-1.0, 0.0, -INF], [-INF, 5.0, -F32_MAX]]
    high = [[1.0, INF, 2.0], [INF, 7.0, F32_MAX]]
    space = box(low, high)
    actions = to_env(space, [[0.0] * 6, [1e4] * 6])
    np.testing.assert_allclose(actions[0], [[0.0, LN2, 2.0 - LN2], [0.0, 6.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(actions[1], [[1.0, 1e4, 2.0], [1e4, 7.0, 1e4]], rtol=1e-6)


@pytest.mark.parametrize("space", [
    box([-1.0, 0.0, -INF, -INF], [1.0, INF, 2.0, INF]),
    box([-F32_MAX] * 2, [F32_MAX] * 2),
    box([-INF] * 2, [INF] * 2),
    box([-3.0] * 3, [3.0] * 3),
    box([[0.5, -INF], [-F32_MAX, -1.0]], [[INF, 2.0], [1.0, 1.0]]),
], ids=["mixed", "float32-max", "infinite", "bounded", "shaped"])
def test_extreme_u_gives_finite_actions_within_the_bounds(space):
    dim = int(np.prod(space.shape))
    actions = to_env(space, [[u] * dim for u in EXTREMES])
    assert (actions >= space.low).all() and (actions <= space.high).all()


def test_inf_u_is_clamped_to_float32_once_anything_is_bounded():
    space = box([-1.0, 0.0, -INF, -INF], [1.0, INF, 2.0, INF])
    raw = torch.tensor([[INF] * 4, [-INF] * 4])
    np.testing.assert_array_equal(policy(space).to_env(raw).numpy(),
                                  [[1.0, F32_MAX, 2.0, F32_MAX], [-1.0, 0.0, -F32_MAX, -F32_MAX]])


def test_absurd_bounds_warn_once_naming_the_dimensions():
    space = box([-1.0, -1e30, 0.0], [1.0, 1e30, 1e7])
    with pytest.warns(UserWarning) as record:
        absurd = GaussianPolicy(4, space)
    assert len(record) == 1
    message = str(record[0].message)
    assert "dimension 1 [-1e+30, 1e+30], dimension 2 [0, 1e+07]" in message
    assert "dimension 0" not in message and "jump between the extremes" in message
    actions = absurd.to_env(torch.tensor([[0.0, 0.0, 0.0], [1e4, 1e4, 1e4]])).numpy()
    np.testing.assert_allclose(actions, [[0.0, 0.0, 5e6], [1.0, 1e30, 1e7]], rtol=1e-6)
    validate_actions(actions, space, 2)
    with pytest.warns(UserWarning, match=re.escape("dimension (1, 0) [-1e+30, 1e+30]")):
        GaussianPolicy(4, box([[-1.0], [-1e30]], [[1.0], [1e30]]))


def test_a_box_with_no_finite_action_is_rejected():
    space = spaces.Box(np.array([0.0, INF], np.float32), np.array([1.0, INF], np.float32))
    with pytest.raises(ValueError, match=re.escape("no finite action at dimension 1 [inf, inf]")):
        GaussianPolicy(4, space)


def test_the_state_dict_keeps_its_keys_and_round_trips():
    space = box([-1.0, 0.0, -INF], [1.0, INF, INF])
    first, second = policy(space), policy(space)
    assert set(first.state_dict()) == {"mean.weight", "mean.bias", "log_std.weight",
                                       "log_std.bias", "low", "high"}
    second.load_state_dict(first.state_dict())
    raw = torch.randn(5, 3)
    torch.testing.assert_close(second.to_env(raw), first.to_env(raw))


def test_validate_actions_accepts_the_bounds_and_any_finite_unbounded_value():
    space = box([-1.0, 0.0, -INF, -F32_MAX], [1.0, INF, 2.0, F32_MAX])
    edges = np.array([[-1.0, 0.0, -F32_MAX, -F32_MAX], [1.0, F32_MAX, 2.0, F32_MAX]], np.float32)
    np.testing.assert_array_equal(validate_actions(edges, space, 2), edges)
    # float64 within rounding of float32's largest value is clipped, not cast to inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nudged = validate_actions(np.array([[0.0, 0.0, 0.0, F32_MAX * (1 + 1e-7)]]), space, 1)
    assert nudged.dtype == np.float32 and nudged[0, 3] == np.float32(F32_MAX)


def test_validate_actions_names_env_dimension_and_value():
    space = box([[-1.0, 0.0, -INF], [-INF, -INF, -INF]], [[1.0, INF, 2.0], [INF, INF, INF]])
    actions = np.zeros((2, 2, 3), np.float32)

    def error(env, index, value, dtype=np.float32):
        bad = actions.astype(dtype)
        bad[(env, *index)] = value
        with pytest.raises(ValueError) as caught:
            validate_actions(bad, space, 2)
        return str(caught.value)

    assert error(1, (0, 2), np.nan) == "actions contain NaN at env 1, dimension 0, 2"
    assert error(0, (1, 1), -INF) == "actions contain inf at env 0, dimension 1, 1 (value -inf)"
    assert error(1, (0, 1), -0.5) == "action -0.5 out of bounds [0.0, inf] at env 1, dimension 0, 1"
    assert error(0, (0, 2), 2.5) == "action 2.5 out of bounds [-inf, 2.0] at env 0, dimension 0, 2"
    assert error(1, (1, 0), 1e39, np.float64) == (
        "action 1e+39 at env 1, dimension 1, 0 overflows the action space's dtype float32")


class PartlyBoundedEnv(gym.Env):
    """Four action dimensions: [-1, 1], [0, inf), (-inf, 2] and unbounded; five steps."""

    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = box([-1.0, 0.0, -INF, -INF], [1.0, INF, 2.0, INF])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        assert self.action_space.contains(action), action
        self.steps += 1
        reward = -float(np.square(np.clip(action, -10, 10)).sum())
        return self.observation_space.sample(), reward, False, self.steps >= 5, {}


@pytest.fixture
def partly_bounded_env():
    env_id = "minerva-test/PartlyBounded-v0"
    gym.register(env_id, entry_point=PartlyBoundedEnv)
    yield env_id
    gym.registry.pop(env_id, None)


def test_training_on_a_partly_bounded_box(partly_bounded_env, tmp_path):
    trainer = VMPOTrainer(partly_bounded_env, 0, "cpu", (8,), (8,), rollout_steps=8, num_envs=2,
                          backend="gymnasium", eval_every=16, eval_episodes=1, progress=False)
    try:
        result = trainer.train(32, tmp_path)
    finally:
        trainer.close()
    assert trainer.global_step == 32
    assert math.isfinite(result["eval/return_mean"])
    # its checkpoint keeps the space's infinite bounds, which are not damaged values
    loaded = VMPOTrainer.from_checkpoint(tmp_path / "vmpo_last.pt")
    try:
        for name, tensor in trainer.agent.state_dict().items():
            assert torch.equal(tensor, loaded.agent.state_dict()[name]), name
    finally:
        loaded.close()
    state = torch.load(tmp_path / "vmpo_last.pt", weights_only=True)
    state["agent"]["policy.low"][0] = float("nan")  # a NaN bound is
    torch.save(state, tmp_path / "nan_bound.pt")
    with pytest.raises(CheckpointError, match="agent.policy.low has NaN"):
        checkpoint.load(tmp_path / "nan_bound.pt")
