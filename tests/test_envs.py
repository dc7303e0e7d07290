"""Vector environments (minerva.envs) and the trainer's env helpers, on real info layouts."""

from __future__ import annotations

import re
import sys
import types

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from minerva.envs import (
    StepResult,
    available_backends,
    default_backend,
    envpool_env_ids,
    make_vector_env,
    validate_actions,
)
from minerva.trainers.vmpo.trainer import (
    _extract_episode_returns,
    _extract_final_observations,
    _format_metrics,
    _iter_final_info_entries,
    _make_env,
    _resolve_env_id,
    find_wrapper,
)

HAS_ENVPOOL = bool(envpool_env_ids())
BACKENDS = [
    pytest.param("envpool", marks=pytest.mark.skipif(not HAS_ENVPOOL, reason="needs envpool")),
    "gymnasium",
]
N = 4


def _run_until_done(env, actions, max_steps: int = 500):
    """Steps ``env`` (a gymnasium vector env) until some env ends; returns the last step
    and the per-env reward sums up to and including it."""
    totals = np.zeros(env.num_envs)
    for _ in range(max_steps):
        observations, rewards, terminated, truncated, infos = env.step(actions)
        totals += rewards
        if (terminated | truncated).any():
            return observations, terminated | truncated, infos, totals
    raise AssertionError("no episode ended")


# --- the trainer's helpers on real info layouts ------------------------------------------


def test_format_metrics():
    assert _format_metrics({"b": 2.5, "a": 1}) == "a=1.0000, b=2.5000"
    assert _format_metrics({"losses/x": -0.123456}) == "losses/x=-0.1235"
    assert _format_metrics({}) == ""


@pytest.mark.parametrize("vector_statistics", [False, True])
def test_helpers_on_gymnasium_same_step_infos(vector_statistics):
    # SAME_STEP reports final observations and per-env final infos; RecordEpisodeStatistics
    # sits inside each env (_make_env) and, optionally, around the vector env as well.
    env = SyncVectorEnv([_make_env("CartPole-v1", i) for i in range(N)],
                        autoreset_mode=AutoresetMode.SAME_STEP)
    if vector_statistics:
        env = gym.wrappers.vector.RecordEpisodeStatistics(env)
    env.reset(seed=0)
    observations, done, infos, totals = _run_until_done(env, np.zeros(N, dtype=np.int64))
    ended = list(np.flatnonzero(done))
    assert ("episode" in infos) == vector_statistics

    entries = _iter_final_info_entries(infos)
    assert [i for i, _ in entries] == ended
    assert all("episode" in entry and "_episode" not in entry for _, entry in entries)

    final = _extract_final_observations(infos, N)
    for i in range(N):
        if i in ended:  # the true last observation, not the reset one returned in its place
            np.testing.assert_array_equal(final[i], infos["final_obs"][i])
            assert not np.array_equal(final[i], observations[i])
        else:
            assert final[i] is None

    # CartPole pays 1 a step: the return is the episode's reward sum.
    assert _extract_episode_returns(infos) == [(i, float(totals[i])) for i in ended]


def test_helpers_on_gymnasium_next_step_infos():
    # Next-step autoreset (minerva's gymnasium backend): no final observations; the per-env
    # RecordEpisodeStatistics puts "episode"/"_episode" at the top level.
    with make_vector_env("CartPole-v1", N, seed=0, backend="gymnasium", make_env=_make_env) as env:
        env.reset()
        totals = np.zeros(N)
        for _ in range(500):
            result = env.step(np.zeros(N, dtype=np.int64))
            totals += result.rewards
            if (result.terminated | result.truncated).any():
                break
        ended = list(np.flatnonzero(result.terminated | result.truncated))
        assert _extract_episode_returns(result.infos) == [(i, float(totals[i])) for i in ended]
        assert _extract_final_observations(result.infos, N) == [None] * N
        assert _iter_final_info_entries(result.infos) == []


