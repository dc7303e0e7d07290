"""``python -m minerva.train``: train V-MPO (or PPO, ``--algo ppo``) from the command line.

Every option is a field of :class:`minerva.config.TrainConfig`; the algorithm's presets
(``minerva/presets.toml``: its own defaults, its continuous-control or image configuration,
the env's table) override the defaults, and flags override the presets. With no arguments it
trains V-MPO on CartPole-v1 (envpool backend) until the evaluation return reaches 475.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path

from minerva import envs
from minerva.config import OPTION_DEFAULTS, REMOVED_OPTIONS, TrainConfig
from minerva.env_ids import resolve_env_id
from minerva.errors import OneLineParser, OptionError, unexpected_error
from minerva.presets import CONTINUOUS_CONTROL, IMAGES, all_presets, preset
from minerva.stopping import exit_at_once_on_signals, ignore_signals, restore_handlers


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _ExplicitNone:
    """``--target-return none``: set to None, unlike a flag left out (argparse's None)."""


EXPLICIT_NONE = _ExplicitNone()


def _optional_float(text: str) -> float | _ExplicitNone:
    return EXPLICIT_NONE if text.lower() in ("none", "null", "") else float(text)


def _removed(why: str) -> type[argparse.Action]:
    """The action of a flag minerva no longer has: one line saying why and what replaced it
    (the flag is left out of ``--help``)."""

    class Removed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None) -> None:
            parser.error(f"{option_string}: removed ({why})")

    return Removed


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m minerva.train",
        description="Train a V-MPO (or, with --algo ppo, a PPO) agent. Defaults come from "
                    "TrainConfig, then presets.toml's tables of the algorithm: its own, for an "
                    f"env with continuous actions its [{CONTINUOUS_CONTROL}] table, for one "
                    f"with image observations its [{IMAGES}] table; then the env's table "
                    f"(tables exist for: {', '.join(all_presets())}), then these flags.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind = hints[f.name]
        kwargs: dict = {"default": None,
                        "help": f"{f.metadata['help']} (default: {f.default}; a preset may "
                                "set another)"}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            kwargs.update(type=int, nargs="+", metavar="SIZE")
        elif isinstance(kind, types.UnionType):  # float | None
            kwargs.update(type=_optional_float, metavar="FLOAT|none")
        else:
            kwargs["type"] = kind
        parser.add_argument(_flag(f.name), **kwargs)
    for name, (_, why) in REMOVED_OPTIONS.items():
        flag = _flag(name)
        parser.add_argument(flag, f"--no-{flag[2:]}", action=_removed(why), nargs="?",
                            help=argparse.SUPPRESS, dest=f"removed_{name}", default=None)
    parser.add_argument("--resume", metavar="CHECKPOINT", default=None,
                        help="continue from a checkpoint (vmpo_last.pt, ppo_last.pt); flags "
                             "override its config, e.g. a larger --total-steps (the options "
                             "that fix the algorithm, the networks, the optimiser or initial "
                             "values cannot change)")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an unexpected error")
    # defaults are shown inside each help text (they depend on the preset)
    parser.formatter_class = argparse.HelpFormatter
    return parser


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TrainConfig:
    """Defaults <- the env's preset <- explicit flags; any bad value is a parser error that
    names its flag."""
    explicit = explicit_options(args)
    try:
        env_id = resolve_env_id(explicit.get("env_id", TrainConfig.env_id))
    except ValueError as error:
        parser.error(f"--env-id: {error}")
    try:  # the preset depends on the action space; a broken env install fails here
        spaces = envs.env_spaces(env_id)  # cached: preset() reads them again for free
    except Exception as error:  # e.g. gymnasium's DependencyNotInstalled for MuJoCo
        parser.error(f"--env-id: cannot make {env_id!r} to read its spaces: {error}")
    try:
        envs.supported_observation_box(env_id, *spaces)
    except ValueError as error:
        parser.error(f"--env-id: {error}")
    options = {**preset(env_id, explicit.get("algo", TrainConfig.algo)), **explicit,
               "env_id": env_id}
    if "out_dir" not in explicit:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        options["out_dir"] = f"runs/{env_id.replace('/', '_')}-seed{options.get('seed', 1)}-{stamp}"
    try:
        return TrainConfig(**options).validate()
    except OptionError as error:
        parser.error(_option_message(error))


