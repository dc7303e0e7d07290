"""The training loop's callbacks on their own: evaluation cadence and the best policy,
checkpoint cadence and status, stopping on a signal or at the target return, the console."""

import math
import os
import signal
from pathlib import Path

import pytest
import torch

from minerva.distributed import Ranks
from minerva.errors import TrainingInterrupted
from minerva.trainers.callbacks import Checkpoints, Console, Evaluation, Stopping

ONE_PROCESS = Ranks(rank=0, world_size=1)


def checkpoints(saved: list, is_main: bool = True, every_s: float = 0.0) -> Checkpoints:
    def save(path):
        saved.append(path)
        path.write_bytes(b"")

    keeper = Checkpoints(save, is_main)
    keeper.start(lambda which: Path(f"vmpo_{which}.pt"), every_s, now=0.0)
    return keeper


def test_evaluation_runs_on_its_cadence_and_at_the_end():
    returns = iter([1.0, 3.0, 2.0, 5.0])
    evaluation = Evaluation(lambda: {"eval/return_mean": next(returns)}, every=100,
                            global_step=0, best_return=-math.inf, new_best=lambda r: None,
                            is_main=True)
    due = [step for step in (64, 128, 192, 256, 320, 384, 448)
           if evaluation.due(step, finished=False)]
    assert due == [128, 256, 320, 448]  # the first iteration at or past each multiple
    assert evaluation.due(450, finished=True)  # the end of the run always evaluates
    # a resumed run counts from its step
    assert Evaluation(dict, 100, 250, -math.inf, print, True).next_step == 300


def test_evaluation_keeps_the_best_and_other_ranks_do_not_evaluate():
    returns = iter([1.0, 3.0, 2.0, 5.0])
    bests = []
    evaluation = Evaluation(lambda: {"eval/return_mean": next(returns)}, 100, 0, 2.0,
                            bests.append, is_main=True)
    assert [evaluation()["eval/return_mean"] for _ in range(4)] == [1.0, 3.0, 2.0, 5.0]
    assert bests == [3.0, 5.0] and evaluation.best_return == 5.0
    other = Evaluation(lambda: pytest.fail("only rank 0 evaluates"), 100, 0, -math.inf,
                       bests.append, is_main=False)
    assert other() == {} and other.last == {}


def test_checkpoints_on_schedule_and_their_status(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = []
    keeper = checkpoints(saved, every_s=10.0)
    assert keeper.status() == "no checkpoint was written"
    keeper.on_schedule(step=64, now=5.0)
    assert saved == []
    keeper.on_schedule(step=128, now=10.0)
    assert saved == [Path("vmpo_last.pt")]
    assert keeper.status() == "the last checkpoint (step 128) is vmpo_last.pt"
    keeper.ensure_saved(step=128, now=11.0)  # already on disk
    assert len(saved) == 1
    keeper.ensure_saved(step=192, now=12.0)
    keeper.save_best()
    assert saved == [Path("vmpo_last.pt")] * 2 + [Path("vmpo_best.pt")]
    keeper.on_schedule(step=256, now=21.0)  # ten seconds after the last save
    assert len(saved) == 3
    Path("vmpo_last.pt").unlink()  # the folder went away, say
    assert keeper.status() == "the last checkpoint (step 192) was vmpo_last.pt, now gone"
    Path("elsewhere").mkdir()
    Path("elsewhere/vmpo_best.pt").write_bytes(b"")
    keeper.loaded(Path("elsewhere/vmpo_best.pt"), 64)
    assert keeper.status() == "the last checkpoint (step 64) is elsewhere/vmpo_best.pt"


def test_checkpoints_without_a_cadence_or_off_rank_0_write_nothing():
    saved = []
    never = checkpoints(saved, every_s=0.0)
    never.on_schedule(step=64, now=1e9)
    other = checkpoints(saved, is_main=False, every_s=1.0)
    other.on_schedule(step=64, now=1e9)
    other.save_last(step=128, now=1e9)
    other.save_best()
    assert saved == []
    assert other.last_step == 128  # every rank knows the step saved, for its messages


def test_stopping_on_a_signal_after_the_iteration_under_way(capfd):
    stopping = Stopping(ONE_PROCESS, torch.device("cpu"), target_return=None)
    with stopping:
        assert not stopping.by_signal(finished=False)
        os.kill(os.getpid(), signal.SIGTERM)  # handled: the test goes on
        assert stopping.requested == signal.SIGTERM
        assert not stopping.by_signal(finished=True)  # the budget is spent: it just ends
        assert stopping.by_signal(finished=False)
    assert "SIGTERM: stopping after this iteration, with a checkpoint" in capfd.readouterr().err
    saved = []
    error = stopping.interrupted(640, checkpoints(saved))
    assert isinstance(error, TrainingInterrupted) and error.exit_code == 143
    assert str(error) == "stopped at step 640 after a complete iteration; no checkpoint was written"
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler)


