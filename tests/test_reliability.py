"""What a failure costs: safe checkpoints, nothing lost on errors and signals, resume that
does what it says, non-finite data named, no hangs, and bounded configurations."""

import functools
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from minerva import checkpoint
from minerva.config import TrainConfig
from minerva.errors import NonFiniteError, TrainingInterrupted
from minerva.train import main
from minerva.trainers.vmpo.trainer import VMPOTrainer, _evaluate_vectorized
from minerva.trainers.vmpo.update import VMPOUpdate

pytest.importorskip("envpool")

SMALL = dict(rollout_steps=16, num_envs=4, m_steps=2, eval_episodes=2, progress=False)


def make_trainer(env_id="CartPole-v1", backend="envpool", **overrides):
    options = {**SMALL, "backend": backend, **overrides}
    return VMPOTrainer(env_id, 0, "cpu", (16,), (16,), options.pop("rollout_steps"), **options)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A short CartPole run's output folder (vmpo_last.pt at step 128)."""
    out = tmp_path_factory.mktemp("run")
    trainer = make_trainer(eval_every=64)
    trainer.train(128, str(out))
    trainer.close()
    return out


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


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_stops_after_the_iteration_with_a_consistent_checkpoint(tmp_path, monkeypatch,
                                                                         signum, code):
    trainer = make_trainer(eval_every=10_000)
    original = VMPOUpdate.__call__

    updates = []

    def signalling_update(self, batch, global_step, total_steps):
        updates.append(batch)
        if len(updates) == 3:  # mid-iteration: after the rollout, before the update
            os.kill(os.getpid(), signum)
        return original(self, batch, global_step, total_steps)

    monkeypatch.setattr(VMPOUpdate, "__call__", signalling_update)
    # the signal's default action, as in a terminal: the tests may run under nohup, which
    # ignores SIGHUP (and an ignored SIGHUP stays ignored: the next test)
    before = signal.signal(signum, signal.SIG_DFL)
    try:
        with pytest.raises(TrainingInterrupted) as stopped:
            trainer.train(100_000, str(tmp_path))
        assert signal.getsignal(signum) == signal.SIG_DFL  # handlers restored
    finally:
        signal.signal(signum, before)
    trainer.close()
    assert stopped.value.exit_code == code
    assert stopped.value.signal_name == signal.Signals(signum).name
    state = checkpoint.load(tmp_path / "vmpo_last.pt")
    # the interrupted iteration was completed: trained on, counted and saved
    assert state["global_step"] == 3 * 64 and state["iteration"] == 3
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["global_step"] == state["global_step"]


def test_an_ignored_sighup_stays_ignored():
    """nohup ignores SIGHUP so that a run outlives its terminal: minerva keeps it so."""
    from minerva.stopping import StopOnSignal, exit_at_once_on_signals, restore_handlers

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with StopOnSignal(lambda name: "") as stop:
            os.kill(os.getpid(), signal.SIGHUP)
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert stop.requested is None
        replaced = exit_at_once_on_signals()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        restore_handlers(replaced)
    finally:
        signal.signal(signal.SIGHUP, before)


def _start_cli(out: Path, *args, events: int = 3, **popen) -> subprocess.Popen:
    """The CLI training Pendulum into ``out``, once ``events`` lines are logged (0: once
    training has started); ``popen``: Popen's options (default: text pipes)."""
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    process = subprocess.Popen(
        [sys.executable, "-m", "minerva.train", "--env-id", "Pendulum-v1", "--num-envs", "4",
         "--rollout-steps", "16", "--total-steps", "10000000", "--eval-every", "1000000",
         "--no-progress", "--out-dir", str(out), *args],
        cwd=tempfile.gettempdir(), **popen)
    deadline = time.monotonic() + 300  # a busy machine starts slowly
    metrics = out / "metrics.jsonl"
    while not ((out / "run.json").exists() and metrics.exists()
               and metrics.read_text().count("\n") >= events):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.1)
    return process


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_cli_exits_on_a_signal_with_a_checkpoint(tmp_path, signum, code):
    out = tmp_path / "run"
    process = _start_cli(out)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    state = checkpoint.load(out / "vmpo_last.pt")
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert state["global_step"] == events[-1]["global_step"] > 0
    assert f"the last checkpoint (step {state['global_step']})" in stderr


