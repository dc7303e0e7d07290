"""``python -m minerva.train`` as a user runs it: through a subprocess, or (for its parsing
and errors, which need no process of their own) its ``main`` in this one. Its errors are one
line with exit status 2 (bad arguments, out dirs, resumes, removed options, bounds), an
unexpected error is one line unless --debug, and a run that never starts leaves no folder."""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import pytest
from helpers import one_line_error, run_main

from minerva.config import TrainConfig
from minerva.train import main

pytest.importorskip("envpool")


def run(*args, timeout=300):
    # from a neutral folder: `python -m` puts the working directory first on sys.path, and
    # the source checkout's minerva/ has no compiled modules
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([sys.executable, "-m", "minerva.train", *args], cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)


def test_help_documents_every_option(capsys):
    result = run_main(main, ["--help"], capsys)
    assert result.returncode == 0
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in result.stdout, field.name
    assert "--resume" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["--total-steps", "-5"], "--total-steps: must be a positive integer"),
    (["--advantage-estimator", "td"], "invalid choice: 'td'"),
    (["--topk-fraction", "1.5"], r"--topk-fraction: must be in \(0, 1\]"),
    (["--env-id", "CartPol-v1"], "did you mean 'CartPole-v1'"),
    (["--gamma", "abc"], "invalid float value"),
    (["--num-envs", "0"], "--num-envs: must be a positive integer"),
    (["--backend", "brax"], "invalid choice: 'brax'"),
    (["--dual-max-grad-norm", "-1"], r"--dual-max-grad-norm: must be a number >= 0"),
    (["--target-update-period", "-2"], "--target-update-period: must be an integer >= 0"),
    (["--std-parameterization", "tanh"], "invalid choice: 'tanh'"),
])
def test_bad_arguments_fail_at_once_naming_the_option(args, message, capsys):
    _assert_one_line(run_main(main, args, capsys), message)


@pytest.mark.slow
def test_a_bad_argument_is_one_line_from_the_command_line_too():
    _assert_one_line(run("--topk-fraction", "1.5", timeout=60),
                     r"^python -m minerva.train: error: --topk-fraction: must be in \(0, 1\]")


def _assert_one_line(result, message):
    import re

    assert result.returncode == 2
    # one line: argparse's ~50 lines of usage text do not come first
    assert "usage:" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert re.search(message, result.stderr.strip().splitlines()[-1]), result.stderr


