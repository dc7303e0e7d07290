"""Run outputs beyond metrics.jsonl and TensorBoard: Weights & Biases (offline, no account)
and the video of the best policy at the end of training."""

import json
import subprocess
import sys
import tempfile

import pytest

from minerva.config import TrainConfig
from minerva.run_log import check_wandb
from minerva.trainers.vmpo.trainer import VMPOTrainer

pytest.importorskip("envpool")


def cli(*args, hide=()):
    """``python -m minerva.train ARGS``, with the modules in ``hide`` made unimportable."""
    code = (f"import sys; sys.modules.update(dict.fromkeys({list(hide)!r})); "
            "from minerva.train import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-P", "-c", code, *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          cwd=tempfile.gettempdir())


def train_with_wandb(out, steps):
    config = TrainConfig(env_id="CartPole-v1", seed=0, policy_layer_sizes=(16,),
                         value_layer_sizes=(16,), rollout_steps=16, num_envs=4, eval_every=64,
                         eval_episodes=2, progress=False, wandb_project="minerva-tests")
    trainer = VMPOTrainer.from_config(config)
    try:
        trainer.train(steps, str(out))
    finally:
        trainer.close()


def events(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def offline_wandb(monkeypatch):
    """wandb in offline mode, with every run it starts and every event it is given."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    runs, logged = [], []
    init = wandb.init

    def recording_init(*args, **kwargs):
        run = init(*args, **kwargs)
        runs.append((run, kwargs))
        log = run.log
        run.log = lambda data, *a, **k: (logged.append(dict(data)), log(data, *a, **k))[1]
        return run

    monkeypatch.setattr(wandb, "init", recording_init)
    return runs, logged


@pytest.mark.slow
def test_wandb_gets_the_same_events_and_the_config(offline_wandb, tmp_path):
    runs, logged = offline_wandb
    train_with_wandb(tmp_path, 128)
    (run, kwargs), = runs
    assert kwargs["project"] == "minerva-tests" and kwargs["name"] == tmp_path.name
    assert kwargs["config"]["env_id"] == "CartPole-v1" and kwargs["config"]["num_envs"] == 4
    # every metrics.jsonl event, with the same names and values
    assert logged == events(tmp_path)
    assert json.loads((tmp_path / "run.json").read_text())["wandb_run_id"] == run.id
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{run.id}/run-{run.id}.wandb"))


@pytest.mark.slow
def test_a_resumed_run_continues_its_wandb_run(offline_wandb, tmp_path):
    runs, logged = offline_wandb
    train_with_wandb(tmp_path, 64)
    resumed = VMPOTrainer.from_checkpoint(tmp_path / "vmpo_last.pt")
    try:
        assert resumed.config.wandb_project == "minerva-tests"
        resumed.train(128, str(tmp_path))
    finally:
        resumed.close()
    assert [kwargs["id"] for _, kwargs in runs] == [None, runs[0][0].id]
    assert [e["global_step"] for e in logged if "eval/return_mean" in e] == [64, 128]


def test_without_wandb_the_run_is_refused_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ValueError, match=r"wandb_project: .* needs wandb: pip install "
                                         r"'minerva\[wandb\]'"):
        check_wandb("minerva-tests")
    check_wandb("")  # not asked for: nothing to check
    result = cli("--wandb-project", "p", "--total-steps", 64, "--out-dir", tmp_path / "run",
                 hide=["wandb"])
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "python -m minerva.train: error: --wandb-project: logging to Weights & Biases needs "
        "wandb: pip install 'minerva[wandb]' (or leave --wandb-project out)")
    assert not (tmp_path / "run").exists()  # refused before the run began


@pytest.mark.slow
def test_capture_video_records_the_best_policy(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    pytest.importorskip("pygame")
    import imageio.v3 as imageio

    result = cli("--env-id", "CartPole-v1", "--total-steps", 512, "--eval-every", 256,
                 "--capture-video", "--out-dir", tmp_path, "--no-progress")
    assert result.returncode == 0, result.stderr
    video = tmp_path / "videos" / "best.mp4"
    line = next(line for line in result.stdout.splitlines() if line.startswith("video: "))
    assert line.startswith(f"video: {video} (the best policy, step ")
    frames = imageio.imread(video)
    assert frames.ndim == 4 and frames.shape[-1] == 3 and len(frames) >= 2
    # the video is a run's file: --overwrite removes it with the others
    again = cli("--env-id", "CartPole-v1", "--total-steps", 64, "--out-dir", tmp_path,
                "--overwrite", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert not video.exists()


@pytest.mark.slow
@pytest.mark.parametrize("env_id,hide,message", [
    # envpool's own dm_control id: no gymnasium version renders it
    ("CheetahRun-v1", [], "CheetahRun-v1 has no gymnasium version to render (envpool, which "
                          "runs it, cannot render)"),
    ("Breakout-v5", ["ale_py"], "recording Breakout-v5 needs ALE and OpenCV (envpool, which "
                                'runs it, cannot render): pip install "minerva[atari]"'),
])
def test_capture_video_that_cannot_be_made_is_refused_at_once(env_id, hide, message, tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    result = cli("--env-id", env_id, "--capture-video", "--out-dir", tmp_path / "run",
                 hide=hide)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"python -m minerva.train: error: --capture-video: {message}")
    assert not (tmp_path / "run").exists()