def test_stopping_at_the_target_return():
    stopping = Stopping(ONE_PROCESS, torch.device("cpu"), target_return=475.0)
    assert not stopping.at_target({"eval/return_mean": 474.9})
    assert stopping.at_target({"eval/return_mean": 475.0})
    assert not stopping.at_target({})  # no evaluation here (another rank's)
    assert not Stopping(ONE_PROCESS, torch.device("cpu"), None).at_target(
        {"eval/return_mean": 1e9})


class FakeLogger:
    def __init__(self):
        self.elapsed, self.lines = 0.0, []

    def print(self, line):
        self.lines.append(line)


def test_console_prints_after_evaluations_and_otherwise_every_interval():
    logger = FakeLogger()
    console = Console(logger, lambda metrics: f"return {metrics['return']}", interval_s=10.0)
    console.now_and_then({"return": 1})
    logger.elapsed = 5.0
    console.now_and_then({"return": 2})
    console.print({"return": 3})  # an evaluation's line, whenever it comes
    logger.elapsed = 16.0
    console.now_and_then({"return": 4})
    assert logger.lines == ["return 1", "return 3", "return 4"]


def test_a_stop_where_an_evaluation_was_due_evaluates_first_on_resume(tmp_path, monkeypatch):
    """SIGTERM in the iteration ending at an evaluation step: the checkpoint says the
    evaluation is due, and the resumed run makes it before training on, so that step is
    evaluated and considered for the best policy."""
    import json

    from minerva.trainers.vmpo.trainer import VMPOTrainer
    from minerva.trainers.vmpo.update import VMPOUpdate

    pytest.importorskip("envpool")
    trainer = VMPOTrainer("CartPole-v1", 0, "cpu", (16,), (16,), 16, num_envs=4, m_steps=1,
                          eval_episodes=2, eval_every=128, progress=False, backend="envpool")
    original = VMPOUpdate.__call__
    calls = []

    def stopped_in_the_second_iteration(self, batch, global_step, total_steps):
        calls.append(global_step)
        if global_step == 128:  # the iteration that ends where an evaluation is due
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, global_step, total_steps)

    monkeypatch.setattr(VMPOUpdate, "__call__", stopped_in_the_second_iteration)
    with pytest.raises(TrainingInterrupted):
        trainer.train(512, str(tmp_path))
    trainer.close()
    monkeypatch.setattr(VMPOUpdate, "__call__", original)
    state = torch.load(tmp_path / "vmpo_last.pt", weights_only=True)
    assert state["global_step"] == 128 and state["next_evaluation_step"] == 128
    resumed = VMPOTrainer.from_checkpoint(tmp_path / "vmpo_last.pt")
    resumed.train(256, str(tmp_path))
    resumed.close()
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evaluated = [e["global_step"] for e in events if "eval/return_mean" in e]
    assert evaluated == [128, 256]
