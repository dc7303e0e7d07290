"""``python -m minerva.evaluate``: a checkpoint's policy on fresh episodes, and clear errors:
damaged values in the checkpoint, a backend that cannot run its env id, and outputs that
cannot be written are each named in one line with exit status 2 before any episode, and an
unexpected error is one line unless --debug."""

import functools
import json
import math
import tempfile

import gymnasium as gym
import pytest
import torch
from helpers import edited, one_line, run_module, set_value

from minerva import evaluate
from minerva.envs import make_vector_env
from minerva.evaluate import main
from minerva.trainers.vmpo.trainer import VMPOTrainer, _evaluate_vectorized

pytest.importorskip("envpool")


@pytest.fixture(name="evaluate")  # the module-level name evaluate is minerva.evaluate
def evaluate_in_process(in_process):
    """``python -m minerva.evaluate ARGS`` run in this process
    (test_evaluate_is_one_line_from_the_command_line_too runs it as a process too)."""
    return functools.partial(in_process, main)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    trainer = VMPOTrainer("Pendulum-v1", 0, "cpu", (16,), (16,), 16, num_envs=4,
                          eval_every=128, eval_episodes=2, progress=False, backend="envpool")
    trainer.train(256, str(out))
    reference = _evaluate_vectorized(trainer.agent, make_vector_env("Pendulum-v1", 3, 5,
                                                                     "gymnasium"), seed=5)
    trainer.close()
    return out, reference


def test_the_summary_is_the_trainers_evaluation(trained, tmp_path, evaluate):
    out, reference = trained
    result = evaluate(out / "vmpo_last.pt", "--episodes", 3, "--seed", 5, "--backend",
                      "gymnasium", "--json", tmp_path / "summary.json")
    assert result.returncode == 0, result.stderr
    assert "Pendulum-v1: 3 deterministic episodes of the policy at step 256" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    # the same policy, normaliser and seeds as the trainer's own evaluation function
    for key, value in reference.items():
        assert summary[key.removeprefix("eval/")] == pytest.approx(value), key
    assert f"| {reference['eval/return_mean']:.1f} |" in result.stdout


def test_stochastic_episodes_sample_actions(trained, tmp_path, evaluate):
    out, reference = trained
    result = evaluate(out / "vmpo_last.pt", "--episodes", 3, "--seed", 5, "--backend",
                      "gymnasium", "--stochastic", "--json", tmp_path / "summary.json")
    assert result.returncode == 0, result.stderr
    assert "3 stochastic episodes" in result.stdout
    assert json.loads((tmp_path / "summary.json").read_text())["return_mean"] != \
        pytest.approx(reference["eval/return_mean"])


@pytest.mark.parametrize("make_file,args,message", [
    (lambda d, run: d / "missing.pt", [], "no such checkpoint"),
    (lambda d, run: (d / "text.pt", (d / "text.pt").write_text("hello"))[0], [],
     "not a torch checkpoint"),
    (lambda d, run: run / "vmpo_last.pt", ["--episodes", "0"], "--episodes: must be between"),
    (lambda d, run: run / "vmpo_last.pt", ["--seed", "-1"], "--seed: must be in"),
])
def test_mistakes_get_one_line(trained, tmp_path, make_file, args, message, evaluate):
    out, _ = trained
    result = evaluate(make_file(tmp_path, out), *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1], result.stderr


def test_weights_that_do_not_fit_the_env_are_named(trained, tmp_path, evaluate):
    out, _ = trained
    state = torch.load(out / "vmpo_last.pt", weights_only=True)
    state["config"] = {**state["config"], "policy_layer_sizes": (8,)}
    torch.save(state, tmp_path / "other.pt")
    result = evaluate(tmp_path / "other.pt")
    assert result.returncode == 2
    assert "the checkpoint's weights do not fit Pendulum-v1" in result.stderr


@pytest.mark.slow
def test_a_video_of_one_episode(trained, tmp_path, evaluate):
    pytest.importorskip("imageio_ffmpeg")
    pytest.importorskip("pygame")
    import imageio.v3 as imageio

    out, _ = trained
    video = tmp_path / "pendulum.mp4"
    result = evaluate(out / "vmpo_last.pt", "--episodes", 1, "--video", video)
    assert result.returncode == 0, result.stderr
    # Pendulum's episodes last 200 steps: the reset frame and one per step
    assert f"video: {video} (201 frames, one episode" in result.stdout
    frames = imageio.imread(video)
    assert frames.shape[0] == 201 and frames.shape[-1] == 3 and frames.max() > 0


# --- damaged values, and bad outputs: one line, exit 2, before any episode -------------------

@pytest.fixture(scope="module")
def gym_only_id():
    """An id gymnasium has and envpool does not."""
    env_id = "minerva-test/GymOnlyCartPole-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point="gymnasium.envs.classic_control:CartPoleEnv",
                     max_episode_steps=500)
    return env_id