@pytest.mark.slow
def test_a_closed_terminal_stops_the_run_with_a_checkpoint(tmp_path):
    """SIGHUP as a terminal's closing sends it: every write to the terminal fails from then
    on (EIO), and the run still finishes its iteration, writes its checkpoint and exits
    with 128 + 1."""
    import pty

    out = tmp_path / "run"
    terminal, run_side = pty.openpty()
    try:
        # SIGHUP's default action, as in a terminal (the tests may run under nohup)
        process = _start_cli(out, stdout=run_side, stderr=run_side, text=False,
                             preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    finally:
        os.close(run_side)
    os.close(terminal)  # the terminal is gone: the run's writes to it fail from here on
    process.send_signal(signal.SIGHUP)
    assert process.wait(timeout=120) == 129
    state = checkpoint.load(out / "vmpo_last.pt")
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert state["global_step"] == events[-1]["global_step"] > 0


@pytest.mark.slow
def test_a_second_signal_exits_at_once_without_a_traceback(tmp_path):
    out = tmp_path / "run"
    # rollouts of 4,096 steps and 800 passes over each (several seconds per iteration): once
    # the first update is logged, both signals come during the second iteration (with 200
    # passes the first signal could land so late in it that the run had stopped and Python
    # was shutting down, with SIGINT's default action back, when the second came)
    process = _start_cli(out, "--m-steps", "800", "--num-envs", "64", "--rollout-steps", "64",
                         "--checkpoint-every-s", "0", events=1)
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    if "after a complete iteration" in stderr:
        # on a loaded machine the iteration can end between the two signals: the run then
        # stopped with its checkpoint, and the second signal came while it was closing
        assert (out / "vmpo_last.pt").exists()
        return
    assert "interrupted again: stopped at once" in stderr
    # no checkpoint existed, and the message does not pretend one does
    assert "no checkpoint was written" in stderr and not (out / "vmpo_last.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("script,code", [
    # a stopped run closing: a signal ends it at once, with the signal's status
    ("exit_at_once_on_signals()\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(30)", 130),
    ("exit_at_once_on_signals()\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(30)", 143),
    # a finished process exiting: a signal in an exit handler changes nothing
    ("ignore_signals()\natexit.register(os.kill, os.getpid(), signal.SIGINT)\nsys.exit(7)", 7),
])
def test_a_signal_while_a_run_closes_or_exits_prints_no_traceback(script, code):
    result = subprocess.run(
        [sys.executable, "-c", "import atexit, os, signal, sys, time\n"
                               "from minerva.stopping import exit_at_once_on_signals, "
                               "ignore_signals\n" + script],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == code and result.stderr == "", result.stderr


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
    (dict(dual_parameterization="softplus"), "dual_parameterization: the checkpoint has 'log'"),
    (dict(input_layer_norm=True), "input_layer_norm: the checkpoint has False"),
    (dict(per_dimension_kl=True), "per_dimension_kl: the checkpoint has False"),
])
def test_resume_rejects_what_cannot_apply(saved_run, override, message):
    with pytest.raises(ValueError, match=message):
        VMPOTrainer.from_checkpoint(saved_run / "vmpo_last.pt", **override)


def test_a_checkpoint_of_another_algorithm_is_refused_by_name(saved_run):
    from minerva.trainers.ppo.trainer import PPOTrainer

    with pytest.raises(checkpoint.CheckpointError, match="is a vmpo checkpoint; PPOTrainer trains ppo"):
        PPOTrainer.from_checkpoint(saved_run / "vmpo_last.pt")


def test_a_fresh_run_refuses_an_out_dir_holding_a_run(saved_run, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text((saved_run / "metrics.jsonl").read_text())
    trainer = make_trainer(eval_every=64)
    with pytest.raises(ValueError, match="out_dir: .* already holds a run .*--overwrite"):
        trainer.train(64, str(out))
    trainer.train(64, str(out), overwrite=True)
    trainer.close()
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["global_step"] for e in events] == [64, 64]  # the old run's events are gone


