"""minerva/checkpoint.py and the trainer's resume (``from_checkpoint``, ``state_dict``):
checkpoints hold only tensors and plain values; a crafted, unreadable, compressed or damaged
file, or one whose env id names a module, is refused by name before anything runs; a failed
run or a full disk leaves the last checkpoint as it was; checkpoints also come on a
wall-clock cadence; a GPU run's checkpoint resumes and is evaluated on a CPU; and a resume
applies the options it can and refuses those it cannot."""

import json
import math
import os
import pickle
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from helpers import edited, make_trainer, one_line, run_module, set_value

from minerva import checkpoint, evaluate
from minerva.trainers.vmpo.trainer import VMPOTrainer
from minerva.trainers.vmpo.update import VMPOUpdate

pytest.importorskip("envpool")

EVIL = "evilmod:CartPole-v1"


# --- safe checkpoints ------------------------------------------------------------------------

class _Payload:
    """Unpickling this runs a shell command (what a malicious checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _crafted_files(folder: Path, saved_run: Path, marker: Path) -> list[Path]:
    plain = folder / "plain_pickle.pt"
    with open(plain, "wb") as f:
        pickle.dump({"format": 3, "config": {}, "agent": _Payload(marker)}, f)
    torch_file = folder / "torch_payload.pt"
    torch.save({"format": 3, "config": {}, "agent": {}, "x": _Payload(marker)}, torch_file)
    # a real checkpoint with one extra payload key: it used to resume and train normally
    real = torch.load(saved_run / "vmpo_last.pt", weights_only=True)
    extra = folder / "vmpo_last.pt"
    torch.save({**real, "extra": _Payload(marker)}, extra)
    return [plain, torch_file, extra]


def test_a_crafted_checkpoint_runs_nothing_through_any_loader(tmp_path, saved_run, cli):
    marker = tmp_path / "payload-ran"
    for path in _crafted_files(tmp_path, saved_run, marker):
        with pytest.raises(checkpoint.CheckpointError):
            checkpoint.load(path)
        with pytest.raises(checkpoint.CheckpointError):
            VMPOTrainer.from_checkpoint(path)
        result = cli("--resume", str(path), "--total-steps", "4096")
        assert result.returncode == 2 and "--resume:" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert not marker.exists()
    # the CLI's message says why the file was refused
    assert "could run code" in result.stderr and "posix.system" in result.stderr


def test_checkpoints_hold_only_tensors_and_plain_values(saved_run):
    state = torch.load(saved_run / "vmpo_last.pt", weights_only=True)  # raises otherwise
    assert state["format"] == checkpoint.FORMAT
    assert torch.serialization.get_unsafe_globals_in_checkpoint(saved_run / "vmpo_last.pt") == []


def test_format_2_checkpoints_with_numpy_state_are_refused_in_one_line(tmp_path, saved_run):
    state = torch.load(saved_run / "vmpo_last.pt", weights_only=True)
    rng = state["rng"]
    numpy_rng = rng["numpy"]
    state.update(format=2, reward_scaler_return=np.zeros(4), rng={
        **rng, "numpy": ("MT19937", numpy_rng["key"].numpy().astype(np.uint32),
                         numpy_rng["pos"], numpy_rng["has_gauss"], numpy_rng["gauss"])})
    old = tmp_path / "format2.pt"
    torch.save(state, old)
    with pytest.raises(checkpoint.CheckpointError, match="is a checkpoint of format 1 or 2 "
                                                         r"\(it holds numpy objects\); this "
                                                         "minerva reads format 3 only"):
        checkpoint.load(old)


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"hello, I am a text file\n", "not a torch checkpoint"),
    ("truncated", "corrupt or truncated|not a torch checkpoint"),
    ("foreign", "not a minerva checkpoint"),
    ("incomplete", "incomplete minerva checkpoint \\(it lacks env_id, duals"),
    ("folder", "is a folder"),
])
def test_unreadable_checkpoints_are_named(tmp_path, saved_run, content, message):
    path = tmp_path / "bad.pt"
    if content == "truncated":
        data = (saved_run / "vmpo_last.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif content == "incomplete":
        state = torch.load(saved_run / "vmpo_last.pt", weights_only=True)
        torch.save({k: v for k, v in state.items() if k not in ("env_id", "duals")}, path)
    elif content == "folder":
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load(path)


def test_a_checkpoint_of_other_networks_is_refused(tmp_path, saved_run):
    state = torch.load(saved_run / "vmpo_last.pt", weights_only=True)
    # a checkpoint whose weights do not match its own config (hand-edited or corrupted)
    state["agent"] = {k: (v[:1] if v.ndim else v) for k, v in state["agent"].items()}
    path = tmp_path / "mismatch.pt"
    torch.save(state, path)
    # named down to the first key that does not fit (torch's heading line says none)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"weights do not fit this CartPole-v1 trainer: size mismatch for "
                             r"obs_normalizer\.mean: copying a param with shape .* "
                             r"\(and 7 more\)$"):
        VMPOTrainer.from_checkpoint(path)


# --- nothing lost ----------------------------------------------------------------------------

def test_a_failed_run_leaves_the_last_checkpoint_as_it_was(tmp_path, saved_run, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("vmpo_last.pt", "metrics.jsonl"):
        (out / name).write_bytes((saved_run / name).read_bytes())
    before = (out / "vmpo_last.pt").read_bytes()
    trainer = VMPOTrainer.from_checkpoint(out / "vmpo_last.pt", out_dir=str(out))

    def failing_update(self, batch, global_step, total_steps):
        raise RuntimeError("the update failed")

    monkeypatch.setattr(VMPOUpdate, "__call__", failing_update)
    with pytest.raises(RuntimeError, match="the update failed"):
        trainer.train(1024, str(out))
    trainer.close()
    assert (out / "vmpo_last.pt").read_bytes() == before


def test_stale_temporary_files_are_removed_at_the_next_save(tmp_path):
    trainer = make_trainer()
    for suffix in ("a1b2", "zz"):
        (tmp_path / f".vmpo_last.pt.{suffix}").write_bytes(b"half a checkpoint")
    (tmp_path / ".vmpo_best.pt.keep").write_bytes(b"another file's")
    trainer.save_checkpoint(tmp_path / "vmpo_last.pt")
    trainer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".vmpo_best.pt.keep", "vmpo_last.pt"]


def test_a_full_disk_leaves_no_partial_file_and_says_so(tmp_path, monkeypatch):
    import errno

    trainer = make_trainer()
    path = tmp_path / "vmpo_last.pt"
    trainer.save_checkpoint(path)
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class FullDisk:
        """A file on a disk that fills up during the write: half the data reaches it, then
        every write, flush and close fails (close after closing, as a buffered file's does
        when the data it still holds cannot be written)."""

        def __init__(self, *args, **kwargs):
            self._file = real_fdopen(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.close()

        def _full(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def write(self, data):
            self._file.write(bytes(data[: len(data) // 2]))
            self._file.flush()
            self._full()

        def flush(self):
            self._full()

        def close(self):
            self._file.close()
            self._full()

        def fileno(self):
            return self._file.fileno()

    monkeypatch.setattr(os, "fdopen", FullDisk)
    with pytest.raises(OSError, match=r"cannot write the checkpoint .*vmpo_last\.pt: the disk is "
                                      r"full \(No space left on device\)$") as error:
        trainer.save_checkpoint(path)
    trainer.close()
    assert error.value.errno == errno.ENOSPC
    # no partial .vmpo_last.pt.* left, and the previous checkpoint as it was
    assert [p.name for p in tmp_path.iterdir()] == ["vmpo_last.pt"]
    assert path.read_bytes() == before


def test_checkpoints_are_also_written_on_a_wall_clock_cadence(tmp_path, monkeypatch):
    saves = []
    original = VMPOTrainer.save_checkpoint

    def counting(self, path):
        saves.append((Path(path).name, self.global_step))
        original(self, path)

    monkeypatch.setattr(VMPOTrainer, "save_checkpoint", counting)
    trainer = make_trainer(eval_every=10_000, checkpoint_every_s=1e-9)
    trainer.train(192, str(tmp_path))
    trainer.close()
    last = [step for name, step in saves if name == "vmpo_last.pt"]
    assert last == [64, 128, 192]  # one per iteration here, the final one at its evaluation


# --- resume ----------------------------------------------------------------------------------

def test_resume_applies_learning_rates_and_sizes(saved_run, tmp_path):
    trainer = VMPOTrainer.from_checkpoint(
        saved_run / "vmpo_last.pt", policy_lr=0.1, value_lr=0.5, temperature_lr=0.02,
        num_envs=6, rollout_steps=8)
    # alpha_lr was not given: the checkpoint's rate (the trainer's default) stays
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.1, 0.5, 0.02, 1e-4]
    assert trainer.envs.num_envs == 6 and trainer.storage.num_steps == 8
    assert trainer.reward_scaler.discounted_return.shape == (6,)
    trainer.train(256, str(tmp_path))
    assert trainer.global_step == 128 + 3 * 48
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert events[0]["charts/policy_lr"] == 0.1  # constant schedule: what was asked for
    trainer.close()


@pytest.mark.parametrize("override,message", [
    (dict(policy_layer_sizes=(32,)), r"policy_layer_sizes: the checkpoint has \(16,\)"),
    (dict(env_id="Pendulum-v1"), "env_id: the checkpoint was trained on 'CartPole-v1'"),
    (dict(env_id="Foo-v0"), "env_id: unknown environment id 'Foo-v0'"),
    (dict(temperature_init=3.0), "temperature_init: .*an initial value"),
    (dict(normalize_observations=False), "normalize_observations: the checkpoint has True"),
    (dict(total_steps=128), "total_steps: 128 is not above the 128 steps already trained"),
    (dict(std_parameterization="softplus"), "std_parameterization: the checkpoint has 'bounded'"),
])
def test_resume_rejects_what_cannot_apply(saved_run, override, message):
    with pytest.raises(ValueError, match=message):
        VMPOTrainer.from_checkpoint(saved_run / "vmpo_last.pt", **override)


def test_a_checkpoint_of_another_algorithm_is_refused_by_name(saved_run):
    from minerva.trainers.ppo.trainer import PPOTrainer

    with pytest.raises(checkpoint.CheckpointError,
                       match="is a vmpo checkpoint; PPOTrainer trains ppo"):
        PPOTrainer.from_checkpoint(saved_run / "vmpo_last.pt")


def test_total_steps_at_or_below_the_saved_step_is_an_error(saved_run):
    trainer = VMPOTrainer.from_checkpoint(saved_run / "vmpo_last.pt")
    with pytest.raises(ValueError, match="total_steps: 100 is not above the 128 steps"):
        trainer.train(100, "unused")
    trainer.close()


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
    result = run_module(module, *flag, "evil.pt", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    one_line(result.stderr, message)
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
    result = run_module("minerva.train", *args, cwd=tempfile.gettempdir())
    assert result.returncode == 2
    one_line(result.stderr, r"--device: the checkpoint was trained on 'cuda'")
    result = run_module("minerva.train", *args, "--device", "cpu", cwd=tempfile.gettempdir())
    assert result.returncode == 0, result.stderr
    assert "device cpu" in result.stdout
    resumed = checkpoint.load(out / "vmpo_last.pt")
    assert resumed["global_step"] == 32 and resumed["config"]["device"] == "cpu"


def test_a_gpu_checkpoint_is_evaluated_on_the_cpu(cuda_checkpoint, capsys):
    assert evaluate.main([str(cuda_checkpoint), "--episodes", "1"]) == 0
    assert "CartPole-v1: 1 deterministic episodes of the policy at step 0" in (
        capsys.readouterr().out)


# --- damaged checkpoints ---------------------------------------------------------------------

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
    path = edited(saved, tmp_path / "nan.pt", set_value("duals", "log_eta", value=math.nan))
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"non-finite values: duals\.log_eta has NaN"):
        VMPOTrainer.from_checkpoint(path)
