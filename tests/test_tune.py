"""``python -m minerva.tune``: tiny Optuna studies on CartPole-v1 (a few trials of 512
steps), pruning, resuming after a signal, failing trials, and the bad inputs refused in one
line before any trial starts."""

import functools
import os
import signal
import subprocess
import sys
import time
import tomllib
from types import SimpleNamespace

import pytest

optuna = pytest.importorskip("optuna")

from minerva import tune  # noqa: E402
from minerva.config import TrainConfig  # noqa: E402
from minerva.tuning import report, space, trial  # noqa: E402
from minerva.tuning.study import RunSpec, Study  # noqa: E402

# 2 iterations of 4 envs x 64 steps, evaluated after each: 2 reports to the pruner
TINY = ["--total-steps", "512", "--eval-every", "256", "--final-evals", "1"]
TINY_TRAINING = ["--", "--num-envs", "4", "--rollout-steps", "64", "--eval-episodes", "2",
                 "--m-steps", "1"]


def study_args(out, *extra, trials=3, space=None):
    args = ["--out-dir", out, "--trials", trials, *TINY, *extra]
    if space is not None:
        args += ["--space-file", space, "--space", "test"]
    return [str(a) for a in [*args, *TINY_TRAINING]]


def load(out):
    return optuna.load_study(study_name="vmpo-CartPole-v1", storage=f"sqlite:///{out}/study.db")


def write_space(path, body):
    path.write_text("[space.test]\n" + body)
    return path


def enqueue(out, *params):
    """Creates the study with trials queued (the sampler draws none of these)."""
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name="vmpo-CartPole-v1", direction="maximize",
                                storage=f"sqlite:///{out}/study.db", load_if_exists=True)
    for p in params:
        study.enqueue_trial(p)