@pytest.mark.slow
def test_short_run_and_resume(tmp_path):
    out = tmp_path / "run"
    result = run("--env-id", "Pendulum-v1", "--total-steps", "1024", "--eval-every", "1024",
                 "--num-envs", "4", "--rollout-steps", "32", "--eval-episodes", "2",
                 "--out-dir", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "eval/return_mean=" in result.stdout
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["global_step"] == 1024 and "eval/return_mean" in events[-1]
    # flags override the preset: 4 envs x 32 steps per rollout
    assert events[0]["global_step"] == 128

    # resuming keeps the checkpoint's configuration (env, out dir) unless flags say otherwise
    result = run("--resume", str(out / "vmpo_last.pt"), "--total-steps", "2048", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "Pendulum-v1" in result.stdout
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["global_step"] == 2048

    result = run("--resume", str(tmp_path / "missing.pt"), timeout=60)
    assert result.returncode == 2 and "--resume: no such checkpoint" in result.stderr


def test_target_return_none_overrides_the_preset():
    import argparse

    from minerva.train import build_parser, config_from_args

    parser = build_parser()
    config = config_from_args(parser, parser.parse_args(["--target-return", "none"]))
    assert config.env_id == "CartPole-v1" and config.target_return is None
    default = config_from_args(parser, parser.parse_args([]))
    assert default.target_return == 475.0  # the CartPole-v1 preset
    assert isinstance(parser, argparse.ArgumentParser)


def test_every_continuous_control_task_trains_with_one_configuration():
    from minerva.presets import all_presets, continuous_control
    from minerva.train import build_parser, config_from_args

    parser = build_parser()

    def config(*args):
        return config_from_args(parser, parser.parse_args([*args, "--out-dir", "x"]))

    shared = continuous_control()
    assert shared  # the table exists and is not empty
    run_only = {"total_steps", "eval_every"}
    mujoco = ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5", "Humanoid-v5"]
    for env_id in mujoco:
        assert set(all_presets()[env_id]) <= run_only, env_id
    # a Box-action env with or without a table of its own gets the shared configuration
    for env_id in [*mujoco, "InvertedPendulum-v5"]:
        options = dataclasses.asdict(config("--env-id", env_id))
        for name, value in shared.items():
            assert options[name] == value, (env_id, name)
    # flags still win over it, and a discrete env without a preset keeps TrainConfig's defaults
    assert config("--env-id", "Hopper-v5", "--num-envs", "3").num_envs == 3
    # V-MPO compiles the continuous-control update unless told not to; Pendulum's full-batch
    # table does not, and PPO's continuous-control table keeps the eager default
    assert config("--env-id", "Hopper-v5").compile_update
    assert not config("--env-id", "Hopper-v5", "--no-compile-update").compile_update
    assert not config("--env-id", "Pendulum-v1").compile_update
    assert not config("--env-id", "Hopper-v5", "--algo", "ppo").compile_update
    acrobot = config("--env-id", "Acrobot-v1")
    assert acrobot.num_envs == TrainConfig.num_envs
    assert acrobot.num_minibatches == TrainConfig.num_minibatches


def test_option_errors_are_typed_and_name_their_option(tmp_path, capsys):
    from minerva.errors import OptionError, OutDirError
    from minerva.run_folder import create_out_dir

    with pytest.raises(OptionError) as bad_option:
        TrainConfig(gamma=1.5).validate()
    assert (bad_option.value.option, str(bad_option.value)) == (
        "gamma", f"gamma: {bad_option.value.reason}")
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(OutDirError, match="is a file, not a folder") as bad_folder:
        create_out_dir(a_file)
    assert bad_folder.value.option == "out_dir"
    # the command line names the flag from the error's option, not from its text
    result = run_main(main, ["--out-dir", str(a_file)], capsys)
    assert result.returncode == 2
    assert result.stderr.strip().endswith(f"--out-dir: {a_file} is a file, not a folder")


# --- the CLI's errors: one line, exit 2, no traceback ----------------------------------------

@pytest.fixture(scope="module")
def a_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("files") / "a_file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("make_args,message", [
    (lambda f, run: ["--out-dir", str(f)], "--out-dir: .* is a file, not a folder"),
    (lambda f, run: ["--out-dir", str(f / "sub")], "--out-dir: .* is under a file"),
    (lambda f, run: ["--out-dir", str(run)], "--out-dir: .* already holds a run"),
    (lambda f, run: ["--resume", str(f)], "--resume: .* not a torch checkpoint"),
    (lambda f, run: ["--resume", ""], "--resume: needs a checkpoint file"),
    (lambda f, run: ["--resume", str(run / "vmpo_last.pt"), "--total-steps", "64"],
     "--total-steps: 64 is not above the 128 steps already trained"),
    (lambda f, run: ["--resume", str(run / "vmpo_last.pt")],
     "--total-steps: 128 is not above the 128 steps"),
    (lambda f, run: ["--resume", str(run / "vmpo_last.pt"), "--env-id", "Foo-v0"],
     "--env-id: unknown environment id 'Foo-v0'"),
    (lambda f, run: ["--resume", str(run / "vmpo_last.pt"), "--env-id", "dm_control/cheetah/run"],
     "^python -m minerva.train: error: --env-id: .*'dm_control/cheetah/run'"),
    (lambda f, run: ["--resume", str(run / "vmpo_last.pt"), "--activation", "relu"],
     "--activation: the checkpoint has 'tanh'"),
    (lambda f, run: ["--out-dir", ""], "--out-dir: must name a folder"),
    (lambda f, run: ["--out-dir", str(f.parent / "run\udcff")], "--out-dir: must be valid UTF-8"),
    (lambda f, run: ["--out-dir", str(f.parent / ("x" * 300))],
     "--out-dir: cannot create .*: File name too long"),
    (lambda f, run: ["--optimizer-type", "sgd"], r"--optimizer-type: removed \(SGD had no preset"),
    (lambda f, run: ["--pipelined-rollout"], r"--pipelined-rollout: removed \(stepping half"),
    (lambda f, run: ["--reference-ops"], r"--reference-ops: removed \(the pure-Python reference"),
    (lambda f, run: ["--decoupled-likelihood"],
     r"--decoupled-likelihood: removed \(in a 60-trial search .*#the-m-step-study\)"),
    (lambda f, run: ["--dual-parameterization", "softplus"],
     r"--dual-parameterization: removed \(in a 60-trial search"),
    (lambda f, run: ["--seed", "-5"], "--seed: must be an integer in"),
    (lambda f, run: ["--seed", str(2**32)], "--seed: must be an integer in"),
    (lambda f, run: ["--num-envs", str(10**9)], "--num-envs: must be at most"),
    (lambda f, run: ["--rollout-steps", str(2**62)], "--rollout-steps: a rollout of .* GiB"),
    (lambda f, run: ["--min-log-std=-inf"], "--min-log-std: must be a finite number"),
    (lambda f, run: ["--env-id", "FrozenLake-v1"],
     "--env-id: FrozenLake-v1: unsupported observation space Discrete"),
    (lambda f, run: ["--env-id", "os:CartPole-v1"],
     "--env-id: environment id 'os:CartPole-v1' names a module to import \\('os'\\)"),
    (lambda f, run: ["--policy-layer-sizes", "1000000000"],
     "^python -m minerva.train: error: --policy-layer-sizes: the networks need .* GiB"),
])
def test_ordinary_mistakes_get_one_line(a_file, saved_run, make_args, message, cli):
    one_line_error(cli(*make_args(a_file, saved_run)), message)