def _option_message(error: OptionError) -> str:
    """An option's error as the command line names it: ``"--name: why"``."""
    return f"{_flag(error.option)}: {error.reason}"


def explicit_options(args: argparse.Namespace) -> dict:
    explicit = {k: (None if v is EXPLICIT_NONE else v) for k, v in vars(args).items()
                if k in OPTION_DEFAULTS and v is not None}
    for key in ("policy_layer_sizes", "value_layer_sizes"):
        if key in explicit:
            explicit[key] = tuple(explicit[key])
    return explicit


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit status: 0 done, 2 a bad option or file (one line, before
    any env is made where it can be told), 130 / 143 / 129 stopped by SIGINT / SIGTERM /
    SIGHUP with a checkpoint, 1 any other error (one line; ``--debug`` shows its
    traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(parser, args)
    except KeyboardInterrupt:  # outside training (in it, SIGINT stops it cleanly)
        print("minerva: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001  (one line instead of a traceback)
        return unexpected_error("minerva", error, args.debug)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from minerva import distributed
    from minerva.checkpoint import CheckpointError
    from minerva.errors import NonFiniteError, TrainingInterrupted
    from minerva.run_folder import create_out_dir, prepare_out_dir
    from minerva.trainers import OnPolicyTrainer
    from minerva.trainers.preflight import check_run_outputs

    def option_error(check, *check_args):
        try:
            return check(*check_args)
        except OptionError as error:
            parser.error(_option_message(error))

    if args.resume is not None:
        if not args.resume.strip():
            parser.error("--resume: needs a checkpoint file, got an empty path")
        # the checkpoint's configuration with the flags given now on top, into the
        # checkpoint's folder unless --out-dir says otherwise
        overrides = {"out_dir": str(Path(args.resume).parent), **explicit_options(args)}
        out_dir = overrides["out_dir"]
    else:
        config = config_from_args(parser, args)
        out_dir = config.out_dir
    out = Path(out_dir).absolute()
    # the first folder this run creates (runs/ too, for the default out_dir)
    new_folder = next((p for p in (*reversed(out.parents), out) if not os.path.lexists(p)), None)
    try:
        if args.resume is not None:
            option_error(create_out_dir, out_dir)
            try:
                trainer = OnPolicyTrainer.from_checkpoint(args.resume, **overrides)
            except FileNotFoundError:
                parser.error(f"--resume: no such checkpoint: {args.resume}")
            except CheckpointError as error:
                parser.error(f"--resume: {error}")
            except OptionError as error:
                parser.error(_option_message(error))
        else:
            option_error(check_run_outputs, config, config.env_id)
            if not config.overwrite:  # (overwriting deletes only once the run starts)
                option_error(prepare_out_dir, config.out_dir)
            trainer = option_error(OnPolicyTrainer.from_config, config)
    except BaseException:
        if new_folder:  # a run that never started leaves no empty folder behind
            shutil.rmtree(new_folder, ignore_errors=True)
        raise
    config = trainer.config
    replaced: dict[int, object] = {}  # handlers put back once the run is closed
    try:
        try:
            trainer.train(config.total_steps, config.out_dir)
        finally:  # however the run stopped, a signal from here on need not wait for cleanup
            replaced = exit_at_once_on_signals()
        distributed.finish()
    except TrainingInterrupted as stopped:
        distributed.finish()  # every rank stopped at the same iteration
        return stopped.exit_code  # the trainer has said where its checkpoint is
    except KeyboardInterrupt:  # a second Ctrl-C: the first one's handler was put back
        print(f"minerva: interrupted again: stopped at once; {trainer.checkpoint_status()}",
              file=sys.stderr)
        return 130
    except OptionError as error:  # what train() checks before it starts
        parser.error(_option_message(error))
    except (NonFiniteError, OSError, distributed.DistributedError) as error:
        print(f"minerva: error: {error}\n{trainer.checkpoint_status()}", file=sys.stderr)
        return 1
    finally:
        trainer.close()
        restore_handlers(replaced)
    return 0


if __name__ == "__main__":
    status = main()
    ignore_signals()  # the run is over: the interpreter's shutdown exits with its status
    sys.exit(status)