def test_a_tiny_study_finishes_and_writes_its_outputs(in_process, tmp_path):
    out = tmp_path / "study"
    result = in_process(tune.main, *study_args(out, "--jobs", "2", "--pruner", "none",
                                               "--enqueue-preset"))
    assert result.returncode == 0, result.stderr
    assert "3 trials finished; best: trial" in result.stdout
    study = load(out)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    # the first is the presets' values (TrainConfig's for CartPole); -- --m-steps 1 pins that
    assert study.trials[0].params == {
        "policy_lr": 5e-4, "value_lr": 1e-3, "epsilon_eta": 0.1, "epsilon_categorical": 0.01,
        "topk_fraction": 0.5, "gamma": 0.99, "gae_lambda": 0.95}
    for t in study.trials:  # each run's folder is kept, with its log and metrics
        run = out / "trials" / f"trial-{t.number:04d}" / "CartPole-v1-seed1"
        assert (run / "metrics.jsonl").exists() and (run / "vmpo_best.pt").exists()
        assert run.with_suffix(".log").read_text().startswith("$ ")
        assert 0.0 <= t.value <= 1.0  # a CartPole return over its reference, 500
    rows = (out / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("trial,state,objective") and len(rows) == 4
    assert rows[1].startswith("0,complete,") and rows[1].endswith(",the preset's values")
    written = (out / "report.md").read_text()
    assert f"## Best trial: {study.best_trial.number}" in written
    assert "## Parameter importances" in written
    assert "python -m minerva.train --algo vmpo --env-id CartPole-v1 --epsilon-categorical" \
        in written
    for name in ("history", "importances", "parallel_coordinate", "intermediate_values"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    best = tomllib.loads((out / "best.toml").read_text())
    table = best["vmpo"]["CartPole-v1"]  # ready to paste into presets.toml
    assert table["policy_lr"] == study.best_params["policy_lr"]
    assert table["num_envs"] == 4 and table["m_steps"] == 1  # so do the options after --
    TrainConfig(**table).validate()


def test_a_hopeless_trial_is_pruned(in_process, tmp_path):
    out = tmp_path / "study"
    # evaluation episodes cut at 5 steps score at most 5; CartPole's last at least 8
    space = write_space(tmp_path / "space.toml", "eval_max_steps = { choices = [5, 500] }\n")
    enqueue(out, {"eval_max_steps": 500}, {"eval_max_steps": 500}, {"eval_max_steps": 5})
    result = in_process(tune.main, *study_args(out, "--pruner-startup-trials", "2",
                                               "--prune-after", "0", space=space))
    assert result.returncode == 0, result.stderr
    states = [t.state.name for t in load(out).trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert "trial 2 pruned at step 256" in result.stdout
    assert "| 2 | pruned |" in (out / "report.md").read_text()


def test_failing_trials_are_recorded_and_the_study_goes_on(in_process, tmp_path, monkeypatch):
    out = tmp_path / "study"
    space = write_space(tmp_path / "space.toml", "init_log_std = { choices = [-1.0, -3.0] }\n"
                        "min_log_std = { choices = [-5.0, -2.0] }\n"
                        "policy_lr = { choices = [0.0005, 0.000999] }\n")
    # a run that fails as it trains: one that exits 1 with minerva's one-line error
    wrapper = tmp_path / "train.py"
    wrapper.write_text("import runpy, sys\n"
                       "if '0.000999' in sys.argv:\n"
                       "    sys.exit('minerva: error: NonFiniteError: the loss is nan')\n"
                       "sys.argv[0] = 'minerva.train'\n"
                       "runpy.run_module('minerva.train', run_name='__main__')\n")
    monkeypatch.setattr(trial, "TRAIN_COMMAND", (sys.executable, str(wrapper)))
    enqueue(out,
            {"init_log_std": -3.0, "min_log_std": -2.0, "policy_lr": 0.0005},  # below its floor
            {"init_log_std": -1.0, "min_log_std": -5.0, "policy_lr": 0.000999},
            {"init_log_std": -1.0, "min_log_std": -5.0, "policy_lr": 0.0005})
    result = in_process(tune.main, *study_args(out, space=space))
    assert result.returncode == 0, result.stderr
    trials = load(out).trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "COMPLETE"]
    assert trials[0].user_attrs["fail_reason"] == (
        "CartPole-v1: init_log_std: must lie between min_log_std (-2.0) and 1, got -3.0")
    assert not (out / "trials" / "trial-0000").exists()  # refused before any run started
    assert trials[1].user_attrs["fail_reason"] == (
        "CartPole-v1 seed 1: exit status 1: minerva: error: NonFiniteError: the loss is nan")
    assert "trial 1 failed: CartPole-v1 seed 1: exit status 1" in result.stdout
    assert "the loss is nan" in (out / "trials.csv").read_text()


def _wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_an_interrupted_study_continues_without_redoing_finished_trials(in_process, tmp_path):
    out = tmp_path / "study"
    # trial 1's 300 passes per rollout keep it training for seconds after its first event
    space = write_space(tmp_path / "space.toml", "m_steps = { choices = [1, 300] }\n")
    enqueue(out, {"m_steps": 1}, {"m_steps": 300})
    args = study_args(out, trials=2, space=space)
    args = args[:args.index("--m-steps")]  # (the training flags' --m-steps 1 would fix it)
    process = subprocess.Popen([sys.executable, "-m", "minerva.tune", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=tmp_path)
    metrics = out / "trials" / "trial-0001" / "CartPole-v1-seed1" / "metrics.jsonl"
    try:  # trial 1 starts once trial 0 is over (one job); signalled after its first iteration
        _wait_for(lambda: metrics.exists() and metrics.read_text().strip())
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "SIGINT: stopped; the running trials run again" in stderr
    before = load(out).trials
    assert [t.state.name for t in before] == ["COMPLETE", "FAIL"]
    assert before[1].user_attrs["interrupted"]
    # the interrupted run stopped cleanly, with a checkpoint
    assert (out / "trials" / "trial-0001" / "CartPole-v1-seed1" / "vmpo_last.pt").exists()

    result = in_process(tune.main, *args)
    assert result.returncode == 0, result.stderr
    assert "(1 of 2 trials finished, 1 interrupted queued again)" in result.stdout
    after = load(out).trials
    assert [t.state.name for t in after] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert after[0].datetime_complete == before[0].datetime_complete  # not run again
    assert after[2].user_attrs["retry_of"] == 1 and after[2].params == before[1].params
    assert "interrupted (run again)" in (out / "trials.csv").read_text()
    # the same command once more has nothing left to do
    again = in_process(tune.main, *args)
    assert again.returncode == 0 and len(load(out).trials) == 3


@pytest.mark.parametrize("space, extra, expected", [
    ("foo = { low = 1, high = 2 }", [], "space.toml [space.test]: foo: unknown option"),
    ("gamma = { low = 0.99, high = 0.9 }", [],
     "gamma: needs low < high, got low = 0.99, high = 0.9"),
    ("policy_lr = { low = 0.0, high = 0.1, log = true }", [],
     "policy_lr: a log range needs low > 0"),
    ("m_steps = { low = 1.5, high = 4 }", [], "m_steps: low must be an integer"),
    ("gamma = { low = 0.9, high = 1.5 }", [],
     "gamma = 1.5 is refused on CartPole-v1: gamma: must be in [0, 1], got 1.5"),
    ("activation = { choices = ['tanh', 'sigmoid'] }", [],
     "activation = 'sigmoid' is refused on CartPole-v1: activation: must be one of"),
    ("seed = { low = 1, high = 9 }", [], "seed: is set by the study for every trial"),
    ("gamma = 0.99", [], "gamma: needs a table such as"),
    ("gamma = { choices = [] }", [], "gamma: choices must be a non-empty list"),
    ("gamma = { low = 0.9, high = 0.99 }", ["--space", "other"],
     "space.toml: no space [space.other] (it has: test)"),
    ("gamma = { low = 0.9, high = 0.99 }", ["--reference", "CartPole-v1=lots"],
     "--reference: expected ENV=RETURN or ENV=FLOOR:RETURN"),
    ("gamma = { low = 0.9, high = 0.99 }", ["--env-ids", "CartPole-v1", "Acrobot-v1"],
     "--reference: Acrobot-v1 has no reference return"),
    ("gamma = { low = 0.9, high = 0.99 }", ["--env-ids", "NoSuchEnv-v0"],
     "--env-ids: unknown environment id 'NoSuchEnv-v0'"),
    ("gamma = { low = 0.9, high = 0.99 }", ["--trials", "0"],
     "--trials: must be an integer >= 1, got 0"),
    ("m_steps = { low = 1, high = 4 }", ["--", "--gamma", "2"],
     "CartPole-v1: gamma: must be in [0, 1], got 2.0"),
    ("gamma = { low = 0.9, high = 0.99 }", ["--", "--gamma", "0.95"],
     "the training flags after -- fix every option it searches"),
    ("gamma = { low = 0.9, high = 0.99 }", ["--", "--seed", "3"],
     "training flags after --: --seed is set by the study"),
    ("gamma = { low = 0.9, high = 0.99 }", ["--", "--no-such-flag"],
     "unrecognized arguments: --no-such-flag"),
])
def test_bad_input_is_one_line_before_any_trial(in_process, tmp_path, space, extra, expected):
    space_file = write_space(tmp_path / "space.toml", space + "\n")
    out = tmp_path / "study"
    args = ["--out-dir", out, "--space-file", space_file, "--space", "test", *TINY]
    if "--" not in extra:
        extra = [*extra, "--"]
    result = in_process(tune.main, *args, *extra)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert expected in result.stderr
    assert not (out / "trials").exists()


def test_a_study_continued_with_other_settings_is_refused(in_process, tmp_path):
    out = tmp_path / "study"
    space = write_space(tmp_path / "space.toml", "eval_max_steps = { choices = [500] }\n")
    assert in_process(tune.main, *study_args(out, trials=1, space=space)).returncode == 0
    result = in_process(tune.main, *study_args(out, "--seeds", "2", trials=2, space=space))
    assert result.returncode == 2
    assert "study 'vmpo-CartPole-v1' was started with other settings (seeds: [1] now [2])" \
        in result.stderr
    result = in_process(tune.main, *study_args(out, "--aggregate", "min", trials=2, space=space))
    assert result.returncode == 2
    assert "other settings (aggregate: 'mean' now 'min')" in result.stderr
    # a changed space is named by its ranges, not printed whole
    write_space(space, "eval_max_steps = { choices = [400] }\ngamma = { low = 0.9, high = 0.99 }\n")
    result = in_process(tune.main, *study_args(out, trials=2, space=space))
    assert result.returncode == 2
    assert "other settings (ranges: with gamma; other eval_max_steps)" in result.stderr


def test_a_trials_value_is_the_mean_or_the_worst_of_its_runs():
    # scores: Hopper's last two evaluations (20, 40) -> 30 -> 0.3; Ant's (50, 90) -> 0.7
    runs = [SimpleNamespace(spec=RunSpec("Hopper-v5", 1),
                            evaluations=[(1, 10.0), (2, 20.0), (3, 40.0)]),
            SimpleNamespace(spec=RunSpec("Ant-v5", 1),
                            evaluations=[(1, 0.0), (2, 50.0), (3, 90.0)])]
    for aggregate, expected in (("mean", 0.5), ("min", 0.3)):
        study = SimpleNamespace(final_evals=2, aggregate=aggregate,
                                score=lambda env_id, value: value / 100)
        study.combine = functools.partial(Study.combine, study)
        assert trial._objective(study, runs, 3) == pytest.approx(expected)
    # at an earlier report (2 evaluations) for the pruner: (10, 20) -> 0.15, (0, 50) -> 0.25
    assert trial._objective(study, runs, 2) == pytest.approx(0.15)


def test_ranges_and_flags():
    assert trial.as_flags("normalize_rewards", False) == ["--no-normalize-rewards"]
    assert trial.as_flags("policy_layer_sizes", (64, 64)) == ["--policy-layer-sizes", "64", "64"]
    assert trial.as_flags("policy_lr", 1e-05) == ["--policy-lr", "1e-05"]
    assert trial.as_flags("target_return", None) == ["--target-return", "none"]
    sizes = space._parse_range("here", "policy_layer_sizes", {"choices": [[64, 64], [256]]})
    assert sizes.choices == ((64, 64), (256,))
    fixed = optuna.trial.FixedTrial({"policy_layer_sizes": "256"})
    assert sizes.suggest(fixed) == (256,)
    lr = space._parse_range("here", "gamma", {"low": 0, "high": 1})
    assert (lr.low, lr.high) == (0.0, 1.0)  # a float option's TOML integers are floats
    assert space.Reference(500.0).score(250.0) == 0.5
    assert space.Reference(-150.0, -1200.0).score(-150.0) == 1.0


@pytest.mark.slow
def test_optuna_dashboard_reads_the_study(in_process, tmp_path):
    """The docs' `optuna-dashboard sqlite:///<out-dir>/study.db` lists the study."""
    import json
    import socket
    import urllib.request

    pytest.importorskip("optuna_dashboard")
    out = tmp_path / "study"
    space = write_space(tmp_path / "space.toml", "eval_max_steps = { choices = [500] }\n")
    assert in_process(tune.main, *study_args(out, trials=1, space=space)).returncode == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dashboard = os.path.join(os.path.dirname(sys.executable), "optuna-dashboard")
    server = subprocess.Popen([dashboard, f"sqlite:///{out}/study.db", "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        def listed():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=5) as response:
                    return json.load(response)
            except OSError:
                return None
        _wait_for(listed, timeout=60)
        names = [s["study_name"] for s in listed()["study_summaries"]]
        assert names == ["vmpo-CartPole-v1"]
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path):
    """The same command in two processes: every trial runs once, and together they stop at
    --trials."""
    out = tmp_path / "study"
    space = write_space(tmp_path / "space.toml", "gamma = { low = 0.9, high = 0.99 }\n")
    workers = [subprocess.Popen(
        [sys.executable, "-m", "minerva.tune", *study_args(
            out, "--pruner", "none", "--sampler-seed", seed, trials=4, space=space)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
        for seed in (1, 2)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    trials = load(out).trials
    assert len(trials) >= 4 and all(t.state.name == "COMPLETE" for t in trials)
    ran = [line for output in outputs for line in output.splitlines()
           if line.startswith("trial ")]
    assert len(ran) == len(trials)  # no trial ran in both
    assert sorted(int(line.split()[1]) for line in ran) == [t.number for t in trials]
    assert len({t.params["gamma"] for t in trials}) == len(trials)  # each its own options


def test_a_lost_or_interrupted_trial_counts_once_through_its_retry():
    """A trial failed by the heartbeat check (its session lost) or by a signal runs again;
    only the retry counts against --trials."""
    states = optuna.trial.TrialState
    study = optuna.create_study(direction="maximize")
    gamma = {"gamma": optuna.distributions.FloatDistribution(0.9, 0.99)}

    def add(state, value=None, **user_attrs):
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value, params={"gamma": 0.95}, distributions=gamma,
            user_attrs=user_attrs))

    add(states.COMPLETE, 1.0)
    add(states.FAIL, fail_reason="a bad combination")  # counts: it will not run again
    add(states.FAIL)  # lost with its session: the heartbeat check queued it again
    add(states.COMPLETE, 0.5, retry_of=2)
    add(states.FAIL, interrupted=True)  # interrupted: not yet queued again
    assert tune.finished_trials(study) == 3
    assert tune.retry_interrupted(study) == 1 and tune.retry_interrupted(study) == 0
    waiting = study.get_trials(states=(states.WAITING,))
    assert [t.user_attrs["retry_of"] for t in waiting] == [4]
    assert tune.finished_trials(study) == 3


def test_workers_never_take_one_queued_trial_twice(tmp_path):
    """Queued trials (the preset's, retries) are taken by one worker each, however many ask at
    once through their own connections to one SQLite study."""
    import threading

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="queue", storage=tune.open_storage(url, tune.retry))
    for x in range(24):
        study.enqueue_trial({"x": x})
    taken = []

    def worker():
        own = optuna.load_study(study_name="queue", storage=tune.open_storage(url, tune.retry))
        taken.extend(own.ask().number for _ in range(3))

    with pytest.warns(UserWarning, match="Heartbeat"):  # optuna: asking outside optimize()
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(taken) == list(range(24))


def test_the_trials_table_names_the_preset_and_a_trial_queued_with_a_note():
    gamma = {"gamma": optuna.distributions.FloatDistribution(0.9, 0.99)}
    trials = [optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE, value=value, params={"gamma": 0.95},
        distributions=gamma, user_attrs=attrs) for value, attrs in [
            (1.0, {"baseline": "preset"}), (0.5, {"note": "the preset, a tighter bound"}),
            (0.2, {})]]
    header, rows = report._trial_rows(SimpleNamespace(runs=[]), trials)
    assert header[-1] == "note"
    assert [row[-1] for row in rows] == ["the preset's values", "the preset, a tighter bound",
                                         ""]
