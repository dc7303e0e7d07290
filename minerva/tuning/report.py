"""What a study writes after every trial: ``report.md``, ``trials.csv``, ``best.toml`` (the
best trial's options as a presets table) and ``plots/*.png`` (Optuna's matplotlib views)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any

from minerva.errors import first_line
from minerva.tuning.space import decode_param
from minerva.tuning.study import Study, retried_trials
from minerva.tuning.trial import as_flags


def _write_atomically(path: Path, write) -> None:
    """``write(temporary_path)`` then a rename: a reader (or a second worker) never sees half
    a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    _write_atomically(path, lambda p: p.write_text(text, encoding="utf-8"))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, float):
        return repr(value) if "." in repr(value) or "e" in repr(value) else f"{value:.1f}"
    return str(value)


def _table_header(algo: str, table: str) -> str:
    return f"[{algo}.{json.dumps(table)}]" if table else f"[{algo}]"


def trial_options(study: Study, trial) -> dict[str, Any]:
    """The options a trial set: the fixed ones and those it sampled."""
    return {**study.fixed, **{name: decode_param(name, value)
                              for name, value in trial.params.items()}}


def best_table(study: Study, trial) -> str:
    """The best trial's options as a presets.toml table, ready to paste."""
    options = trial_options(study, trial)
    lines = [f"# study {study.name}: trial {trial.number}, objective {trial.value:.4g} "
             f"({', '.join(study.env_ids)}; seeds {', '.join(map(str, study.seeds))}; "
             f"{study.total_steps:,} steps)",
             _table_header(study.algo, study.preset_table)]
    lines += [f"{name} = {_toml_value(value)}" for name, value in sorted(options.items())
              if value is not None]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _trial_note(trial, retried: set[int]) -> str:
    """What the trials table says of ``trial``: whose retry it is, what it tries (the
    preset's values from ``--enqueue-preset``, or the note it was queued with by hand), and
    why it ended as it did."""
    attrs = trial.user_attrs
    retry = f"retry of trial {attrs['retry_of']}" if "retry_of" in attrs else ""
    label = "the preset's values" if attrs.get("baseline") else attrs.get("note", "")
    if attrs.get("interrupted"):
        ending = "interrupted (run again)"
    elif trial.number in retried:
        ending = "lost with its session (run again)"
    else:
        ending = attrs.get("fail_reason", "")
    return "; ".join(part for part in (retry, label, ending) if part)


def _trial_rows(study: Study, trials) -> tuple[list[str], list[list[Any]]]:
    names = sorted({name for t in trials for name in t.params})
    run_names = [run.name for run in study.runs]
    header = ["trial", "state", "objective", "last_step", "duration_s", *names,
              *[f"{run}_final_mean" for run in run_names], "note"]
    retried = retried_trials(trials)
    rows = []
    for t in trials:
        runs = t.user_attrs.get("runs", {})
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        note = _trial_note(t, retried)
        value = t.value if t.value is not None else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        rows.append([t.number, t.state.name.lower(), value, t.user_attrs.get("last_step"),
                     None if duration is None else round(duration), *[
                         decode_param(n, t.params[n]) if n in t.params else None for n in names],
                     *[runs.get(run, {}).get("final_mean") for run in run_names], note])
    return header, rows


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    _write_text(path, buffer.getvalue())


