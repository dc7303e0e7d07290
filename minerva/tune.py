"""``python -m minerva.tune``: search training options with Optuna over several envs and seeds.

A study lives in a database (a SQLite file in its folder by default, or any Optuna storage
URL), so the same command continues it after Ctrl-C, SIGTERM or a lost session, and several
processes can work on one study. Each trial samples options from a search space
(``tuning.toml`` beside the presets, or a file of yours) with a seeded TPE sampler and trains
one ordinary ``python -m minerva.train`` run per (env, seed), side by side, one torch thread
each, every run in a folder of its own under ``<out-dir>/trials/``. The runs' deterministic
evaluations feed a pruner as they come, so hopeless trials stop early.

The objective (docs/tuning.md): each run's score is the mean of its last ``--final-evals``
evaluation returns, normalised as ``(return - floor) / (reference - floor)`` by the env's
reference return; a trial's value is the mean score over its runs (``--aggregate min``: the
worst run's, so that a trial that fails one env or seed ranks by it). Counting the end of a
run, not its best, ranks a run that rises and then collapses below one that holds.

After every trial the study's folder gets ``report.md`` (the best trial, importances, every
trial), ``trials.csv``, ``best.toml`` (the best trial's options as a presets table) and
``plots/*.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import json
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from minerva.config import ALGORITHMS
from minerva.errors import OneLineParser, first_line, unexpected_error
from minerva.stopping import discard_dead_outputs
from minerva.tuning.report import redacted, write_outputs
from minerva.tuning.space import SET_BY_THE_STUDY, TUNING_FILE, UsageError
from minerva.tuning.study import AGGREGATES, Study, plan_study, preset_params, retried_trials
from minerva.tuning.trial import StopFlag, StudyInterrupted, TrialFailed, run_trial

HEARTBEAT_S = 60  # a RUNNING trial without a heartbeat for twice this is a lost session's


# --- the study: storage, sampler, pruner, retries -----------------------------------------

def storage_url(study: Study, storage: str | None) -> str:
    return storage or f"sqlite:///{(study.out_dir / 'study.db').absolute()}"


def open_storage(url: str, retry) -> Any:
    """An RDB storage with heartbeats (a RUNNING trial of a session that was lost is failed
    and run again, by :func:`retry`), or what Optuna makes of any other URL."""
    import optuna
    import sqlalchemy

    if "://" not in url:
        return url  # optuna's own error names a bad one
    sqlite = url.startswith("sqlite")
    # pysqlite begins no transaction before a SELECT, so two workers could both read a queued
    # trial as waiting and both run it; in autocommit mode with BEGIN IMMEDIATE of our own,
    # each read-then-write holds the database's write lock
    engine_kwargs = ({"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite
                     else {})
    # optuna 4.9 renamed the callback
    callback = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in
                inspect.signature(optuna.storages.RDBStorage).parameters
                else "failed_trial_callback")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                             heartbeat_interval=HEARTBEAT_S,
                                             **{callback: retry})
    if sqlite:
        sqlalchemy.event.listen(storage.engine, "begin",
                                lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
    return storage


def retry(study, trial) -> None:
    """Queues an interrupted or lost trial's options again (the sampler does not draw them);
    a trial stopped before it drew any has nothing to run again."""
    if trial.params:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def retry_interrupted(study) -> int:
    """Queues again every trial a signal interrupted that no trial has retried yet; returns
    how many. (A lost session's trials are queued by the storage's heartbeat check.)"""
    import optuna

    trials = study.get_trials(deepcopy=False)
    retried = retried_trials(trials)
    count = 0
    for trial in trials:
        if (trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs.get("interrupted")
                and trial.params and trial.number not in retried):
            retry(study, trial)
            count += 1
    return count


def finished_trials(study) -> int:
    """Trials that count against --trials: complete, pruned, or failed, but not those
    interrupted or lost (they run again)."""
    import optuna

    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    retried = retried_trials(trials)
    return sum(1 for t in trials
               if t.state in (states.COMPLETE, states.PRUNED)
               or (t.state == states.FAIL and not t.user_attrs.get("interrupted")
                   and t.number not in retried))


def make_pruner(name: str, study: Study, prune_after: int, startup_trials: int):
    """``median``: a trial below the median of the earlier trials' values at the same step
    (once ``startup_trials`` have finished, and from step ``prune_after`` on); ``hyperband``;
    ``none``."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials,
                                           n_warmup_steps=prune_after)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(prune_after, study.eval_every),
                                              max_resource=study.total_steps)
    return optuna.pruners.NopPruner()