@pytest.mark.skipif(not HAS_ENVPOOL, reason="needs envpool")
def test_helpers_on_envpool_infos():
    # envpool reports neither final observations nor episode statistics.
    with make_vector_env("CartPole-v1", N, seed=0, backend="envpool") as env:
        env.reset()
        saw_end = False
        for _ in range(60):
            result = env.step(np.zeros(N, dtype=np.int64))
            saw_end |= bool((result.terminated | result.truncated).any())
            assert _iter_final_info_entries(result.infos) == []
            assert _extract_final_observations(result.infos, N) == [None] * N
            assert _extract_episode_returns(result.infos) == []
        assert saw_end
        assert {"env_id", "elapsed_step"} <= set(result.infos)


def test_helpers_on_other_final_info_layouts():
    obs = np.arange(3.0)
    per_env = {  # gymnasium 0.29: object arrays masked per env
        "final_observation": np.array([None, obs], dtype=object),
        "_final_observation": np.array([False, True]),
        "final_info": np.array([None, {"episode": {"r": np.array([7.0])}}], dtype=object),
        "_final_info": np.array([False, True]),
    }
    assert _iter_final_info_entries(per_env) == [(1, {"episode": {"r": np.array([7.0])}})]
    assert _extract_final_observations(per_env, 2)[0] is None
    np.testing.assert_array_equal(_extract_final_observations(per_env, 2)[1], obs)
    assert _extract_episode_returns(per_env) == [(1, 7.0)]

    by_index = {"final_info": {2: {"final_obs": obs, "episode": {"r": 3.5}}}}
    assert [i for i, _ in _iter_final_info_entries(by_index)] == [2]
    np.testing.assert_array_equal(_extract_final_observations(by_index, 3)[2], obs)
    assert _extract_episode_returns(by_index) == [(2, 3.5)]

    assert _iter_final_info_entries({}) == []
    assert _extract_episode_returns({}) == []


# --- environment ids and single environments ----------------------------------------------


class _DictObservationEnv(gym.Env):
    """A one-step env observing a Dict (or a Tuple) drawn from its seeded generator."""

    def __init__(self, action_space: spaces.Space | None = None, tuple_observations=False):
        parts = {"b": spaces.Box(-1.0, 1.0, (2,), np.float32),
                 "a": spaces.Box(-1.0, 1.0, (3,), np.float32)}
        self.observation_space = (spaces.Tuple(parts.values()) if tuple_observations
                                  else spaces.Dict(parts))
        self.action_space = action_space or spaces.Discrete(2)

    def _observation(self):
        values = {"b": self.np_random.uniform(-1, 1, 2).astype(np.float32),
                  "a": self.np_random.uniform(-1, 1, 3).astype(np.float32)}
        return (tuple(values.values()) if isinstance(self.observation_space, spaces.Tuple)
                else values)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._observation(), {}

    def step(self, action):
        return self._observation(), 1.0, True, False, {}


@pytest.fixture
def registered():
    """Registers test env ids with gymnasium for one test (one already registered, such as
    shimmy's, is put back after it)."""
    replaced = {}

    def register(env_id: str, entry_point, **kwargs) -> str:
        replaced.setdefault(env_id, gym.registry.get(env_id))
        gym.register(env_id, entry_point=entry_point, kwargs=kwargs)
        return env_id

    yield register
    for env_id, spec in replaced.items():
        gym.registry.pop(env_id, None)
        if spec is not None:
            gym.registry[env_id] = spec


def test_resolve_env_id():
    assert _resolve_env_id("CartPole-v1") == "CartPole-v1"
    with pytest.raises(ValueError, match=re.escape(
            "unknown environment id 'CartPol-v1'; did you mean 'CartPole-v1'")):
        _resolve_env_id("CartPol-v1")
    with pytest.raises(ValueError, match="unknown environment id 'NoSuchThing-v9'"):
        _resolve_env_id("NoSuchThing-v9")


@pytest.mark.skipif(not HAS_ENVPOOL, reason="needs envpool")
def test_resolve_envpool_only_id():
    assert "Pong-v5" not in gym.registry  # gymnasium's is ALE/Pong-v5
    assert _resolve_env_id("Pong-v5") == "Pong-v5"
    assert available_backends("Pong-v5") == ("envpool",)