def write_plots(optuna_study, folder: Path) -> dict[str, str]:
    """Optuna's matplotlib views of the study as PNGs; returns name -> why it was not drawn
    for those it could not draw yet (e.g. importances need two complete trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as views

    folder.mkdir(parents=True, exist_ok=True)
    skipped = {}
    for name, view in (("history", views.plot_optimization_history),
                       ("importances", views.plot_param_importances),
                       ("parallel_coordinate", views.plot_parallel_coordinate),
                       ("intermediate_values", views.plot_intermediate_values)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's ExperimentalWarning on every view
            try:
                axes = view(optuna_study)
            except (ValueError, RuntimeError, ZeroDivisionError) as error:
                skipped[name] = first_line(error)
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        legend = getattr(axes, "get_legend", lambda: None)()
        if name == "intermediate_values" and legend is not None and len(optuna_study.trials) > 12:
            legend.remove()  # one entry per trial: past a dozen it squeezes the plot away
            axes.set_xlabel("env steps")
            axes.set_ylabel("objective so far")
        figure.set_size_inches(14 if name == "parallel_coordinate" else 10, 6)
        figure.tight_layout()
        _write_atomically(folder / f"{name}.png",
                          lambda p, figure=figure: figure.savefig(p, format="png", dpi=100))
        plt.close(figure)
    return skipped


_OUTPUTS_LOCK = threading.Lock()  # matplotlib's pyplot is not thread-safe (--jobs > 1)


def write_outputs(optuna_study, study: Study, storage: str | None) -> None:
    """report.md, trials.csv, best.toml and plots/*.png of the study as it stands."""
    with _OUTPUTS_LOCK:
        _write_outputs(optuna_study, study, storage)


def _write_outputs(optuna_study, study: Study, storage: str | None) -> None:
    import optuna

    states = optuna.trial.TrialState
    trials = optuna_study.get_trials(deepcopy=False)
    header, rows = _trial_rows(study, trials)
    write_csv(study.out_dir / "trials.csv", header, rows)
    skipped = write_plots(optuna_study, study.out_dir / "plots")
    complete = [t for t in trials if t.state == states.COMPLETE]
    counts = {state: sum(1 for t in trials if t.state == state) for state in states}
    lines = [f"# Study `{study.name}`", "",
             f"{study.algo} on {', '.join(study.env_ids)}; seeds "
             f"{', '.join(map(str, study.seeds))}; "
             f"{study.total_steps:,} steps per run, evaluated every {study.eval_every:,}; "
             f"space `{study.space_name}`; fixed options: "
             f"{', '.join(f'{k} = {_toml_value(v)}' for k, v in study.fixed.items()) or 'none'}.",
             "",
             f"Objective: the {'worst' if study.aggregate == 'min' else 'mean'} over runs "
             f"of the last {study.final_evals} evaluation "
             "returns' mean, as (return - floor) / (reference - floor): "
             + ", ".join(f"{env} {_reference_text(study, env)}" for env in study.env_ids) + ".",
             "",
             f"Trials: {counts[states.COMPLETE]} complete, {counts[states.PRUNED]} pruned, "
             f"{counts[states.FAIL]} failed, {counts[states.RUNNING]} running, "
             f"{counts[states.WAITING]} waiting. Storage: "
             + (f"`{redacted(storage)}`." if storage else "`study.db` in this folder (SQLite)."),
             ""]
    if complete:
        best = optuna_study.best_trial
        lines += [f"## Best trial: {best.number} (objective {best.value:.4g})", "",
                  "| run | final evaluation | mean of the last evaluations | best | last 100 "
                  "training episodes |", "| --- | ---: | ---: | ---: | ---: |"]
        for name, result in best.user_attrs.get("runs", {}).items():
            lines.append(f"| {name} | {_cell(result['final'])} | {_cell(result['final_mean'])} "
                         f"| {_cell(result['best'])} | {_cell(result['last100'])} |")
        table = best_table(study, best)
        _write_text(study.out_dir / "best.toml", table)
        flags = " ".join(flag for name, value in sorted(trial_options(study, best).items())
                         for flag in as_flags(name, value))
        lines += ["", "Its options, as a presets.toml table (`best.toml`):", "", "```toml",
                  table.rstrip(), "```", "", "and as flags, to train with them:", "", "```bash",
                  f"python -m minerva.train --algo {study.algo} --env-id {study.env_ids[0]} "
                  f"{flags}", "```", ""]
        importances = _importances(optuna_study)
        if importances:
            lines += ["## Parameter importances", "", "| option | importance |",
                      "| --- | ---: |"]
            lines += [f"| {name} | {value:.3f} |" for name, value in importances.items()]
            lines.append("")
    lines += ["## Trials", "", "Sorted by objective (a pruned trial's is its last reported "
              "one); the runs' scores are each run's mean of its last evaluations.", "",
              "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    order = sorted(rows, key=lambda r: (r[2] is None, -(r[2] or 0.0), r[0]))
    lines += ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |"
              for row in order]
    lines += ["", "## Plots", ""]
    for name in ("history", "importances", "parallel_coordinate", "intermediate_values"):
        lines.append(f"- {name}: not drawn yet ({skipped[name]})" if name in skipped
                     else f"- ![{name}](plots/{name}.png)")
    _write_text(study.out_dir / "report.md", "\n".join(lines) + "\n")


def _importances(optuna_study) -> dict[str, float]:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return optuna.importance.get_param_importances(optuna_study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            return {}  # no complete trial yet


def _reference_text(study: Study, env_id: str) -> str:
    ref = study.references.get(env_id)
    if ref is None:
        return "(no reference: the raw return)"
    return f"reference {ref.reference:g}" + (f", floor {ref.floor:g}" if ref.floor else "")


def redacted(url: str) -> str:
    """A storage URL without its password."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