@pytest.mark.parametrize("edit,message", [
    (set_value("agent", "policy_trunk.0.weight", value=math.nan),
     r"holds non-finite values: agent\.policy_trunk\.0\.weight has NaN"),
    (set_value("agent", "obs_normalizer.var", value=math.inf),
     r"holds non-finite values: agent\.obs_normalizer\.var has infinity"),
    (set_value("backend", value="jax"), r"has an unknown backend 'jax'"),
    (set_value("env_id", value="Foo-v0"),
     r"has an env_id minerva does not make: unknown environment id 'Foo-v0'"),
    (set_value("env_id", value="Pendulum-v1"),
     r"damaged minerva checkpoint: its env_id 'Pendulum-v1' is not its config's 'CartPole-v1'"),
    (set_value("global_step", value="100"),
     r"damaged minerva checkpoint: global_step must be a non-negative integer, got '100'"),
    (set_value("agent", value=[1, 2]),
     r"the checkpoint's weights for CartPole-v1 are a list, not a dict of tensors"),
    (set_value("config", "policy_layer_sizes", value=(8,)),
     r"weights do not fit CartPole-v1: size mismatch for policy_trunk\.0\.weight: copying a "
     r"param with shape torch\.Size\(\[16, 4\]\)"),
    (set_value("config", "policy_layer_sizes", value=(1_000_000, 1_000_000)),
     r"policy_layer_sizes: the networks need .* GiB \([\d,]+ parameters, and the "
     r"evaluation's activations\), more than"),
    # finite but impossible values
    (set_value("agent", "obs_normalizer.var", value=-1.0),
     r"damaged minerva checkpoint: agent\.obs_normalizer\.var must be >= 0"),
    (set_value("reward_scaler", "return_stats.var", value=-1.0),
     r"damaged minerva checkpoint: reward_scaler\.return_stats\.var must be >= 0"),
    (set_value("duals", "log_eta", value=1e30),
     r"damaged minerva checkpoint: duals\.log_eta must be in \[-18\.4, 9\.21\]"),
    (lambda state: state["optimizer"]["param_groups"][0].update(lr=-1.0),
     r"damaged minerva checkpoint: optimizer learning rate must be a finite number >= 0, "
     r"got -1"),
    (set_value("best_return", value=math.inf),
     r"damaged minerva checkpoint: best_return must be a finite number or -inf, got inf"),
    (set_value("recent_returns", value=["a", "b"]),
     r"damaged minerva checkpoint: recent_returns must be a list of finite numbers"),
])
def test_evaluate_names_damaged_values_in_one_line(saved, tmp_path, capsys, edit, message):
    path = edited(saved, tmp_path / "damaged.pt", edit)
    with pytest.raises(SystemExit) as exited:
        evaluate.main([str(path), "--episodes", "1"])
    captured = capsys.readouterr()
    assert exited.value.code == 2 and captured.out == ""  # no episode ran
    one_line(captured.err, "^python -m minerva.evaluate: error: .*" + message)


def test_evaluate_names_a_backend_that_cannot_run_the_id(saved, tmp_path, capsys, gym_only_id):
    def edit(state):
        state["env_id"] = state["config"]["env_id"] = gym_only_id
        state["backend"] = "envpool"

    path = edited(saved, tmp_path / "other.pt", edit)
    for args, message in (
            ([], r"--backend: the checkpoint's backend cannot run here: environment "
                 rf"'{gym_only_id}' is not available on backend 'envpool'"),
            (["--backend", "envpool"], r"--backend: environment .* not available on backend")):
        with pytest.raises(SystemExit) as exited:
            evaluate.main([str(path), *args])
        assert exited.value.code == 2
        one_line(capsys.readouterr().err, message)
    assert evaluate.main([str(path), "--episodes", "1", "--backend", "gymnasium"]) == 0


@pytest.mark.parametrize("make_args,message", [
    (lambda d, ckpt: ["--json", d], r"--json: .* is a folder, not a file"),
    (lambda d, ckpt: ["--json", d / "missing" / "s.json"],
     r"--json: .* is in a folder that does not exist"),
    (lambda d, ckpt: ["--json", ckpt / "s.json"], r"--json: .* is under a file, not a folder"),
    (lambda d, ckpt: ["--json", ckpt], r"--json: .* is the checkpoint itself"),
    (lambda d, ckpt: ["--video", d / "out.avi"], r"--video: .*out\.avi is not an \.mp4 file"),
    (lambda d, ckpt: ["--video", d / "missing" / "out.mp4"],
     r"--video: .* is in a folder that does not exist"),
    (lambda d, ckpt: ["--json", d / "a.mp4", "--video", d / "a.mp4"],
     r"--video: .* is the --json file too"),
    (lambda d, ckpt: ["--device", "cuda:0" if not torch.cuda.is_available() else "meta"],
     r"--device: (needs torch with CUDA|must be a cpu or cuda device)"),
])
def test_evaluate_checks_its_outputs_before_the_episodes(saved, tmp_path, capsys, make_args,
                                                         message, monkeypatch):
    def no_episodes(*args, **kwargs):
        raise AssertionError("episodes ran")

    monkeypatch.setattr(evaluate, "evaluate", no_episodes)
    with pytest.raises(SystemExit) as exited:
        evaluate.main([str(saved), *map(str, make_args(tmp_path, saved))])
    assert exited.value.code == 2
    one_line(capsys.readouterr().err, "^python -m minerva.evaluate: error: " + message)


@pytest.mark.slow
def test_evaluate_is_one_line_from_the_command_line_too(saved, tmp_path):
    path = edited(saved, tmp_path / "nan.pt",
                  set_value("agent", "policy.logits.weight", value=math.nan))
    result = run_module("minerva.evaluate", path, "--json", tmp_path / "s.json",
                  cwd=tempfile.gettempdir())
    assert result.returncode == 2 and result.stdout == ""
    one_line(result.stderr, r"non-finite values: agent\.policy\.logits\.weight has NaN")
    assert not (tmp_path / "s.json").exists()


def test_an_unexpected_evaluate_error_is_one_line_unless_debug(saved, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the env exploded")

    monkeypatch.setattr(evaluate, "evaluate", broken)
    assert evaluate.main([str(saved)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m minerva.evaluate: error: RuntimeError: the env exploded\n")
    assert "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="the env exploded"):
        evaluate.main([str(saved), "--debug"])
