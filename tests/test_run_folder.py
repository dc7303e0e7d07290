"""minerva/run_folder.py: a run's folder is written and cleaned only through its own files: a
symbolic link where a run's file or folder belongs is refused in one line, and nothing
outside the folder is written, replaced or deleted through one. A fresh run refuses a folder
that holds a run unless told to overwrite it, a resumed run refuses one that holds another
run and drops the events logged after its checkpoint, two runs cannot write one folder, and
the lock file is never followed."""

import json
import os
import shutil

import pytest
from helpers import make_trainer

from minerva import checkpoint
from minerva.errors import OutDirError
from minerva.files import write_file
from minerva.run_folder import open_to_append, prepare_out_dir, refuse_links
from minerva.trainers.vmpo.trainer import VMPOTrainer

pytest.importorskip("envpool")

SMALL = dict(rollout_steps=16, num_envs=4, m_steps=2, eval_episodes=2, progress=False,
             backend="envpool", eval_every=64)
TRAIN = ["--env-id", "CartPole-v1", "--num-envs", "4", "--rollout-steps", "16",
         "--m-steps", "2", "--eval-episodes", "2", "--eval-every", "64", "--backend", "envpool",
         "--policy-layer-sizes", "16", "--value-layer-sizes", "16", "--no-progress"]


@pytest.fixture
def run(saved_run, tmp_path):
    """A copy of the saved run, and a victim file outside it."""
    copy = tmp_path / "run"
    shutil.copytree(saved_run, copy)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    return copy, victim


def refused(result, path):
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("python -m minerva.train: error: --out-dir: ")
    assert f"{path} is a symbolic link where the run's own" in line


@pytest.mark.parametrize("name", ["run.json", "metrics.jsonl", "vmpo_best.pt"])
def test_resume_refuses_a_link_where_a_run_file_belongs(run, cli, name):
    folder, victim = run
    (folder / name).unlink()
    (folder / name).symlink_to(victim)
    result = cli("--resume", folder / "vmpo_last.pt", "--total-steps", "192")
    refused(result, folder / name)
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("name", ["run.json", "metrics.jsonl"])
def test_a_dangling_link_is_refused_and_its_target_not_created(tmp_path, cli, name):
    folder = tmp_path / "run"
    folder.mkdir()
    target = tmp_path / "elsewhere" / "created"
    (tmp_path / "elsewhere").mkdir()
    (folder / name).symlink_to(target)
    refused(cli(*TRAIN, "--total-steps", "64", "--out-dir", folder), folder / name)
    assert not target.exists()


def test_overwrite_deletes_nothing_through_a_linked_videos_folder(run, cli, tmp_path):
    folder, _ = run
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "best.mp4").write_text("someone else's video")
    (folder / "videos").symlink_to(outside)
    result = cli(*TRAIN, "--total-steps", "64", "--out-dir", folder, "--overwrite")
    refused(result, folder / "videos")
    assert (outside / "best.mp4").read_text() == "someone else's video"
    assert (folder / "vmpo_last.pt").exists()  # and the run's own files are still there


def test_a_planted_rewrite_file_is_not_written_through(run, tmp_path):
    """Resuming rewrites metrics.jsonl without the events after the checkpoint: through a
    temporary file of its own, not a name someone could have linked beforehand."""
    folder, victim = run
    (folder / ".metrics.jsonl.rewrite").symlink_to(victim)
    trainer = VMPOTrainer.from_checkpoint(folder / "vmpo_last.pt")
    trainer.train(192, str(folder))
    trainer.close()
    assert victim.read_text() == "precious\n"
    assert not (folder / "metrics.jsonl").is_symlink()
    assert '"global_step": 192' in (folder / "metrics.jsonl").read_text()


def test_write_file_replaces_a_link_and_open_to_append_refuses_one(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "run.json").symlink_to(victim)
    write_file(tmp_path / "run.json", "{}\n")
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "run.json").is_symlink()
    assert (tmp_path / "run.json").read_text() == "{}\n"
    (tmp_path / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(OutDirError, match="metrics.jsonl is a symbolic link"):
        open_to_append(tmp_path / "metrics.jsonl")
    assert victim.read_text() == "precious\n"
    with open_to_append(tmp_path / "new.jsonl") as f:
        f.write("a\n")
    with open_to_append(tmp_path / "new.jsonl") as f:
        f.write("b\n")
    assert (tmp_path / "new.jsonl").read_text() == "a\nb\n"


def test_links_are_refused_before_anything_is_deleted(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "events.out.tfevents.1.host").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutDirError, match="events.out.tfevents.1.host is a symbolic link"):
        prepare_out_dir(tmp_path, overwrite=True)
    assert (tmp_path / "metrics.jsonl").exists()
    refuse_links(tmp_path / "empty-folder-that-does-not-exist")  # nothing there: nothing to refuse