def _study_attrs(study: Study) -> dict[str, Any]:
    """What a study is: continuing it with other envs, seeds, budget, ranges or references
    would mix trials that do not compare."""
    return json.loads(json.dumps({
        "algo": study.algo, "env_ids": study.env_ids, "seeds": study.seeds,
        "total_steps": study.total_steps, "eval_every": study.eval_every,
        "space": study.space_name, "final_evals": study.final_evals,
        "aggregate": study.aggregate,
        "fixed": study.fixed,
        "ranges": {name: dataclasses.asdict(range_) for name, range_ in study.space.items()},
        "references": {env_id: dataclasses.asdict(study.references[env_id])
                       for env_id in study.env_ids if env_id in study.references}}))


def check_same_study(optuna_study, study: Study) -> None:
    """Stores the study's settings the first time; refuses to continue it with others."""
    stored = optuna_study.user_attrs.get("settings")
    current = _study_attrs(study)
    if stored is None:
        optuna_study.set_user_attr("settings", current)
        return
    stored = {"aggregate": "mean", **stored}  # a study from before --aggregate averaged
    changed = [key for key in current if key in stored and stored[key] != current[key]]
    if not changed and set(current) - set(stored):  # kept by an earlier minerva: add the rest
        optuna_study.set_user_attr("settings", current)
    if changed:
        raise UsageError(
            f"study {study.name!r} was started with other settings ("
            f"{'; '.join(_difference(k, stored[k], current[k]) for k in changed)}); continue "
            "it with the same ones, or start another with --study NAME")


def _difference(name: str, before: Any, now: Any) -> str:
    """One setting's change in a few words: for a table (the ranges, the references) the
    entries gone, new and changed, not the whole tables."""
    if not (isinstance(before, dict) and isinstance(now, dict)):
        return f"{name}: {before!r} now {now!r}"
    parts = [f"{what} {', '.join(keys)}" for what, keys in (
        ("without", [k for k in before if k not in now]),
        ("with", [k for k in now if k not in before]),
        ("other", [k for k in now if k in before and before[k] != now[k]])) if keys]
    return f"{name}: {'; '.join(parts)}"


# --- the command line ---------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m minerva.tune",
        description="Search training options with Optuna: each trial trains one ordinary "
                    "`python -m minerva.train` run per env and seed, side by side, and its "
                    "objective is the mean (or the worst, --aggregate min) over those runs of "
                    "the last evaluations' return, normalised per env by a reference return. "
                    "The study is kept in a "
                    "database, so running the same command again continues it. Flags after "
                    "`--` are training flags given to every trial (e.g. -- --num-envs 8).",
        epilog="Exit status: 0 done, 2 a bad flag or search space (one line, before any trial), "
               "130 / 143 / 129 stopped by SIGINT / SIGTERM / SIGHUP (the running trials run "
               "again when the study continues), 1 any other error.")
    parser.add_argument("--env-ids", nargs="+", default=["CartPole-v1"], metavar="ENV_ID",
                        help="envs every trial trains on (default: CartPole-v1)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1], metavar="SEED",
                        help="seeds every trial trains each env with (default: 1)")
    parser.add_argument("--algo", choices=ALGORITHMS, default="vmpo",
                        help="algorithm (default: vmpo)")
    parser.add_argument("--total-steps", type=int, default=None,
                        help="environment steps of each run (default: the envs' preset)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="evaluate every this many steps (default: the envs' preset); each "
                             "evaluation is reported to the pruner")
    parser.add_argument("--trials", type=int, default=20,
                        help="stop once the study has this many finished trials (complete, "
                             "pruned or failed; counted over every session and worker) "
                             "(default: 20)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="start no trial after this many seconds of this session")
    parser.add_argument("--jobs", type=int, default=1,
                        help="trials at once; each runs len(env-ids) x len(seeds) processes "
                             "of one torch thread (default: 1)")
    parser.add_argument("--study", default=None,
                        help="the study's name (default: <algo>-<env ids>)")
    parser.add_argument("--out-dir", default=None,
                        help="the study's folder: the database, trials/, report.md, "
                             "trials.csv, best.toml, plots/ (default: tuning/<study>)")
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="an Optuna storage URL, e.g. sqlite:///study.db or "
                             "postgresql://user:pass@host/db (default: a SQLite file "
                             "<out-dir>/study.db)")
    parser.add_argument("--space", default=None,
                        help="the search space [space.<name>] (default: <algo>-continuous-"
                             "control for continuous actions, else <algo>)")
    parser.add_argument("--space-file", type=Path, default=None,
                        help=f"a TOML file of search spaces and references (default: "
                             f"minerva/{TUNING_FILE.name})")
    parser.add_argument("--reference", action="append", default=[], metavar="ENV=RETURN",
                        help="the return that scores 1 on an env (ENV=FLOOR:RETURN: FLOOR "
                             "scores 0); repeat for several envs")
    parser.add_argument("--final-evals", type=int, default=3,
                        help="a run's score is the mean of its last this many evaluations "
                             "(default: 3)")
    parser.add_argument("--aggregate", choices=AGGREGATES, default="mean",
                        help="a trial's value from its runs' scores: their mean, or min, the "
                             "worst run's, so that a trial that fails one env or seed ranks "
                             "by that failure (default: mean)")
    parser.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                        help="stop trials early: median (a trial whose best value so far is "
                             "below the completed trials' median at the same step), hyperband, "
                             "or none (default: median)")
    parser.add_argument("--prune-after", type=int, default=None, metavar="STEPS",
                        help="no trial is pruned before this step (default: a third of "
                             "--total-steps)")
    parser.add_argument("--startup-trials", type=int, default=10,
                        help="trials sampled at random before TPE models the results "
                             "(default: 10)")
    parser.add_argument("--pruner-startup-trials", type=int, default=5,
                        help="the median pruner prunes no trial before this many have "
                             "completed (default: 5)")
    parser.add_argument("--enqueue-preset", action="store_true",
                        help="a new study's first trial trains with the presets' own values "
                             "of the searched options: a baseline in the report, and a known "
                             "point for the sampler")
    parser.add_argument("--sampler-seed", type=int, default=0,
                        help="seed of the TPE sampler (default: 0)")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an unexpected error")
    parser.add_argument("train_flags", nargs=argparse.REMAINDER,
                        help="after --: training flags for every trial")
    return parser


