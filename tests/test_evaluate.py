"""``python -m minerva.evaluate``: a checkpoint's policy on fresh episodes, and clear errors."""

import functools
import json

import pytest
import torch

from minerva.envs import make_vector_env
from minerva.evaluate import main
from minerva.trainers.vmpo.trainer import VMPOTrainer, _evaluate_vectorized

pytest.importorskip("envpool")


@pytest.fixture
def evaluate(in_process):
    """``python -m minerva.evaluate ARGS`` run in this process
    (tests/test_reliability_checkpoints.py runs it as a process too)."""
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
