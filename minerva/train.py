"""``python -m minerva.train``: train V-MPO from the command line.

Every option is a field of :class:`minerva.config.TrainConfig`; for an env with continuous
actions the continuous-control configuration (``minerva/presets.toml``) overrides the
defaults, the env's own preset overrides that, and flags override the preset. With no
arguments it trains CartPole-v1 (envpool backend) until the evaluation return reaches 475.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import types
import typing
from collections.abc import Sequence

from minerva import envs
from minerva.config import TrainConfig
from minerva.presets import CONTINUOUS_CONTROL, all_presets, preset


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _ExplicitNone:
    """``--target-return none``: set to None, unlike a flag left out (argparse's None)."""


EXPLICIT_NONE = _ExplicitNone()


def _optional_float(text: str) -> float | _ExplicitNone:
    return EXPLICIT_NONE if text.lower() in ("none", "null", "") else float(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minerva.train",
        description="Train a V-MPO agent. Defaults come from TrainConfig, then (for an env "
                    f"with continuous actions) presets.toml's [{CONTINUOUS_CONTROL}] table, "
                    f"then the env's preset (presets exist for: {', '.join(all_presets())}), "
                    "then these flags.",
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
    parser.add_argument("--resume", metavar="CHECKPOINT", default=None,
                        help="continue from a checkpoint (vmpo_last.pt); flags override its "
                             "config, e.g. a larger --total-steps")
    # defaults are shown inside each help text (they depend on the preset)
    parser.formatter_class = argparse.HelpFormatter
    return parser


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TrainConfig:
    """Defaults <- the env's preset <- explicit flags; any bad value is a parser error that
    names its flag."""
    from minerva.trainers.vmpo.trainer import _resolve_env_id

    explicit = _explicit_options(args)
    try:
        env_id = _resolve_env_id(explicit.get("env_id", TrainConfig.env_id))
    except ValueError as error:
        parser.error(f"--env-id: {error}")
    try:  # the preset depends on the action space; a broken env install fails here
        envs.action_space(env_id)  # cached: preset() reads it again for free
    except Exception as error:  # e.g. gymnasium's DependencyNotInstalled for MuJoCo
        parser.error(f"--env-id: cannot make {env_id!r} to read its action space: {error}")
    options = {**preset(env_id), **explicit, "env_id": env_id}
    if "out_dir" not in explicit:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        options["out_dir"] = f"runs/{env_id.replace('/', '_')}-seed{options.get('seed', 1)}-{stamp}"
    try:
        return TrainConfig(**options).validate()
    except ValueError as error:
        name, _, why = str(error).partition(": ")
        parser.error(f"{_flag(name)}: {why}")


def _explicit_options(args: argparse.Namespace) -> dict:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    explicit = {k: (None if v is EXPLICIT_NONE else v) for k, v in vars(args).items()
                if k in names and v is not None}
    for key in ("policy_layer_sizes", "value_layer_sizes"):
        if key in explicit:
            explicit[key] = tuple(explicit[key])
    return explicit


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from minerva.trainers.vmpo.trainer import VMPOTrainer

    if args.resume:
        # the checkpoint's configuration, with any flags given now on top
        try:
            trainer = VMPOTrainer.from_checkpoint(args.resume, **_explicit_options(args))
        except FileNotFoundError:
            parser.error(f"--resume: no such checkpoint: {args.resume}")
        except ValueError as error:
            name, _, why = str(error).partition(": ")
            parser.error(f"{_flag(name)}: {why}")
    else:
        trainer = VMPOTrainer.from_config(config_from_args(parser, args))
    config = trainer.config
    try:
        trainer.train(config.total_steps, config.out_dir)
    except KeyboardInterrupt:
        print(f"interrupted; the last checkpoint is in {config.out_dir}", file=sys.stderr)
        return 130
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
