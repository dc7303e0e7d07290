"""An env that gives non-finite data, or never ends, registered with gymnasium under an id of
its own per configuration: shared by the collector's, the update's and the episodes' tests
(a module apart from helpers.py, which the sanitizer run imports without gymnasium)."""

import gymnasium as gym
import numpy as np


class FaultyEnv(gym.Env):
    """A 3-feature env that gives ``bad`` as the observation's feature 1 or as the reward
    from step ``at`` of its episode on, with ``reward`` per step otherwise; episodes last
    ``length`` steps (None: never end)."""

    def __init__(self, where="observation", bad=float("nan"), at=5, reward=1.0, length=20,
                 dtype="float32"):
        self.dtype = np.dtype(dtype)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), self.dtype)
        self.action_space = gym.spaces.Discrete(2)
        self.where, self.bad, self.at, self.reward, self.length = where, bad, at, reward, length

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, self.dtype), {}

    def step(self, action):
        self.t += 1
        observation = np.full(3, 0.1 * self.t, self.dtype)
        reward = self.reward
        if self.at is not None and self.t >= self.at:
            if self.where == "observation":
                observation[1] = self.bad
            else:
                reward = self.bad
        truncated = self.length is not None and self.t >= self.length
        return observation, reward, False, truncated, {}


def register_faulty_env(name: str, **kwargs) -> str:
    """The gymnasium id of a :class:`FaultyEnv` made with ``kwargs``, registered once."""
    env_id = f"minerva-test/{name}-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=FaultyEnv, kwargs=kwargs)
    return env_id
