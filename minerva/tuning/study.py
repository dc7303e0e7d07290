"""A study's settings: the envs, seeds, budget, space, fixed options and references every
trial shares, planned and checked before any trial starts."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from minerva.config import OPTION_DEFAULTS, TrainConfig
from minerva.errors import first_line
from minerva.tuning.space import (
    TUNING_FILE,
    Range,
    Reference,
    UsageError,
    load_space,
    references,
)

# how a trial's runs' scores are combined into its value
AGGREGATES = ("mean", "min")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    env_id: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.env_id.replace('/', '_')}-seed{self.seed}"


@dataclasses.dataclass
class Study:
    """Everything a trial needs, checked before any trial starts."""

    name: str
    algo: str
    env_ids: list[str]
    seeds: list[int]
    total_steps: int
    eval_every: int
    space: dict[str, Range]
    space_name: str
    fixed: dict[str, Any]  # options given after --, the same for every trial
    references: dict[str, Reference]
    final_evals: int
    aggregate: str  # how the runs' scores make the trial's value: mean or min (AGGREGATES)
    out_dir: Path
    base_options: dict[str, dict[str, Any]]  # env id -> its preset with the fixed options
    preset_table: str  # the presets.toml table the best options belong in

    @property
    def runs(self) -> list[RunSpec]:
        return [RunSpec(env_id, seed) for seed in self.seeds for env_id in self.env_ids]

    def options(self, env_id: str, sampled: dict[str, Any]) -> dict[str, Any]:
        """A run's full options (the TrainConfig it trains with)."""
        return {**self.base_options[env_id], **sampled}

    def score(self, env_id: str, value: float) -> float:
        reference = self.references.get(env_id)
        return value if reference is None else reference.score(value)

    def combine(self, scores: list[float]) -> float:
        """A trial's value from its runs' scores: their mean, or the worst of them (``min``:
        a trial that fails one env or seed ranks by that failure)."""
        return min(scores) if self.aggregate == "min" else sum(scores) / len(scores)

    def trial_dir(self, number: int) -> Path:
        return self.out_dir / "trials" / f"trial-{number:04d}"


def plan_study(args: argparse.Namespace, fixed: dict[str, Any]) -> Study:
    """The study the flags describe; :class:`UsageError` (one line) on anything no
    trial could run with."""
    import gymnasium as gym

    from minerva import envs
    from minerva.encoders import is_image_space
    from minerva.env_ids import resolve_env_id
    from minerva.presets import CONTINUOUS_CONTROL, IMAGES, preset

    env_ids = []
    for env_id in args.env_ids:
        try:
            env_ids.append(resolve_env_id(env_id))
        except ValueError as error:
            raise UsageError(f"--env-ids: {error}") from None
    if len(set(env_ids)) != len(env_ids):
        raise UsageError(f"--env-ids: an env is named twice: {args.env_ids}")
    if len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds: a seed is named twice: {args.seeds}")
    continuous, images = [], []
    for env_id in env_ids:
        try:
            spaces = envs.env_spaces(env_id)
            envs.supported_observation_box(env_id, *spaces)
        except Exception as error:  # noqa: BLE001  (a broken install fails here, in one line)
            raise UsageError(f"--env-ids: cannot make {env_id!r}: {first_line(error)}") \
                from None
        continuous.append(isinstance(spaces[1], gym.spaces.Box))
        images.append(is_image_space(spaces[0]))
    space_name = args.space or (f"{args.algo}-{CONTINUOUS_CONTROL}" if all(continuous)
                                else args.algo)
    space_file = args.space_file or TUNING_FILE
    # a training flag after -- pins its option: the space searches the others
    space = {name: range_ for name, range_ in load_space(space_file, space_name).items()
             if name not in fixed}
    if not space:
        raise UsageError(f"{space_file.name} [space.{space_name}]: the training flags after -- "
                         "fix every option it searches")
    # the package's references, then the space file's, then the flags'
    refs = references(TUNING_FILE, [] if args.space_file else args.reference)
    if args.space_file is not None:
        refs.update(references(args.space_file, args.reference))
    missing = [env_id for env_id in env_ids if env_id not in refs]
    if len(env_ids) > 1 and missing:
        raise UsageError(f"--reference: {', '.join(missing)} has no reference return, "
                         "and the objective averages over several envs: give "
                         "--reference ENV=RETURN (the return a score of 1 means)")
    base_options, budgets = {}, set()
    for env_id in env_ids:
        options = {**preset(env_id, args.algo), **fixed, "algo": args.algo, "env_id": env_id,
                   "target_return": None, "progress": False, "torch_threads": 1}
        if args.total_steps is not None:
            options["total_steps"] = args.total_steps
        if args.eval_every is not None:
            options["eval_every"] = args.eval_every
        try:
            TrainConfig(**options).validate()
        except ValueError as error:
            raise UsageError(f"{env_id}: {error}") from None
        budgets.add((options.get("total_steps", OPTION_DEFAULTS["total_steps"]),
                     options.get("eval_every", OPTION_DEFAULTS["eval_every"])))
        for option, range_ in space.items():
            for value in range_.extremes():
                try:
                    TrainConfig(**{**options, option: value}).validate()
                except (ValueError, TypeError) as error:
                    raise UsageError(f"{space_file.name} [space.{space_name}]: {option} "
                                     f"= {value!r} is refused on {env_id}: {error}") \
                        from None
        base_options[env_id] = options
    if len(budgets) > 1:
        raise UsageError("the envs' presets train for or evaluate at different steps "
                         f"({sorted(budgets)}): give --total-steps and --eval-every, so "
                         "that the pruner compares every run at the same steps")
    total_steps, eval_every = budgets.pop()
    if eval_every > total_steps:
        raise UsageError(f"--eval-every ({eval_every}) is past --total-steps "
                         f"({total_steps}): a run would be evaluated once, at its end")
    name = args.study or "-".join([args.algo, *[e.replace("/", "_") for e in env_ids]])
    return Study(name=name, algo=args.algo, env_ids=env_ids, seeds=list(args.seeds),
                 total_steps=total_steps, eval_every=eval_every, space=space,
                 space_name=space_name, fixed=fixed, references=refs,
                 final_evals=args.final_evals, aggregate=args.aggregate,
                 out_dir=Path(args.out_dir or Path("tuning") / name),
                 base_options=base_options,
                 preset_table=(env_ids[0] if len(env_ids) == 1 else CONTINUOUS_CONTROL
                               if all(continuous) else IMAGES if all(images) else ""))


def retried_trials(trials) -> set[int]:
    """The numbers of the trials (interrupted, or lost with their session) that another trial
    runs again."""
    return {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}


def preset_params(study: Study) -> dict[str, Any]:
    """The presets' own values of the searched options (the same on every env, and inside
    their ranges), as a trial's parameters: the baseline ``--enqueue-preset`` runs first."""
    params = {}
    for name, range_ in study.space.items():
        values = {repr(study.base_options[env_id].get(name, OPTION_DEFAULTS[name]))
                  for env_id in study.env_ids}
        value = study.base_options[study.env_ids[0]].get(name, OPTION_DEFAULTS[name])
        if len(values) == 1 and (param := range_.param(value)) is not None:
            params[name] = param
    return params