def test_an_unwritable_out_dir_gets_one_line(tmp_path, cli):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    one_line_error(cli("--out-dir", str(locked / "run")), "--out-dir: cannot create")


def test_an_unexpected_error_is_one_line_unless_debug(tmp_path, monkeypatch, cli):
    import minerva.trainers.on_policy as on_policy

    def broken(*args, **kwargs):  # an env that cannot be made, for a reason minerva cannot tell
        raise RuntimeError("the env exploded")

    monkeypatch.setattr(on_policy, "make_vector_env", broken)
    args = ["--env-id", "CartPole-v1", "--total-steps", "64", "--out-dir", str(tmp_path / "run"),
            "--backend", "gymnasium", "--torch-threads", "1", "--no-progress"]
    result = cli(*args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "minerva: error: RuntimeError: the env exploded" in result.stderr
    assert "--debug" in result.stderr
    with pytest.raises(RuntimeError, match="the env exploded"):  # raised on: its traceback
        cli(*args, "--debug")


def test_a_run_that_never_starts_leaves_no_folder(tmp_path, cli):
    out = tmp_path / "new" / "run"
    one_line_error(cli("--rollout-steps", str(2**62), "--out-dir", str(out)),
                    "--rollout-steps: a rollout of")
    assert list(tmp_path.iterdir()) == []


def test_a_refused_resume_leaves_no_folder(tmp_path, saved_run, cli):
    out = tmp_path / "new" / "run"
    one_line_error(cli("--resume", str(saved_run / "vmpo_last.pt"), "--activation", "relu",
                         "--total-steps", "4096", "--out-dir", str(out)),
                    "--activation: the checkpoint has 'tanh'")
    assert list(tmp_path.iterdir()) == []
