"""Checkpoints as input from elsewhere: an env id that would import code, a GPU run's file on
a CPU, and damaged values, each refused or named in one line by evaluate and resume."""

import math
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import gymnasium as gym
import pytest
import torch

from minerva import checkpoint, evaluate
from minerva.trainers.vmpo.trainer import VMPOTrainer

EVIL = "evilmod:CartPole-v1"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """An untrained V-MPO trainer's CartPole checkpoint (gymnasium backend)."""
    path = tmp_path_factory.mktemp("saved") / "vmpo_last.pt"
    trainer = VMPOTrainer("CartPole-v1", 0, "cpu", (16,), (16,), 16, num_envs=2,
                          eval_episodes=1, progress=False, backend="gymnasium")
    trainer.save_checkpoint(path)
    trainer.close()
    return path


def edited(saved: Path, path: Path, edit) -> Path:
    """``saved`` with ``edit(state)`` applied, at ``path``."""
    state = torch.load(saved, weights_only=True)
    edit(state)
    torch.save(state, path)
    return path


def _cli(module: str, *args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _one_line(stderr: str, message: str) -> None:
    import re

    assert "Traceback" not in stderr and "usage:" not in stderr, stderr
    assert re.search(message, stderr.strip().splitlines()[-1]), stderr


# --- no code from a checkpoint's env id ------------------------------------------------------

def _evil_checkpoint(saved: Path, folder: Path, fields=("env_id", "config")) -> Path:
    """A checkpoint whose env id names ``evilmod``, a module beside it that leaves a file
    ``imported`` when imported."""
    (folder / "evilmod.py").write_text(f"open({str(folder / 'imported')!r}, 'w').close()\n")

    def edit(state):
        if "env_id" in fields:
            state["env_id"] = EVIL
        if "config" in fields:
            state["config"]["env_id"] = EVIL

    return edited(saved, folder / "evil.pt", edit)


@pytest.mark.slow
@pytest.mark.parametrize("module,args,message", [
    ("minerva.evaluate", ["--episodes", "1"],
     r"^python -m minerva.evaluate: error: evil.pt has an env_id minerva does not make: "
     r"environment id 'evilmod:CartPole-v1' names a module to import \('evilmod'\)"),
    # the checkpoint's id is the checkpoint's fault, not --env-id's
    ("minerva.train", ["--total-steps", "4096"],
     r"^python -m minerva.train: error: --resume: evil.pt has an env_id minerva does not "
     r"make: environment id 'evilmod:CartPole-v1' names a module"),
])
def test_a_checkpoints_env_id_imports_nothing(saved, tmp_path, module, args, message):
    _evil_checkpoint(saved, tmp_path)
    # run from the module's folder: `python -m` puts it first on sys.path
    flag = ["--resume"] if module == "minerva.train" else []
    result = _cli(module, *flag, "evil.pt", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    _one_line(result.stderr, message)
    assert not (tmp_path / "imported").exists()


@pytest.mark.parametrize("fields", [("env_id", "config"), ("config",)])
def test_every_reader_refuses_a_module_id_before_importing(saved, tmp_path, monkeypatch,
                                                         capsys, fields):
    path = _evil_checkpoint(saved, tmp_path, fields)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    which = "an env_id" if "env_id" in fields else "a config env_id"
    message = f"has {which} minerva does not make: environment id '{EVIL}' names a module"
    for read in (checkpoint.load, VMPOTrainer.from_checkpoint):
        with pytest.raises(checkpoint.CheckpointError, match=message):
            read(path)
    with pytest.raises(SystemExit) as exited:  # and the video's path
        evaluate.main([str(path), "--video", str(tmp_path / "evil.mp4")])
    assert exited.value.code == 2 and message in capsys.readouterr().err
    assert "evilmod" not in sys.modules and not (tmp_path / "imported").exists()


# --- a GPU run's checkpoint on a CPU ---------------------------------------------------------

@pytest.fixture
def cuda_checkpoint(saved, tmp_path) -> Path:
    """``saved`` as a run with ``--device cuda`` writes it: the config's device, CUDA's random
    state, and every storage tagged ``cuda:0`` (torch.load without a map_location fails on
    a CPU-only torch)."""
    if torch.cuda.is_available():
        pytest.skip("a CPU-only machine's case")
    state = torch.load(saved, weights_only=True)
    state["config"]["device"] = "cuda"
    state["rng"]["torch_cuda"] = torch.zeros(16, dtype=torch.uint8)
    path = tmp_path / "cuda.pt"
    with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
        torch.save(state, path)
    with pytest.raises(RuntimeError, match="on a CUDA device"):
        torch.load(path, weights_only=True)
    return path


def test_a_gpu_checkpoint_resumes_on_the_cpu(cuda_checkpoint, tmp_path):
    trainer = VMPOTrainer.from_checkpoint(cuda_checkpoint, device="cpu", eval_every=32)
    assert trainer.device.type == "cpu" and trainer.config.device == "cpu"
    trainer.train(32, str(tmp_path))
    trainer.close()
    assert checkpoint.load(tmp_path / "vmpo_last.pt")["global_step"] == 32
    # without a device, the saved one is named, and how to choose another
    with pytest.raises(ValueError, match=r"^device: the checkpoint was trained on 'cuda', which "
                                         r"needs torch with CUDA .*; choose another, e\.g\. cpu"):
        VMPOTrainer.from_checkpoint(cuda_checkpoint)


@pytest.mark.slow
def test_a_gpu_checkpoint_resumes_on_the_cpu_from_the_command_line(cuda_checkpoint, tmp_path):
    out = tmp_path / "resumed"
    args = ["--resume", cuda_checkpoint, "--total-steps", "32", "--eval-every", "32",
            "--out-dir", out, "--no-progress"]
    result = _cli("minerva.train", *args, cwd=tempfile.gettempdir())
    assert result.returncode == 2
    _one_line(result.stderr, r"--device: the checkpoint was trained on 'cuda'")
    result = _cli("minerva.train", *args, "--device", "cpu", cwd=tempfile.gettempdir())
    assert result.returncode == 0, result.stderr
    assert "device cpu" in result.stdout
    resumed = checkpoint.load(out / "vmpo_last.pt")
    assert resumed["global_step"] == 32 and resumed["config"]["device"] == "cpu"


def test_a_gpu_checkpoint_is_evaluated_on_the_cpu(cuda_checkpoint, capsys):
    assert evaluate.main([str(cuda_checkpoint), "--episodes", "1"]) == 0
    assert "CartPole-v1: 1 deterministic episodes of the policy at step 0" in (
        capsys.readouterr().out)


# --- damaged values, and bad outputs: one line, exit 2, before any episode -------------------

def _set(*keys, value):
    def edit(state):
        target = state
        for key in keys[:-1]:
            target = target[key]
        if isinstance(target[keys[-1]], torch.Tensor):
            target[keys[-1]].view(-1)[0] = value
        else:
            target[keys[-1]] = value
    return edit


@pytest.fixture(scope="module")
def gym_only_id():
    """An id gymnasium has and envpool does not."""
    env_id = "minerva-test/GymOnlyCartPole-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point="gymnasium.envs.classic_control:CartPoleEnv",
                     max_episode_steps=500)
    return env_id


@pytest.mark.parametrize("edit,message", [
    (_set("agent", "policy_trunk.0.weight", value=math.nan),
     r"holds non-finite values: agent\.policy_trunk\.0\.weight has NaN"),
    (_set("agent", "obs_normalizer.var", value=math.inf),
     r"holds non-finite values: agent\.obs_normalizer\.var has infinity"),
    (_set("backend", value="jax"), r"has an unknown backend 'jax'"),
    (_set("env_id", value="Foo-v0"),
     r"has an env_id minerva does not make: unknown environment id 'Foo-v0'"),
    (_set("env_id", value="Pendulum-v1"),
     r"damaged minerva checkpoint: its env_id 'Pendulum-v1' is not its config's 'CartPole-v1'"),
    (_set("global_step", value="100"),
     r"damaged minerva checkpoint: global_step must be a non-negative integer, got '100'"),
    (_set("agent", value=[1, 2]),
     r"the checkpoint's weights for CartPole-v1 are a list, not a dict of tensors"),
    (_set("config", "policy_layer_sizes", value=(8,)),
     r"weights do not fit CartPole-v1: size mismatch for policy_trunk\.0\.weight: copying a "
     r"param with shape torch\.Size\(\[16, 4\]\)"),
    (_set("config", "policy_layer_sizes", value=(1_000_000, 1_000_000)),
     r"policy_layer_sizes: the networks need .* GiB \([\d,]+ parameters, and the "
     r"evaluation's activations\), more than"),
    # finite but impossible values
    (_set("agent", "obs_normalizer.var", value=-1.0),
     r"damaged minerva checkpoint: agent\.obs_normalizer\.var must be >= 0"),
    (_set("reward_scaler", "return_stats.var", value=-1.0),
     r"damaged minerva checkpoint: reward_scaler\.return_stats\.var must be >= 0"),
    (_set("duals", "log_eta", value=1e30),
     r"damaged minerva checkpoint: duals\.log_eta must be in \[-18\.4, 9\.21\]"),
    (lambda state: state["optimizer"]["param_groups"][0].update(lr=-1.0),
     r"damaged minerva checkpoint: optimizer learning rate must be a finite number >= 0, "
     r"got -1"),
    (_set("best_return", value=math.inf),
     r"damaged minerva checkpoint: best_return must be a finite number or -inf, got inf"),
    (_set("recent_returns", value=["a", "b"]),
     r"damaged minerva checkpoint: recent_returns must be a list of finite numbers"),
])
def test_evaluate_names_damaged_values_in_one_line(saved, tmp_path, capsys, edit, message):
    path = edited(saved, tmp_path / "damaged.pt", edit)
    with pytest.raises(SystemExit) as exited:
        evaluate.main([str(path), "--episodes", "1"])
    captured = capsys.readouterr()
    assert exited.value.code == 2 and captured.out == ""  # no episode ran
    _one_line(captured.err, "^python -m minerva.evaluate: error: .*" + message)


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
        _one_line(capsys.readouterr().err, message)
    assert evaluate.main([str(path), "--episodes", "1", "--backend", "gymnasium"]) == 0


def test_a_compressed_checkpoint_is_refused_before_it_is_unpacked(saved, tmp_path):
    """A few hundred kilobytes that would inflate to gigabytes: torch.save stores every
    entry as it is, so a compressed one is not minerva's."""
    import zipfile

    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(packed, "w") as target:
        for item in source.infolist():
            target.writestr(item.filename, source.read(item.filename), zipfile.ZIP_DEFLATED)
    with pytest.raises(checkpoint.CheckpointError, match="holds compressed entries .* torch"
                                                         ".save never writes"):
        checkpoint.load(packed)


def test_a_resumed_run_names_a_damaged_random_state(saved, tmp_path):
    path = edited(saved, tmp_path / "rng.pt",
                  lambda state: state["rng"]["numpy"].update(pos="abc"))
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"rng\.pt: damaged checkpoint: rng cannot be restored"):
        VMPOTrainer.from_checkpoint(path)


def test_a_resumed_run_names_non_finite_weights(saved, tmp_path):
    path = edited(saved, tmp_path / "nan.pt", _set("duals", "log_eta", value=math.nan))
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"non-finite values: duals\.log_eta has NaN"):
        VMPOTrainer.from_checkpoint(path)


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
    _one_line(capsys.readouterr().err, "^python -m minerva.evaluate: error: " + message)


@pytest.mark.slow
def test_evaluate_is_one_line_from_the_command_line_too(saved, tmp_path):
    path = edited(saved, tmp_path / "nan.pt",
                  _set("agent", "policy.logits.weight", value=math.nan))
    result = _cli("minerva.evaluate", path, "--json", tmp_path / "s.json",
                  cwd=tempfile.gettempdir())
    assert result.returncode == 2 and result.stdout == ""
    _one_line(result.stderr, r"non-finite values: agent\.policy\.logits\.weight has NaN")
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