def test_an_envpool_id_without_envpool_says_so(monkeypatch):
    """A checkpoint of Pong-v5 read where envpool is missing: the id is unknown here, and the
    message says why."""
    import minerva.env_ids as env_ids

    monkeypatch.setattr(env_ids, "envpool_env_ids", frozenset)
    with pytest.raises(ValueError, match=r"unknown environment id 'Pong-v5' \(envpool, which "
                                         r"has ids of its own, is not installed\)"):
        _resolve_env_id("Pong-v5")


def test_resolve_dm_control_id(monkeypatch, registered):
    monkeypatch.setitem(sys.modules, "shimmy", None)  # makes `import shimmy` fail
    with pytest.raises(ValueError, match=r"'dm_control/cheetah/run'.*needs dm_control through "
                                         r"shimmy: pip install 'minerva\[dmc\]'"):
        _resolve_env_id("dm_control/cheetah/run")

    monkeypatch.setitem(sys.modules, "shimmy", types.ModuleType("shimmy"))
    registered("dm_control/cheetah-run-v0", _DictObservationEnv)
    assert _resolve_env_id("dm_control/cheetah/run") == "dm_control/cheetah-run-v0"


def test_make_env_and_find_wrapper(registered):
    env = _make_env("CartPole-v1", seed=3)()
    assert isinstance(find_wrapper(env, gym.wrappers.RecordEpisodeStatistics),
                      gym.wrappers.RecordEpisodeStatistics)
    assert isinstance(find_wrapper(env, gym.wrappers.TimeLimit), gym.wrappers.TimeLimit)
    # minerva normalises rewards itself and squashes actions into the bounds.
    for absent in (gym.wrappers.NormalizeReward, gym.wrappers.ClipAction,
                   gym.wrappers.FlattenObservation):
        assert find_wrapper(env, absent) is None
    assert find_wrapper(env.unwrapped, gym.wrappers.TimeLimit) is None
    samples = [_make_env("CartPole-v1", seed=3)().action_space.sample() for _ in range(2)]
    assert samples[0] == samples[1]  # the action space is seeded

    dict_env = _make_env(registered("minerva-test/DictObs-v0", _DictObservationEnv), seed=0)()
    assert find_wrapper(dict_env, gym.wrappers.FlattenObservation) is not None
    assert dict_env.observation_space == spaces.Box(-1.0, 1.0, (5,), np.float32)


# --- minerva.envs: both backends ----------------------------------------------------------


@pytest.fixture
def without_envpool(monkeypatch):
    """Runs a test as if envpool were not installed."""
    monkeypatch.setitem(sys.modules, "envpool", None)  # makes `import envpool` fail
    envpool_env_ids.cache_clear()
    yield
    envpool_env_ids.cache_clear()


def test_without_envpool(without_envpool):
    assert envpool_env_ids() == frozenset()
    assert default_backend("CartPole-v1") == "gymnasium"
    assert _resolve_env_id("CartPole-v1") == "CartPole-v1"
    with pytest.raises(ValueError, match="unknown environment id 'Pong-v5'"):
        _resolve_env_id("Pong-v5")
    with pytest.raises(ValueError, match="envpool is not installed"):
        make_vector_env("CartPole-v1", 2, seed=0, backend="envpool")
    with make_vector_env("CartPole-v1", 2, seed=0) as env:
        assert env.backend == "gymnasium"


def test_default_backend():
    assert default_backend("CartPole-v1") == ("envpool" if HAS_ENVPOOL else "gymnasium")
    assert default_backend("Taxi-v4") == "gymnasium"
    assert available_backends("Taxi-v4") == ("gymnasium",)
    assert available_backends("NoSuchThing-v9") == ()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_reset_and_step_shapes(backend, env_id):
    with make_vector_env(env_id, N, seed=0, backend=backend, make_env=_make_env) as env:
        assert (env.backend, env.env_id, env.num_envs) == (backend, env_id, N)
        assert isinstance(env.single_observation_space, spaces.Box)
        observations = env.reset()
        assert observations.shape == (N, *env.single_observation_space.shape)
        assert observations.dtype == env.single_observation_space.dtype == np.float32
        actions = np.stack([env.single_action_space.sample() for _ in range(N)])
        result = env.step(actions)
        assert isinstance(result, StepResult)
        assert result.observations.shape == observations.shape
        assert result.rewards.shape == (N,) and result.rewards.dtype == np.float32
        for done in (result.terminated, result.truncated):
            assert done.shape == (N,) and done.dtype == bool
        assert isinstance(result.infos, dict)


