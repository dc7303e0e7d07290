"""minerva/stopping.py and the trainer's Stopping callback: SIGINT, SIGTERM and SIGHUP (a
closed terminal's too) stop a run after its iteration, with a consistent checkpoint and the
signal's exit status; a second signal exits at once without a traceback; an ignored SIGHUP
(nohup) stays ignored; and a signal while a run closes or exits prints nothing."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import make_trainer

from minerva import checkpoint
from minerva.errors import TrainingInterrupted
from minerva.trainers.vmpo.update import VMPOUpdate

pytest.importorskip("envpool")


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
