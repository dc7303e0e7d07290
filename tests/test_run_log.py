"""The run's log: the console is best effort, its metrics and checkpoints are not."""

import io
import os
import subprocess
import sys

import pytest

from minerva.run_log import RunLogger

pytest.importorskip("envpool")


class BrokenPipe(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_console_that_cannot_take_a_line_does_not_stop_the_log(tmp_path, monkeypatch):
    logger = RunLogger(tmp_path, total_steps=10, progress=False, tensorboard=False)
    monkeypatch.setattr(sys, "stdout", BrokenPipe())
    logger.print("step 1")  # the pipe is gone: nothing raised
    logger.log(1, {"charts/episode_return": 1.0})
    logger.print("step 2")  # and nothing tried again
    logger.close()
    assert '"global_step": 1' in (tmp_path / "metrics.jsonl").read_text()


def test_characters_the_console_cannot_encode_are_escaped(tmp_path, monkeypatch):
    logger = RunLogger(tmp_path, total_steps=10, progress=False, tensorboard=False)
    ascii_console = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", ascii_console)
    logger.print("-> runs/rün")
    ascii_console.flush()
    assert ascii_console.buffer.getvalue() == b"-> runs/r\\xfcn\n"
    logger.close()


@pytest.mark.slow
def test_training_piped_into_head_finishes_with_its_checkpoints(tmp_path):
    """``python -m minerva.train ... | head -1``: the pipe closes after the first line; the
    run trains on to its end and exits 0."""
    out = tmp_path / "run"
    command = (f"{sys.executable} -m minerva.train --env-id CartPole-v1 --total-steps 4096 "
               f"--eval-every 1024 --no-progress --out-dir {out} | head -1; "
               "exit ${PIPESTATUS[0]}")
    completed = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                               timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("minerva: V-MPO on CartPole-v1")
    assert (out / "vmpo_last.pt").exists()
    assert '"global_step": 4096' in (out / "metrics.jsonl").read_text()


def test_a_damaged_event_is_dropped_on_resume_like_a_cut_one(tmp_path):
    lines = ['{"global_step": 64, "x": 1.0}\n', '{"global_step": "abc"}\n',
             '{"global_step": 128, "x": 2.0}\n', '{"global_st']
    (tmp_path / "metrics.jsonl").write_text("".join(lines))
    logger = RunLogger(tmp_path, total_steps=256, initial_step=64, progress=False,
                       tensorboard=False)
    logger.close()
    assert (tmp_path / "metrics.jsonl").read_text() == lines[0]