@pytest.mark.parametrize("backend", BACKENDS)
def test_next_step_autoreset_after_termination(backend):
    # CartPole pushed left falls within ~10 steps: the step that ends an episode returns
    # its last observation; the next one returns a reset observation, reward 0, not done.
    with make_vector_env("CartPole-v1", N, seed=0, backend=backend) as env:
        env.reset()
        push_left = np.zeros(N, dtype=np.int64)
        for _ in range(100):
            last = env.step(push_left)
            if last.terminated.any():
                break
        ended = last.terminated
        assert ended.any() and not last.truncated.any()
        assert np.all(np.abs(last.observations[ended, 2]) > 0.2)  # the pole has fallen
        after = env.step(push_left)
        assert np.all(after.rewards[ended] == 0.0)
        assert not after.terminated[ended].any() and not after.truncated[ended].any()
        assert np.all(np.abs(after.observations[ended]) <= 0.05)  # CartPole's reset range
        assert np.all(after.rewards[~ended] == 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_next_step_autoreset_after_truncation(backend):
    # Pendulum never terminates; its time limit truncates every env at step 200.
    with make_vector_env("Pendulum-v1", 2, seed=0, backend=backend) as env:
        env.reset()
        zeros = np.zeros((2, 1), dtype=np.float32)
        for step in range(1, 201):
            result = env.step(zeros)
            assert not result.terminated.any()
            assert result.truncated.all() == (step == 200)
        after = env.step(zeros)
        assert np.all(after.rewards == 0.0)
        assert not after.terminated.any() and not after.truncated.any()
        assert np.all(env.step(zeros).rewards < 0.0)  # Pendulum's rewards are negative


def _trajectory(backend: str, env_id: str, num_envs: int, seed: int, steps: int = 30):
    with make_vector_env(env_id, num_envs, seed=seed, backend=backend) as env:
        rng = np.random.default_rng(0)
        observations = [env.reset()]
        for _ in range(steps):
            if isinstance(env.single_action_space, spaces.Discrete):
                actions = rng.integers(0, env.single_action_space.n, size=num_envs)
            else:
                actions = rng.uniform(-2.0, 2.0, size=(num_envs, 1))
            observations.append(env.step(actions).observations)
    return np.stack(observations)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_seeding(backend, env_id):
    first = _trajectory(backend, env_id, 3, seed=7)
    np.testing.assert_array_equal(first, _trajectory(backend, env_id, 3, seed=7))
    assert not np.array_equal(first, _trajectory(backend, env_id, 3, seed=8))
    # env i gets seed + i: env 2 of seed 7 starts like env 0 of seed 9
    np.testing.assert_array_equal(first[0, 2], _trajectory(backend, env_id, 1, seed=9)[0, 0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_lifecycle(backend):
    env = make_vector_env("CartPole-v1", 2, seed=0, backend=backend)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, dtype=np.int64))
    with env:
        env.reset()
    env.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        env.reset()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_actions_raise_before_reaching_the_backend(backend):
    # Each of these would abort, segfault or be silently misread by envpool.
    with make_vector_env("CartPole-v1", N, seed=0, backend=backend) as env:
        env.reset()
        rows = re.escape(f"actions must have shape ({N},), got (3,)")
        with pytest.raises(ValueError, match=rows):
            env.step(np.zeros(3, dtype=np.int64))
        out_of_range = re.escape("action 1000000 out of range [0, 2) at env 1")
        with pytest.raises(ValueError, match=out_of_range):
            env.step(np.array([0, 1_000_000, 0, 1]))
        with pytest.raises(ValueError, match="must be integers, got dtype float64"):
            env.step(np.array([0.7, 1.9, 0.2, 0.0]))
        assert env.step(np.ones(N, dtype=np.int64)).rewards.shape == (N,)  # still usable
    with make_vector_env("Pendulum-v1", N, seed=0, backend=backend) as env:
        env.reset()
        actions = np.zeros((N, 1), dtype=np.float32)
        actions[3] = np.nan
        with pytest.raises(ValueError, match="actions contain NaN at env 3"):
            env.step(actions)
        actions[3] = -np.inf
        with pytest.raises(ValueError, match="actions contain inf at env 3"):
            env.step(actions)
        with pytest.raises(ValueError, match=re.escape(f"must have shape ({N}, 1), got ({N},)")):
            env.step(np.zeros(N, dtype=np.float32))


def test_validate_actions():
    box = spaces.Box(-2.0, 2.0, (1,), np.float32)
    discrete = spaces.Discrete(3)
    assert validate_actions([0, 2], discrete, 2).dtype == np.int32  # what envpool takes
    assert validate_actions(torch.tensor([1, 0]), discrete, 2).tolist() == [1, 0]
    assert validate_actions(np.zeros(2, np.uint8), discrete, 2).dtype == np.int32
    offset = spaces.Discrete(2, start=-1)
    assert validate_actions([-1, 0], offset, 2).tolist() == [-1, 0]
    with pytest.raises(ValueError, match=re.escape("action 1 out of range [-1, 1) at env 0")):
        validate_actions([1, 0], offset, 2)
    with pytest.raises(ValueError, match="got dtype bool"):
        validate_actions(np.array([True, False]), discrete, 2)

    mujoco_like = spaces.Box(-1.0, 1.0, (6,), np.float64)
    assert validate_actions(np.zeros((8, 6), np.float32), mujoco_like, 8).dtype == np.float64
    with pytest.raises(ValueError, match=re.escape("actions must have shape (8, 6), got (7, 6)")):
        validate_actions(np.zeros((7, 6)), mujoco_like, 8)
    # float rounding past a bound is clipped; more than that is an error
    nudged = np.array([[np.nextafter(np.float32(2), np.float32(3))], [-2.0]], np.float32)
    np.testing.assert_array_equal(validate_actions(nudged, box, 2), [[2.0], [-2.0]])
    out_of_bounds = re.escape("action -2.5 out of bounds [-2.0, 2.0] at env 1, dimension 0")
    with pytest.raises(ValueError, match=out_of_bounds):
        validate_actions([[0.0], [-2.5]], box, 2)
    with pytest.raises(ValueError, match="array-like"):
        validate_actions(torch.zeros(2, 1, requires_grad=True), box, 2)


def test_make_vector_env_errors(registered):
    with pytest.raises(ValueError, match=r"'Taxi-v4' is not available on backend 'envpool'"):
        make_vector_env("Taxi-v4", 2, seed=0, backend="envpool")
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        make_vector_env("CartPole-v1", 2, seed=0, backend="jax")
    with pytest.raises(ValueError, match="num_envs must be an integer >= 1"):
        make_vector_env("CartPole-v1", 0, seed=0)
    with pytest.raises(ValueError, match="unsupported observation space Discrete"):
        make_vector_env("Taxi-v4", 2, seed=0, backend="gymnasium")
    multi = registered("minerva-test/Multi-v0", _DictObservationEnv,
                       action_space=spaces.MultiDiscrete([2, 3]))
    with pytest.raises(ValueError, match="unsupported action space MultiDiscrete"):
        make_vector_env(multi, 2, seed=0, backend="gymnasium")


@pytest.mark.parametrize("tuple_observations", [False, True])
def test_dict_and_tuple_observations_are_flattened(registered, tuple_observations):
    env_id = registered("minerva-test/Structured-v0", _DictObservationEnv,
                        tuple_observations=tuple_observations)
    with make_vector_env(env_id, 3, seed=0, backend="gymnasium") as env:  # plain gym.make
        assert env.single_observation_space == spaces.Box(-1.0, 1.0, (5,), np.float32)
        observations = env.reset()
        assert observations.shape == (3, 5) and observations.dtype == np.float32
    for i in range(3):  # in gymnasium's flatten order, env i seeded with seed + i
        single = gym.make(env_id)
        expected = spaces.flatten(single.observation_space, single.reset(seed=i)[0])
        np.testing.assert_array_equal(observations[i], expected)


@pytest.mark.skipif("CheetahRun-v1" not in envpool_env_ids(), reason="needs envpool")
def test_envpool_dict_observations_are_flattened():
    # envpool's dm_control tasks observe a Dict ("position", "velocity").
    with make_vector_env("CheetahRun-v1", 2, seed=0, backend="envpool") as env:
        assert env.single_observation_space.shape == (17,)
        assert env.reset().shape == (2, 17)
        assert env.step(np.zeros((2, 6))).observations.dtype == np.float64


@pytest.mark.parametrize("backend", BACKENDS)
def test_mujoco_dtypes(backend, monkeypatch, tmp_path):
    if backend == "gymnasium":
        pytest.importorskip("mujoco")
        # mujoco 4 logs gymnasium's deprecated 'settotalmass' to ./MUJOCO_LOG.TXT
        monkeypatch.chdir(tmp_path)
    with make_vector_env("HalfCheetah-v5", 2, seed=0, backend=backend) as env:
        # envpool takes float64 MuJoCo actions, gymnasium float32; observations are float64
        assert env.single_action_space.dtype == (np.float64 if backend == "envpool" else np.float32)
        assert env.reset().dtype == np.float64
        result = env.step(np.full((2, 6), 0.5, dtype=np.float32))
        assert result.observations.dtype == np.float64 and result.rewards.dtype == np.float32


# --- send/recv ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_send_then_recv_is_a_step(backend):
    actions = np.zeros((N, 1), dtype=np.float32)
    with make_vector_env("Pendulum-v1", N, 3, backend) as stepped, \
            make_vector_env("Pendulum-v1", N, 3, backend) as sent:
        np.testing.assert_array_equal(stepped.reset(), sent.reset())
        for _ in range(3):
            want = stepped.step(actions)
            sent.send(actions)
            got = sent.recv()
            for name in ("observations", "rewards", "terminated", "truncated"):
                np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        with pytest.raises(RuntimeError, match="recv\\(\\) without send\\(\\)"):
            sent.recv()
        sent.send(actions)
        with pytest.raises(RuntimeError, match="send\\(\\) twice without recv\\(\\)"):
            sent.send(actions)
        sent.reset()  # finishes the step in flight first
        with pytest.raises(ValueError, match="NaN at env 0"):
            sent.send(np.full((N, 1), np.nan, dtype=np.float32))
        sent.step(actions)  # a rejected send starts nothing


class _ScalarObservationEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.float32(0.0), {}

    def step(self, action):
        return np.float32(0.0), 0.0, False, False, {}


def test_a_scalar_observation_space_is_refused_before_any_step(in_process):
    from minerva.train import main

    env_id = "minerva-test/ScalarObservation-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=_ScalarObservationEnv, max_episode_steps=10)
    result = in_process(main, "--env-id", env_id, "--total-steps", "64")
    assert result.returncode == 2
    assert ("--env-id: minerva-test/ScalarObservation-v0: unsupported observation space "
            "Box(-1.0, 1.0, (), float32): an observation needs at least one value"
            in result.stderr.strip().splitlines()[-1])


class _WrongShapeEnv(_ScalarObservationEnv):
    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        gym.Env.reset(self, seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(5, np.float32), 0.0, False, False, {}


def test_an_observation_that_does_not_fit_its_space_is_named_with_the_env():
    env_id = "minerva-test/WrongShape-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=_WrongShapeEnv, max_episode_steps=10)
    with make_vector_env(env_id, 2, 0, "gymnasium") as env:
        env.reset()
        with pytest.raises(ValueError, match=r"minerva-test/WrongShape-v0: an observation from "
                                             r"step\(\) does not fit the observation space "
                                             r"Box\(-1\.0, 1\.0, \(3,\), float32\)"):
            env.step(np.zeros(2, np.int64))