def test_a_folder_named_like_a_checkpoints_temporary_file_does_not_stop_saving(tmp_path):
    (tmp_path / ".vmpo_last.pt.x").mkdir()
    checkpoint.save({"format": checkpoint.FORMAT}, tmp_path / "vmpo_last.pt")
    assert (tmp_path / "vmpo_last.pt").is_file() and (tmp_path / ".vmpo_last.pt.x").is_dir()


def test_overwrite_keeps_the_checkpoint_it_resumes_from_and_the_old_run_until_a_new_one(
        run, cli):
    """--resume d/vmpo_best.pt --overwrite: the old run's files wait aside until the new
    run's first checkpoint exists; the checkpoint resumed from is never touched."""
    folder, _ = run
    state = checkpoint.load(folder / "vmpo_best.pt")
    state.update(global_step=64, iteration=1)  # a best older than the last checkpoint
    checkpoint.save(state, folder / "vmpo_best.pt")
    best = (folder / "vmpo_best.pt").read_bytes()
    old_last = (folder / "vmpo_last.pt").read_bytes()
    trainer = VMPOTrainer.from_checkpoint(folder / "vmpo_best.pt")
    original_save = trainer.checkpoints._save

    def killed_at_first_save(path):
        aside = [p for p in folder.iterdir() if p.name.startswith(".overwritten-")]
        assert len(aside) == 1 and (aside[0] / "vmpo_last.pt").read_bytes() == old_last
        assert (folder / "vmpo_best.pt").read_bytes() == best  # the input stays
        raise KeyboardInterrupt  # a kill before anything new is on disk

    trainer.checkpoints._save = killed_at_first_save
    with pytest.raises(KeyboardInterrupt):
        trainer.train(trainer.global_step + 64, str(folder), overwrite=True)
    assert (folder / "vmpo_best.pt").read_bytes() == best
    trainer.checkpoints._save = original_save
    trainer.train(trainer.global_step + 128, str(folder / "again"))
    trainer.close()
    # a completed overwrite leaves no old files behind, the killed one's included
    result = cli("--resume", folder / "vmpo_best.pt", "--total-steps", "256", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert not [p for p in folder.iterdir() if p.name.startswith(".overwritten-")]
    assert checkpoint.load(folder / "vmpo_last.pt")["global_step"] == 256


def test_a_best_written_just_before_a_kill_stays_the_one_to_beat(run):
    """Killed between <algo>_best.pt and <algo>_last.pt: the resumed run takes the best's
    return from the best checkpoint, so a worse policy does not replace it."""
    folder, _ = run
    state = checkpoint.load(folder / "vmpo_best.pt")
    state["best_return"] = 1e6  # what the killed run's new best was worth
    checkpoint.save(state, folder / "vmpo_best.pt")
    before = (folder / "vmpo_best.pt").read_bytes()
    trainer = VMPOTrainer.from_checkpoint(folder / "vmpo_last.pt")
    assert trainer.best_return < 1e6
    trainer.train(256, str(folder))
    assert trainer.best_return == 1e6
    trainer.close()
    assert (folder / "vmpo_best.pt").read_bytes() == before


def test_a_run_that_died_before_its_first_checkpoint_gets_a_hint_that_works(tmp_path, cli):
    (tmp_path / "metrics.jsonl").write_text('{"global_step": 64}\n')
    result = cli(*TRAIN, "--total-steps", "64", "--out-dir", tmp_path)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "it has no checkpoint to resume from" in line and "--resume" not in line
    assert "--overwrite" in line


def test_a_run_whose_folder_disappears_stops_in_one_line(tmp_path, monkeypatch):
    from minerva.trainers.vmpo.update import VMPOUpdate

    out = tmp_path / "run"
    trainer = VMPOTrainer("CartPole-v1", 0, "cpu", (16,), (16,), **SMALL)
    original = VMPOUpdate.__call__

    def folder_deleted_in_the_second_update(self, batch, global_step, total_steps):
        if global_step == 128:
            shutil.rmtree(out)
        return original(self, batch, global_step, total_steps)

    monkeypatch.setattr(VMPOUpdate, "__call__", folder_deleted_in_the_second_update)
    with pytest.raises(FileNotFoundError, match=f"the run's folder {out} disappeared"):
        trainer.train(512, str(out))
    assert not out.exists()  # nothing wrote a new folder in its place
    assert trainer.checkpoint_status() == (f"the last checkpoint (step 64) was "
                                           f"{out / 'vmpo_last.pt'}, now gone")
    trainer.close()


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