def fixed_options(train_flags: Sequence[str]) -> dict[str, Any]:
    """The options that flags after ``--`` set, parsed by the training command's parser."""
    from minerva import train

    flags = list(train_flags[1:] if train_flags[:1] == ["--"] else train_flags)
    parser = train.build_parser()
    parser.prog = "python -m minerva.tune: training flags after --"
    options = train.explicit_options(parser.parse_args(flags))
    if any(flag in ("--resume", "--debug") for flag in flags):
        raise UsageError("training flags after --: --resume and --debug are not options "
                         "of a trial")
    set_here = sorted(set(options) & set(SET_BY_THE_STUDY))
    if set_here:
        raise UsageError(
            f"training flags after --: {', '.join('--' + n.replace('_', '-') for n in set_here)}"
            " is set by the study for every trial (use the tune command's own flag: "
            "--algo, --env-ids, --seeds, --total-steps, --eval-every, --out-dir)")
    return options


def _check_counts(args: argparse.Namespace) -> None:
    least_values = {"trials": 1, "jobs": 1, "final_evals": 1, "total_steps": 1, "eval_every": 1,
                    "startup_trials": 0, "pruner_startup_trials": 0, "prune_after": 0,
                    "sampler_seed": 0}
    for name, least in least_values.items():
        value = getattr(args, name)
        if value is not None and value < least:
            raise UsageError(f"--{name.replace('_', '-')}: must be an integer >= {least}, "
                             f"got {value}")
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise UsageError(f"--timeout: must be a positive number, got {args.timeout}")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit status (see the parser's epilog)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if importlib.util.find_spec("optuna") is None:
        parser.error("needs Optuna: pip install 'minerva[tune]'")
    try:
        _check_counts(args)
        study = plan_study(args, fixed_options(args.train_flags))
        return _optimize(args, study)
    except UsageError as error:
        parser.error(str(error))
    except KeyboardInterrupt:  # before the handlers were installed, or after
        print("minerva.tune: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001
        return unexpected_error("minerva.tune", error, args.debug)


def open_study(args: argparse.Namespace, study: Study, url: str):
    """The Optuna study (created, or continued when its settings are the same), with the
    interrupted trials queued again, a seeded sampler and the pruner; and how many trials
    were queued again."""
    import numpy as np
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(3):  # workers that create one new database at once race on its tables
        try:
            optuna_study = optuna.create_study(
                study_name=study.name, storage=open_storage(url, retry), load_if_exists=True,
                direction="maximize")
            break
        except (SQLAlchemyError, ValueError, ImportError) as error:
            if attempt == 2 or not isinstance(error, SQLAlchemyError):
                raise UsageError(f"--storage: cannot open {redacted(url)}: "
                                 f"{first_line(error)}") from None
            time.sleep(1.0 + attempt)
    check_same_study(optuna_study, study)
    trials_folder = study.out_dir / "trials"
    if not optuna_study.trials and trials_folder.exists() and any(trials_folder.iterdir()):
        raise UsageError(f"{trials_folder} holds trials of another study (its database "
                         "is not this one): remove it, or choose another --out-dir")
    if args.enqueue_preset and not optuna_study.trials:
        optuna_study.enqueue_trial(preset_params(study), user_attrs={"baseline": "preset"})
    requeued = retry_interrupted(optuna_study)
    # seeded by the study's length too, so a continued study draws new options (mixed, not
    # added: workers with seeds 1 and 2 would otherwise meet at 1 + 1 and 2 + 0)
    seed = int(np.random.SeedSequence([args.sampler_seed, len(optuna_study.trials)])
               .generate_state(1)[0])
    optuna_study.sampler = optuna.samplers.TPESampler(
        seed=seed, multivariate=True, n_startup_trials=args.startup_trials, constant_liar=True)
    prune_after = study.total_steps // 3 if args.prune_after is None else args.prune_after
    optuna_study.pruner = make_pruner(args.pruner, study, prune_after,
                                      args.pruner_startup_trials)
    return optuna_study, requeued


def _optimize(args: argparse.Namespace, study: Study) -> int:
    """Runs trials until the study has ``--trials`` finished ones, ``--timeout`` passes or a
    signal comes; writes the outputs after each."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial's own line says it
    study.out_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(study, args.storage)
    optuna_study, requeued = open_study(args, study, url)
    done = finished_trials(optuna_study)
    runs = len(study.runs)
    print(f"minerva.tune: study {study.name!r} in {study.out_dir} ({done} of {args.trials} "
          f"trials finished{f', {requeued} interrupted queued again' if requeued else ''}); "
          f"{args.jobs} trial(s) at once x {runs} run(s) = {args.jobs * runs} processes on "
          f"{os.cpu_count()} CPUs", flush=True)
    stop = StopFlag()

    def objective(trial) -> float:
        try:
            if stop.signum is not None:
                raise StudyInterrupted(stop.signum)
            return run_trial(study, trial, stop)
        except TrialFailed as error:
            trial.set_user_attr("fail_reason", str(error))
            raise
        except StudyInterrupted:
            trial.set_user_attr("interrupted", True)
            raise
        except optuna.TrialPruned:
            raise
        except BaseException:  # an unexpected error ends the study: stop the other trials too
            stop.request(signal.SIGTERM)
            raise

    def after_trial(optuna_study, trial) -> None:
        _print_trial(optuna_study, trial)
        write_outputs(optuna_study, study, args.storage)
        if stop.signum is not None or finished_trials(optuna_study) >= args.trials:
            optuna_study.stop()

    previous = {signum: signal.signal(signum, _handler(stop))
                for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(signum) != signal.SIG_IGN}
    try:
        if done < args.trials:
            optuna_study.optimize(objective, n_trials=args.trials - done, timeout=args.timeout,
                                  n_jobs=args.jobs, catch=(TrialFailed,),
                                  callbacks=[after_trial])
        if stop.signum is not None:  # came between two trials
            raise StudyInterrupted(stop.signum)
    except StudyInterrupted as interrupted:
        write_outputs(optuna_study, study, args.storage)
        print(f"minerva.tune: {interrupted}: stopped; the running trials run again when the "
              "study continues (the same command)", file=sys.stderr)
        return 128 + interrupted.signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    write_outputs(optuna_study, study, args.storage)
    summary = f"{finished_trials(optuna_study)} trials finished"
    try:
        best = optuna_study.best_trial
        summary += f"; best: trial {best.number}, objective {best.value:.4g}"
    except ValueError:
        summary += "; none complete"
    print(f"minerva.tune: {summary}; report: {study.out_dir / 'report.md'}", flush=True)
    return 0


def _handler(stop: StopFlag):
    def handle(signum: int, frame) -> None:
        if signum == signal.SIGHUP:
            discard_dead_outputs()  # a hung-up terminal fails every write, this one's too
        name = signal.Signals(signum).name
        print(f"minerva.tune: {name} again: killing the running trials' runs" if stop.signum
              else f"minerva.tune: {name}: stopping the running trials (each run writes a "
                   "checkpoint; send it again to kill them at once)",
              file=sys.stderr, flush=True)
        stop.request(signum)
    return handle


def _print_trial(optuna_study, trial) -> None:
    import optuna

    states = optuna.trial.TrialState
    seconds = ((trial.datetime_complete - trial.datetime_start).total_seconds()
               if trial.datetime_complete and trial.datetime_start else 0.0)
    if trial.state == states.COMPLETE:
        runs = ", ".join(f"{name} {result['final_mean']:.1f}"
                         for name, result in trial.user_attrs.get("runs", {}).items())
        what = f"complete: {trial.value:.4g} ({runs})"
    elif trial.state == states.PRUNED:
        step = trial.user_attrs.get("last_step")
        what = f"pruned at step {step}: {trial.intermediate_values.get(step, math.nan):.4g}"
    else:
        what = f"failed: {trial.user_attrs.get('fail_reason', '')}"
    try:
        best = f"; best: trial {optuna_study.best_trial.number} ({optuna_study.best_value:.4g})"
    except ValueError:
        best = ""
    print(f"trial {trial.number} {what} in {seconds:.0f} s{best}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
