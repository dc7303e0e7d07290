"""What a policy does: evaluation episodes on a vector env, and videos.

:func:`evaluate_vectorized` is the evaluation the trainers run during training and
``python -m minerva.evaluate`` runs on a checkpoint; :func:`record_video` records one episode
on gymnasium's renderer (envpool has none).
"""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from minerva.env_ids import atari_config, env_spaces
from minerva.envs import VectorEnv, flatten_observations, validate_actions
from minerva.networks import Agent
from minerva.threads import threads_for, torch_threads


def evaluate_vectorized(
    agent: Agent, eval_envs: VectorEnv, seed: int = 42, max_steps: int = 100_000,
    deterministic: bool = True,
) -> dict[str, float]:
    """One episode per evaluation env, all stepped together, with the deterministic policy
    (mean action / argmax; ``deterministic=False``: sampled actions). The observation
    normaliser is the training one, frozen (only the trainer updates it); returns are on raw
    rewards. ``seed`` reseeds gymnasium envs; envpool envs keep the seeds they were made with
    and continue their own random streams. Episodes still running after ``max_steps`` steps
    are cut there (``eval/cut_episodes`` counts them).
    """
    device = next(agent.parameters()).device
    observations = eval_envs.reset(seed=seed)
    num_envs = eval_envs.num_envs
    returns = np.zeros(num_envs, dtype=np.float64)
    lengths = np.zeros(num_envs, dtype=np.int64)
    finished = np.zeros(num_envs, dtype=bool)
    was_training = agent.training
    agent.eval()
    with torch.inference_mode(), torch_threads(threads_for(num_envs, torch.get_num_threads())):
        for _ in range(max_steps):
            if finished.all():
                break
            action = agent.act(torch.as_tensor(observations, device=device),
                               deterministic=deterministic, with_value=False)
            result = eval_envs.step(agent.policy.to_env(action.raw).cpu().numpy())
            running = ~finished
            returns += np.where(running, result.rewards, 0.0)
            lengths += running
            finished |= result.terminated | result.truncated
            observations = result.observations
    agent.train(was_training)
    return {
        "eval/return_mean": float(returns.mean()),
        "eval/return_std": float(returns.std()),
        "eval/return_min": float(returns.min()),
        "eval/return_max": float(returns.max()),
        "eval/return_median": float(np.median(returns)),
        "eval/length_mean": float(lengths.mean()),
        "eval/cut_episodes": float((~finished).sum()),
    }


def check_can_record(env_id: str) -> None:
    """Raises ValueError unless a video of ``env_id`` can be recorded: imageio's ffmpeg
    writer is installed, and gymnasium knows the id (envpool cannot render)."""
    try:
        import imageio_ffmpeg  # noqa: F401  (imageio's mp4 writer)
    except ImportError:
        raise ValueError('recording a video needs imageio\'s ffmpeg writer: pip install '
                         '"minerva[video]"') from None
    if atari_config(env_id) is not None:
        try:
            import ale_py  # noqa: F401
            import cv2  # noqa: F401  (gymnasium's AtariPreprocessing resizes with it)
        except ImportError:
            raise ValueError(f"recording {env_id} needs ALE and OpenCV (envpool, which runs "
                             'it, cannot render): pip install "minerva[atari]"') from None
    elif env_id not in gym.registry:
        raise ValueError(f"{env_id} has no gymnasium version to render (envpool, which "
                         "runs it, cannot render)")


def record_video(agent: Agent, env_id: str, path: Path, seed: int, deterministic: bool,
                 max_steps: int) -> tuple[int, float]:
    """Records one episode of ``agent`` in ``env_id`` (gymnasium's ``rgb_array`` renderer,
    :func:`make_render_env`) into ``path``; returns the number of frames and
    the episode's return."""
    import imageio.v3 as imageio

    # headless: MuJoCo through EGL, pygame (classic control) without a display
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env = make_render_env(env_id)
    device = next(agent.parameters()).device
    try:
        observation, _ = env.reset(seed=seed)
        frames, episode_return = [env.render()], 0.0
        with torch.inference_mode():
            for _ in range(max_steps):
                action = agent.act(torch.as_tensor(observation[None], device=device),
                                   deterministic=deterministic, with_value=False)
                env_action = validate_actions(agent.policy.to_env(action.raw).cpu().numpy(),
                                              env.action_space, 1)[0]
                observation, reward, terminated, truncated, _ = env.step(env_action)
                frames.append(env.render())
                episode_return += float(reward)
                if terminated or truncated:
                    break
        fps = env.metadata.get("render_fps") or 30
    finally:
        env.close()
    # macro_block_size 1: keep the env's frame size (ffmpeg would pad it to 16s, warning)
    imageio.imwrite(path, np.stack(frames), fps=fps, macro_block_size=1)
    return len(frames), episode_return


class _FireOnReset(gym.Wrapper):
    """Presses FIRE after each reset, as envpool's Atari does (``use_fire_reset``): games
    such as Breakout wait for it to start."""

    def reset(self, **kwargs):
        self.env.reset(**kwargs)
        observation, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:
            return self.env.reset(**kwargs)
        return observation, info


def make_render_env(env_id: str) -> gym.Env:
    """One gymnasium env of ``env_id`` that renders ``rgb_array`` frames and observes what
    the training envs observe (Dict/Tuple observations flattened).

    envpool renders nothing, so its Atari ids become ALE's (``ALE/Pong-v5``, ``pip install
    "minerva[atari]"``) with envpool's preprocessing rebuilt from its configuration: no-op
    starts, frame skip with max-pooling, grayscale, resize, frame stacking, FIRE at reset,
    no sticky actions, and the same time limit.
    """
    config = atari_config(env_id)
    if config is None:
        return flatten_observations(gym.make(env_id, render_mode="rgb_array"))
    import ale_py

    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{env_id}", render_mode="rgb_array", frameskip=1,
                   repeat_action_probability=config.repeat_action_probability,
                   full_action_space=config.full_action_space,
                   max_episode_steps=config.max_episode_steps * config.frame_skip)
    env = gym.wrappers.AtariPreprocessing(
        env, noop_max=config.noop_max, frame_skip=config.frame_skip,
        screen_size=(config.img_width, config.img_height), grayscale_obs=config.gray_scale)
    if config.use_fire_reset and "FIRE" in env.unwrapped.get_action_meanings():
        env = _FireOnReset(env)
    env = gym.wrappers.FrameStackObservation(env, config.stack_num)
    env.metadata = {**env.metadata, "render_fps": 60 // config.frame_skip}  # real time
    expected = env_spaces(env_id)[0]
    if env.observation_space != expected:
        env.close()
        raise ValueError(f"cannot rebuild envpool's {env_id} observations ({expected}) with "
                         f"ALE's, which give {env.observation_space}")
    return env
