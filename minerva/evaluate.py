"""``python -m minerva.evaluate CHECKPOINT``: what a trained policy does.

Runs ``--episodes`` episodes of the checkpoint's env (one env per episode, stepped together)
with the checkpoint's policy and observation normaliser: the deterministic policy (mean
action / argmax), or sampled actions with ``--stochastic``. Prints a summary table of the
returns and lengths (raw rewards); ``--json`` writes it too. ``--video out.mp4`` also records
one more episode (seeded with ``--seed``) on gymnasium's renderer, envpool having none
(``pip install "minerva[video]"``: imageio's ffmpeg writer, and pygame for the classic
control envs; envpool's Atari ids render through ALE, ``pip install "minerva[atari]"``).

    python -m minerva.evaluate runs/<run>/vmpo_best.pt --episodes 20 --video best.mp4
    python -m minerva.evaluate runs/<run>/vmpo_last.pt --stochastic --seed 3 --backend gymnasium
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import torch

from minerva.checkpoint import CheckpointError, load, load_weights, saved_config
from minerva.config import BACKENDS, MAX_ENVS, MAX_SEED, TrainConfig, torch_device
from minerva.env_ids import check_backend, default_backend, env_spaces
from minerva.envs import make_vector_env
from minerva.episodes import check_can_record, evaluate_vectorized, record_video
from minerva.errors import OneLineParser, OptionError, first_line, unexpected_error
from minerva.networks import Agent, agent_for
from minerva.trainers.preflight import check_network_memory

SUMMARY_KEYS = ("return_mean", "return_std", "return_min", "return_median", "return_max",
                "length_mean", "cut_episodes")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m minerva.evaluate",
        description="Evaluate a minerva checkpoint (<algo>_last.pt or <algo>_best.pt, e.g. "
                    "vmpo_best.pt).")
    parser.add_argument("checkpoint", help="the checkpoint file")
    parser.add_argument("--episodes", type=int, default=10, help="episodes (default: 10)")
    parser.add_argument("--seed", type=int, default=0,
                        help="env i of the evaluation is seeded with seed + i (default: 0)")
    parser.add_argument("--stochastic", action="store_true",
                        help="sample actions instead of the mean / argmax")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="environment backend (default: the checkpoint's)")
    parser.add_argument("--device", default="cpu",
                        help="torch device (default: cpu, whichever the checkpoint was "
                             "trained on)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="cut episodes after this many steps (default: the checkpoint's "
                             "eval_max_steps)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--video", type=Path, default=None, metavar="OUT.mp4",
                        help="also record one episode to this video file")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an unexpected error")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit status: 0 done, 2 a bad argument or checkpoint (one
    line, before any episode runs), 1 any other error (one line; ``--debug`` shows its
    traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(parser, args)
    except Exception as error:  # noqa: BLE001  (one line instead of a traceback)
        return unexpected_error(parser.prog, error, args.debug)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not 1 <= args.episodes <= MAX_ENVS:
        parser.error(f"--episodes: must be between 1 and {MAX_ENVS:_}, got {args.episodes}")
    if not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed: must be in [0, {MAX_SEED:_}], got {args.seed}")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps: must be a positive integer, got {args.max_steps}")
    try:
        device = torch_device(args.device)
    except ValueError as error:
        parser.error(f"--device: {error}, got {args.device!r}")
    try:
        state = load(args.checkpoint)
        config = TrainConfig(**saved_config(state, args.checkpoint))
    except FileNotFoundError:
        parser.error(f"no such checkpoint: {args.checkpoint}")
    except CheckpointError as error:  # (its message names the file)
        parser.error(str(error))
    env_id = state["env_id"]  # (checked by load: an id minerva makes)
    backend = args.backend or state.get("backend") or default_backend(env_id)
    try:
        check_backend(env_id, backend)
    except ValueError as error:
        parser.error(f"--backend: {error}" if args.backend else
                     f"--backend: the checkpoint's backend cannot run here: {error}")
    outputs = {"--json": args.json, "--video": args.video}
    for flag, path in outputs.items():
        problem = path and _output_problem(path, Path(args.checkpoint), flag == "--video")
        if problem:
            parser.error(f"{flag}: {path} {problem}")
    if args.json is not None and args.json == args.video:
        parser.error(f"--video: {args.video} is the --json file too")
    if args.video is not None:
        try:
            check_can_record(env_id)
        except ValueError as error:
            parser.error(f"--video: {error}")
    try:  # as training checks them: networks that cannot fit are one line, not the allocator's
        check_network_memory(dataclasses.replace(config, device=str(device)),
                             *env_spaces(env_id), training=False)
    except OptionError as error:
        parser.error(f"{args.checkpoint}: {error}")
    max_steps = args.max_steps or config.eval_max_steps
    try:
        summary, agent = evaluate(state, config, args.episodes, args.seed, not args.stochastic,
                                  backend, device, max_steps)
    except CheckpointError as error:
        parser.error(f"{args.checkpoint}: {error}")
    policy = "stochastic" if args.stochastic else "deterministic"
    print(f"{env_id}: {args.episodes} {policy} episodes of the policy at step "
          f"{state['global_step']:,} ({args.checkpoint})")
    print("| " + " | ".join(SUMMARY_KEYS) + " |")
    print("|" + "---|" * len(SUMMARY_KEYS))
    print("| " + " | ".join(f"{summary[key]:.1f}" for key in SUMMARY_KEYS) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps({"checkpoint": str(args.checkpoint),
                                         "env_id": env_id, **summary}, indent=2) + "\n")
    if args.video is not None:
        try:
            frames, episode_return = record_video(agent, env_id, args.video, args.seed,
                                                  not args.stochastic, max_steps)
        except gym.error.DependencyNotInstalled as error:
            parser.error(f"--video: rendering {env_id} needs more: {first_line(error)}")
        print(f"video: {args.video} ({frames} frames, one episode, return {episode_return:.1f})")
    return 0


def _output_problem(path: Path, checkpoint: Path, video: bool) -> str | None:
    """What keeps ``path`` from being written (None: nothing), told before the episodes
    run rather than after."""
    folder = path.parent
    if video and path.suffix.lower() != ".mp4":
        return "is not an .mp4 file (the video is written with imageio's ffmpeg mp4 writer)"
    if path.is_dir():
        return "is a folder, not a file"
    if not folder.is_dir():
        return ("is under a file, not a folder" if folder.exists()
                else f"is in a folder that does not exist ({folder})")
    if path.exists() and checkpoint.exists() and path.samefile(checkpoint):
        return "is the checkpoint itself"
    if not os.access(path if path.exists() else folder, os.W_OK):
        return "is not writable" if path.exists() else "is in a folder that is not writable"
    return None


def evaluate(state: dict, config: TrainConfig, episodes: int, seed: int, deterministic: bool,
             backend: str, device: torch.device,
             max_steps: int) -> tuple[dict[str, float], Agent]:
    """The summary of ``episodes`` episodes of the checkpoint's policy (``eval/`` metrics
    without their prefix), and the agent.

    Raises:
        CheckpointError: when the checkpoint's weights do not fit its env's spaces.
    """
    with make_vector_env(state["env_id"], episodes, seed, backend) as envs:
        agent = agent_for(config, envs.single_observation_space, envs.single_action_space)
        load_weights(agent, state["agent"], state["env_id"])
        result = evaluate_vectorized(agent.to(device), envs, seed=seed, max_steps=max_steps,
                                      deterministic=deterministic)
    return {key.removeprefix("eval/"): value for key, value in result.items()}, agent


if __name__ == "__main__":
    sys.exit(main())