def test_a_resumed_run_drops_events_logged_after_its_checkpoint(saved_run, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    events = (saved_run / "metrics.jsonl").read_text()
    # what an interrupted run logged after its last checkpoint, and a line a kill cut short
    late = json.dumps({"global_step": 192, "losses/value": 1.0})
    (out / "metrics.jsonl").write_text(events + late + "\n" + '{"global_st')
    (out / "vmpo_last.pt").write_bytes((saved_run / "vmpo_last.pt").read_bytes())
    trainer = VMPOTrainer.from_checkpoint(out / "vmpo_last.pt")
    trainer.train(192, str(out))
    trainer.close()
    steps = [json.loads(line)["global_step"]
             for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(192) == 2 and steps == sorted(steps)  # one update and one eval event


def test_a_resumed_run_refuses_a_folder_holding_another_run(saved_run, tmp_path):
    out = tmp_path / "run"
    trainer = make_trainer(eval_every=64)
    trainer.train(192, str(out))  # another run, at step 192
    trainer.close()
    trainer = VMPOTrainer.from_checkpoint(saved_run / "vmpo_last.pt")  # step 128
    with pytest.raises(ValueError, match=r"out_dir: .* holds another run .*not at this "
                                         r"checkpoint's step 128"):
        trainer.train(256, str(out))
    trainer.train(256, str(out), overwrite=True)  # told to: that run's files go
    trainer.close()
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events[0]["global_step"] == 192 and events[-1]["global_step"] == 256


def test_two_runs_cannot_write_one_folder(tmp_path):
    from minerva.run_folder import locked_out_dir

    trainer = make_trainer()
    with locked_out_dir(tmp_path):  # as another process holding it would
        with pytest.raises(ValueError, match=r"out_dir: .* is in use by another minerva run "
                                             rf"\(pid {os.getpid()}\)"):
            trainer.train(64, str(tmp_path))
    trainer.close()


def test_the_lock_file_is_never_followed(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("not the run's\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".minerva.lock").symlink_to(target)
    trainer = make_trainer()
    with pytest.raises(ValueError, match=r"out_dir: .*\.minerva\.lock, the run's lock file, is a "
                                         r"symbolic link; remove it"):
        trainer.train(64, str(out))
    trainer.close()
    assert target.read_text() == "not the run's\n"
    assert sorted(p.name for p in out.iterdir()) == [".minerva.lock"]


def test_total_steps_at_or_below_the_saved_step_is_an_error(saved_run):
    trainer = VMPOTrainer.from_checkpoint(saved_run / "vmpo_last.pt")
    with pytest.raises(ValueError, match="total_steps: 100 is not above the 128 steps"):
        trainer.train(100, "unused")
    trainer.close()


# --- non-finite data -------------------------------------------------------------------------

class _FaultyEnv(gym.Env):
    """A 3-feature env that gives ``bad`` as the observation's feature 1 or as the reward
    from step ``at`` of its episode on, with ``reward`` per step otherwise; episodes last
    ``length`` steps (None: never end)."""

    def __init__(self, where="observation", bad=float("nan"), at=5, reward=1.0, length=20,
                 dtype="float32"):
        self.dtype = np.dtype(dtype)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), self.dtype)
        self.action_space = gym.spaces.Discrete(2)
        self.where, self.bad, self.at, self.reward, self.length = where, bad, at, reward, length

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, self.dtype), {}

    def step(self, action):
        self.t += 1
        observation = np.full(3, 0.1 * self.t, self.dtype)
        reward = self.reward
        if self.at is not None and self.t >= self.at:
            if self.where == "observation":
                observation[1] = self.bad
            else:
                reward = self.bad
        truncated = self.length is not None and self.t >= self.length
        return observation, reward, False, truncated, {}


def _register(name: str, **kwargs) -> str:
    env_id = f"minerva-test/{name}-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=_FaultyEnv, kwargs=kwargs)
    return env_id


@pytest.mark.parametrize("kwargs,message", [
    (dict(where="observation"),
     r"env \d gave a non-finite observation \(nan in feature 1\) at step 4 of the rollout "
     r"\(the rollout began at global step 0"),
    (dict(where="reward", bad=float("inf")), r"env \d gave a non-finite reward \(inf\) at step"),
    (dict(where="reward", bad=float("nan")), r"non-finite reward \(nan\)"),
    # the rollout's last observation is not acted on, but it bootstraps the values
    (dict(where="observation", at=16), r"non-finite observation \(nan in feature 1\) at step "
                                       r"15 of the rollout"),
    # finite in float64, infinite once stored as float32
    (dict(where="observation", bad=1e300, dtype="float64"),
     r"non-finite observation \(1e\+300 in feature 1\) \(beyond float32's range\)"),
])
def test_non_finite_env_data_is_named_before_it_is_used(tmp_path, kwargs, message):
    name = "".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
    env_id = _register("Faulty" + "".join(c if c.isalnum() else "_" for c in name), **kwargs)
    trainer = make_trainer(env_id, "gymnasium", eval_every=10_000)
    with pytest.raises(NonFiniteError, match=message):
        trainer.train(1024, str(tmp_path))
    # nothing was saved, and the reward scaler's statistics were never fed the bad values
    assert not (tmp_path / "vmpo_last.pt").exists()
    assert torch.isfinite(trainer.reward_scaler.return_stats.var).all()
    trainer.close()


def test_an_update_with_non_finite_losses_names_them(tmp_path):
    env_id = _register("HugeRewards", where="reward", at=None, reward=1e30)
    trainer = make_trainer(env_id, "gymnasium", normalize_rewards=False, eval_every=10_000)
    with pytest.raises(NonFiniteError, match=r"losses/value = inf.*returns span \[1e\+30"):
        trainer.train(1024, str(tmp_path))
    assert not (tmp_path / "vmpo_last.pt").exists()
    assert trainer.agent.obs_normalizer.count.item() == 0  # not fed the failed rollout
    trainer.close()


# --- no hangs --------------------------------------------------------------------------------

def test_evaluation_cuts_episodes_that_never_end():
    env_id = _register("Endless", at=None, length=None)
    trainer = make_trainer(env_id, "gymnasium", eval_max_steps=50)
    result = _evaluate_vectorized(trainer.agent, trainer.eval_envs, max_steps=30)
    assert result["eval/length_mean"] == 30 and result["eval/cut_episodes"] == 2
    result = trainer.evaluate()  # the trainer's own cap
    assert result["eval/length_mean"] == 50 and result["eval/cut_episodes"] == 2
    trainer.close()


@pytest.mark.parametrize("options,message", [
    (dict(m_steps=1_000_000_000), "m_steps: must be at most 1_000"),
    (dict(torch_threads=5000), "torch_threads: must be between 0 .* [0-9]+ CPUs, got 5000"),
    (dict(temperature_init=1e-40), r"temperature_init: must be in \[1e-08, 10000\]"),
    (dict(alpha_init=1e300), r"alpha_init: must be in \[1e-08, 10000\], the multipliers"),
    (dict(seed=-5), r"seed: must be an integer in \[0, 2_000_000_000\]"),
    (dict(seed=2**32), "seed: must be an integer in"),
    (dict(num_envs=10**9), "num_envs: must be at most 65_536"),
    (dict(min_log_std=-math.inf), "min_log_std: must be a finite number"),
    (dict(checkpoint_every_s=-1.0), "checkpoint_every_s: must be a number >= 0"),
    (dict(eval_max_steps=0), "eval_max_steps: must be a positive integer"),
])
def test_configuration_bounds_keep_runs_finite(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options).validate()


@pytest.mark.parametrize("rollout_steps", [10**9, 2**62])
def test_a_rollout_that_cannot_fit_in_memory_is_refused_before_any_env(rollout_steps,
                                                                       monkeypatch):
    import minerva.trainers.on_policy as trainer_module

    def no_envs(*args, **kwargs):
        raise AssertionError("an env was made")

    monkeypatch.setattr(trainer_module, "make_vector_env", no_envs)
    with pytest.raises(ValueError, match=r"rollout_steps: a rollout of .* needs .* GiB of "
                                         r"storage, more than this machine's"):
        make_trainer(rollout_steps=rollout_steps)


@pytest.mark.parametrize("sizes,message", [
    ((10**9,), r"policy_layer_sizes: the networks need [\d,.]+ GiB \(7,000,000,\d+ parameters "
               r"with their gradients .*\), more than this machine's .* GiB of memory, got "
               r"\(1000000000,\)"),
    ((64, 2**62), r"policy_layer_sizes: layers too large for any memory \(.*overflow"),
])
def test_networks_that_cannot_fit_in_memory_are_refused_before_any_env(sizes, message,
                                                                      monkeypatch):
    import minerva.trainers.on_policy as trainer_module
    import minerva.trainers.preflight as checks

    def no_envs(*args, **kwargs):
        raise AssertionError("an env was made")

    monkeypatch.setattr(trainer_module, "make_vector_env", no_envs)
    # a machine of 64 GiB, whatever this one has
    monkeypatch.setattr(checks, "_memory", lambda device: (64 * 2**30, "this machine's"))
    with pytest.raises(ValueError, match=message):
        VMPOTrainer("CartPole-v1", 0, "cpu", sizes, (16,), 16, backend="envpool")


@pytest.mark.slow
def test_networks_that_fail_to_allocate_are_a_bad_option(tmp_path):
    """Networks within the bound (here made to pass) that the allocator refuses: exit 2."""
    script = ("import re, resource, sys\n"
              "import minerva.trainers.preflight as checks\n"
              "from minerva.train import main\n"
              "checks._memory = lambda device: (2**50, 'this machine\\'s')\n"
              "status = open('/proc/self/status').read()\n"
              "size = int(re.search(r'VmSize:\\s+(\\d+)', status).group(1)) * 1024\n"
              "# 2 GiB more address space than now: the 6.4 GB layer cannot be allocated\n"
              "resource.setrlimit(resource.RLIMIT_AS, (size + 2**31, resource.RLIM_INFINITY))\n"
              "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", script, "--policy-layer-sizes", "40000", "40000", "--backend",
         "gymnasium", "--total-steps", "64", "--out-dir", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir())
    _one_line_error(result, r"--policy-layer-sizes: the networks do not fit in the memory left "
                            r"on cpu \(allocating them failed\), got \(40000, 40000\)$")
    assert not out.exists()


# --- the CLI's errors: one line, exit 2, no traceback ----------------------------------------

def _one_line_error(result, message):
    import re

    assert result.returncode == 2, (result.returncode, result.stderr)
    # one line: no usage text before it, no traceback (a library's warnings may come first)
    assert "usage:" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.search(message, last), result.stderr


@pytest.fixture
def cli(in_process):
    """``python -m minerva.train ARGS`` run in this process (errors need no process of their
    own; the signal tests above run it as one)."""
    return functools.partial(in_process, main)


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
    _one_line_error(cli(*make_args(a_file, saved_run)), message)


def test_an_unwritable_out_dir_gets_one_line(tmp_path, cli):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    _one_line_error(cli("--out-dir", str(locked / "run")), "--out-dir: cannot create")


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
    _one_line_error(cli("--rollout-steps", str(2**62), "--out-dir", str(out)),
                    "--rollout-steps: a rollout of")
    assert list(tmp_path.iterdir()) == []


def test_a_refused_resume_leaves_no_folder(tmp_path, saved_run, cli):
    out = tmp_path / "new" / "run"
    _one_line_error(cli("--resume", str(saved_run / "vmpo_last.pt"), "--activation", "relu",
                         "--total-steps", "4096", "--out-dir", str(out)),
                    "--activation: the checkpoint has 'tanh'")
    assert list(tmp_path.iterdir()) == []
