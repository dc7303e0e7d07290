"""minerva.plot and benchmarks/learning.py's summary, on run folders written by the tests."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minerva import plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEARNING_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "learning.py"

# env -> seed -> evaluation (step, elapsed seconds, return mean) triples
EVALS = {
    "CartPole-v1": {
        1: [(1000, 1.0, 20.0), (2000, 2.0, 100.0), (3000, 3.0, 300.0)],
        2: [(1000, 1.5, 40.0), (2000, 3.0, 200.0), (3000, 4.5, 500.0)],
        3: [(1000, 2.0, 30.0), (3000, 6.0, 400.0)],  # no evaluation at step 2000
    },
    "Pendulum-v1": {
        1: [(500, 1.0, -1200.0), (1000, 2.0, -800.0)],
        2: [(500, 1.0, -1000.0), (1000, 2.0, -400.0)],
    },
}


def write_run(folder: Path, evals, env_id=None, seed=None, steps_per_second=1000.0,
              run_info=True) -> Path:
    """A run folder: an update event before each evaluation, and run.json."""
    folder.mkdir(parents=True)
    events = []
    for step, elapsed, value in evals:
        events.append({"global_step": step, "time/elapsed_s": elapsed - 0.1,
                       "charts/episode_return": value / 2,
                       "charts/episode_return_last100": value / 4, "charts/steps_per_second":
                       steps_per_second + step / 100})
        events.append({"global_step": step, "time/elapsed_s": elapsed,
                       "eval/return_mean": value, "eval/return_std": 1.0,
                       "eval/length_mean": 10.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if run_info:
        info = {"config": {"env_id": env_id, "seed": seed, "total_steps": evals[-1][0],
                           "eval_episodes": 10},
                "env_id": env_id, "backend": "envpool", "device": "cpu", "torch_threads": 1,
                "machine": {"platform": "Linux", "processor": "Test CPU", "cpus": 2,
                            "python": "3.11.0"}}
        (folder / "run.json").write_text(json.dumps(info))
    return folder


@pytest.fixture
def runs_root(tmp_path) -> Path:
    root = tmp_path / "results"
    for env_id, seeds in EVALS.items():
        for seed, evals in seeds.items():
            write_run(root / env_id / f"seed{seed}", evals, env_id, seed)
    return root


def test_find_runs_groups_by_env_and_sorts_by_seed(runs_root):
    runs = plot.find_runs([runs_root])
    groups = plot.group_by_env(runs)
    assert list(groups) == ["CartPole-v1", "Pendulum-v1"]
    assert [run.seed for run in groups["CartPole-v1"]] == [1, 2, 3]
    assert [run.seed for run in groups["Pendulum-v1"]] == [1, 2]
    # a run folder given directly, and the same run again through its parent: loaded once
    again = plot.find_runs([runs_root / "Pendulum-v1" / "seed2", runs_root / "Pendulum-v1"])
    assert [(run.env_id, run.seed) for run in again] == [("Pendulum-v1", 1), ("Pendulum-v1", 2)]


def test_load_run_reads_the_curve_and_run_info(runs_root):
    run = plot.load_run(runs_root / "CartPole-v1" / "seed1")
    assert (run.env_id, run.seed) == ("CartPole-v1", 1)
    assert run.info["machine"]["processor"] == "Test CPU"
    curve = run.curve()
    np.testing.assert_array_equal(curve.steps, [1000, 2000, 3000])
    np.testing.assert_array_equal(curve.seconds, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(curve.values, [20.0, 100.0, 300.0])
    np.testing.assert_array_equal(run.curve("charts/episode_return").values, [10, 50, 150])
    assert run.last("charts/steps_per_second") == 1030.0
    assert (run.final_step, run.wall_clock_s) == (3000, 3.0)


def test_without_run_json_the_folder_names_give_env_and_seed(tmp_path):
    evals = [(100, 1.0, 5.0)]
    default = write_run(tmp_path / "runs" / "CartPole-v1-seed4-20250101-120000", evals,
                        run_info=False)
    benchmark = write_run(tmp_path / "Pendulum-v1" / "seed2", evals, run_info=False)
    assert [(r.env_id, r.seed) for r in map(plot.load_run, (default, benchmark))] == [
        ("CartPole-v1", 4), ("Pendulum-v1", 2)]


def test_a_resumed_run_keeps_counting_wall_clock_and_replaces_repeated_steps(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    events = [(1000, 5.0, 1.0), (2000, 10.0, 2.0),  # first session
              (2000, 1.0, 3.0), (3000, 6.0, 4.0)]   # resumed at step 2000: the clock restarts
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"global_step": s, "time/elapsed_s": t, "eval/return_mean": v}) + "\n"
        for s, t, v in events))
    curve = plot.load_run(folder).curve()
    np.testing.assert_array_equal(curve.steps, [1000, 2000, 3000])
    np.testing.assert_array_equal(curve.seconds, [5.0, 11.0, 16.0])
    np.testing.assert_array_equal(curve.values, [1.0, 3.0, 4.0])


def test_seeds_are_interpolated_onto_a_common_grid(runs_root):
    curves = [run.curve() for run in plot.find_runs([runs_root / "CartPole-v1"])]
    by_steps = plot.aggregate(curves, "steps")
    np.testing.assert_array_equal(by_steps.x, [1000, 2000, 3000])  # the union of eval steps
    # seed 3 has no evaluation at 2000: halfway between 30 and 400 is 215
    np.testing.assert_allclose(by_steps.mean, [30.0, (100 + 200 + 215) / 3, 400.0])
    np.testing.assert_allclose(by_steps.low, [20.0, 100.0, 300.0])
    np.testing.assert_allclose(by_steps.high, [40.0, 215.0, 500.0])
    assert by_steps.seeds == 3

    std = plot.aggregate(curves, "steps", spread="std")
    np.testing.assert_allclose(std.high - std.mean, np.std([[20, 40, 30], [100, 200, 215],
                                                            [300, 500, 400]], axis=1))

    # wall clock: an even grid over the time every seed covers (from 2.0 s to 3.0 s)
    by_time = plot.aggregate(curves, "seconds")
    assert (by_time.x[0], by_time.x[-1]) == (2.0, 3.0)
    assert len(by_time.x) == plot.WALL_CLOCK_POINTS
    # at 3.0 s: seed 1 300 (its end), seed 2 200, seed 3 30 + (400 - 30) / 4
    np.testing.assert_allclose(by_time.mean[-1], (300 + 200 + 30 + 370 / 4) / 3)


def test_plot_runs_writes_a_png(runs_root, tmp_path):
    output = plot.plot_runs(plot.find_runs([runs_root]), tmp_path / "figures" / "curves.png",
                            title="test", spread="std")
    data = output.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1000, 640)  # 10 x 3.2 inches per env row at 100 dpi


@pytest.mark.slow
def test_cli_plots_the_runs_it_finds(runs_root, tmp_path):
    # from tmp_path: `python -m` puts the working directory first on sys.path, and the
    # source checkout's minerva/ has no compiled modules
    result = subprocess.run(
        [sys.executable, "-m", "minerva.plot", str(runs_root / "CartPole-v1"),
         str(runs_root / "Pendulum-v1"), "-o", "out.png", "--title", "CLI test"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "CartPole-v1 (3 runs), Pendulum-v1 (2 runs)" in result.stdout
    assert (tmp_path / "out.png").read_bytes().startswith(PNG_SIGNATURE)


def test_errors_name_the_folder_without_runs_and_the_run_without_evaluations(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="empty: no runs found"):
        plot.main([str(empty), "-o", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="missing: no such folder"):
        plot.find_runs([tmp_path / "missing"])

    folder = tmp_path / "no-eval"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text(
        json.dumps({"global_step": 512, "time/elapsed_s": 0.5, "charts/episode_return": 9.0})
        + "\n")
    with pytest.raises(SystemExit, match="no-eval: the run has no evaluation events"):
        plot.plot_runs(plot.find_runs([folder]), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def learning():
    spec = importlib.util.spec_from_file_location("learning_benchmark", LEARNING_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_learning_summary(learning, runs_root):
    summary = learning.summarize(learning.find_benchmark_runs(runs_root), runs_root)
    cartpole = summary["envs"]["CartPole-v1"]
    assert cartpole["seeds"] == 3
    assert cartpole["final_return"] == pytest.approx({"mean": 400.0, "std": 100.0})
    assert cartpole["best_return"]["mean"] == pytest.approx(400.0)
    # CleanRL's metric: each run's last mean of its last 100 training episodes (75, 125, 100)
    assert cartpole["last100_train_return"] == pytest.approx({"mean": 100.0, "std": 25.0})
    assert cartpole["env_steps_per_run"] == 3000 and cartpole["env_steps_total"] == 9000
    assert cartpole["wall_clock_s_per_run"] == pytest.approx((3.0 + 4.5 + 6.0) / 3)
    assert cartpole["steps_per_second"] == pytest.approx(1030.0)
    assert cartpole["machine"]["processor"] == "Test CPU"
    assert [run["path"] for run in cartpole["runs"]] == [
        f"CartPole-v1/seed{seed}" for seed in (1, 2, 3)]
    # the first evaluation at or above each of CartPole's REACH_RETURNS (200 and 475)
    assert [run["reached"] for run in cartpole["runs"]] == [
        {"200": {"steps": 3000.0, "seconds": 3.0}, "475": None},
        {"200": {"steps": 2000.0, "seconds": 3.0}, "475": {"steps": 3000.0, "seconds": 4.5}},
        {"200": {"steps": 3000.0, "seconds": 6.0}, "475": None}]
    pendulum = summary["envs"]["Pendulum-v1"]
    assert pendulum["final_return"]["mean"] == pytest.approx(-600.0)

    table = learning.markdown(summary)
    assert ("| CartPole-v1 | 3 | 400.0 ± 100.0 | 400.0 ± 100.0 | 100.0 ± 25.0 | 3,000 | 4.5 s "
            "| 1,030 |") in table
    assert "| Pendulum-v1 | 2 | -600.0 ± 282.8 |" in table


def test_learning_summarize_only_writes_table_json_and_curves(learning, runs_root, capsys):
    assert learning.main(["--summarize-only", "--out", str(runs_root),
                          "--envs", "Pendulum-v1"]) == 0
    assert "| Pendulum-v1 | 2 |" in capsys.readouterr().out
    assert "CartPole-v1" not in (runs_root / "summary.md").read_text()
    assert list(json.loads((runs_root / "summary.json").read_text())["envs"]) == [
        "Pendulum-v1"]
    assert (runs_root / "curves.png").read_bytes().startswith(PNG_SIGNATURE)


def test_learning_training_one_env_summarises_the_whole_folder(learning, runs_root,
                                                              monkeypatch, capsys):
    # one seed of Pendulum trained again on its own: CartPole's runs stay in the summary
    trained = []
    monkeypatch.setattr(learning, "run_all",
                        lambda jobs, parallel, carry_on=False: trained.extend(jobs) or [])
    assert learning.main(["--envs", "Pendulum-v1", "--seeds", "1", "--first-seed", "2",
                          "--out", str(runs_root), "--continue"]) == 0
    assert [job.name for job in trained] == ["Pendulum-v1 seed 2"]
    summary = json.loads((runs_root / "summary.json").read_text())
    assert list(summary["envs"]) == ["CartPole-v1", "Pendulum-v1"]
    assert "| CartPole-v1 | 3 |" in capsys.readouterr().out


def test_learning_summary_leaves_out_a_run_short_of_its_budget(learning, runs_root, capsys):
    """A run still training (or stopped) has no final evaluation yet: the summary names it
    and leaves it out instead of taking its last evaluation for a final one."""
    run = runs_root / "CartPole-v1" / "seed3"
    info = json.loads((run / "run.json").read_text())
    info["config"]["total_steps"] = 10_000
    (run / "run.json").write_text(json.dumps(info))
    assert learning.main(["--summarize-only", "--out", str(runs_root)]) == 0
    summary = json.loads((runs_root / "summary.json").read_text())
    assert [r["seed"] for r in summary["envs"]["CartPole-v1"]["runs"]] == [1, 2]
    assert summary["unfinished"] == ["CartPole-v1 seed 3 (at step 3,000 of 10,000)"]
    assert ("Left out, not finished: CartPole-v1 seed 3 (at step 3,000 of 10,000)."
            in (runs_root / "summary.md").read_text())
    # a target return may stop a run early: such a run counts as finished
    info["config"]["target_return"] = 475.0
    (run / "run.json").write_text(json.dumps(info))
    assert learning.main(["--summarize-only", "--out", str(runs_root)]) == 0
    assert "unfinished" not in json.loads((runs_root / "summary.json").read_text())
    # nothing finished: a clear exit, no summary of nothing
    only = write_run(runs_root.parent / "unfinished" / "CartPole-v1" / "seed1",
                     [(1000, 1.0, 10.0)], "CartPole-v1", 1)
    info = json.loads((only / "run.json").read_text())
    info["config"]["total_steps"] = 5000
    (only / "run.json").write_text(json.dumps(info))
    with pytest.raises(SystemExit, match="no finished run"):
        learning.main(["--summarize-only", "--out", str(only.parent.parent)])


def test_learning_compare_puts_two_summaries_side_by_side(learning, runs_root, tmp_path,
                                                         capsys):
    assert learning.main(["--summarize-only", "--out", str(runs_root)]) == 0
    other = tmp_path / "other"
    other.mkdir()
    summary = json.loads((runs_root / "summary.json").read_text())
    del summary["envs"]["CartPole-v1"]["runs"][0]  # seed 1: not in both
    (other / "summary.json").write_text(json.dumps(summary))
    capsys.readouterr()
    assert learning.main(["--compare", f"A={runs_root}", f"B={other}"]) == 0
    table = capsys.readouterr().out
    # the seeds both have (2 and 3: finals 500 and 400, last 100 125 and 100)
    assert "| CartPole-v1 | 2, 3 | 450 ± 71 | 450 ± 71 | 112 ± 18 | 450 ± 71 |" in table
    assert "| CartPole-v1 | 2 | 500 | 125 | 500 | 125 |" in table
    # the wall-clock (and steps) to CartPole's returns: 200 first at 3 s (seed 2) and 6 s
    # (seed 3), the lower median 3 s; 475 by seed 2 only, at 4.5 s, which is half the seeds
    assert "| CartPole-v1 | 200 | 3 s (2,000) | 2/2 | 3 s (2,000) | 2/2 |" in table
    assert "| CartPole-v1 | 475 | 4 s (3,000) | 1/2 | 4 s (3,000) | 1/2 |" in table
    with pytest.raises(SystemExit):
        learning.main(["--compare", f"A={tmp_path / 'missing'}"])


def test_learning_compare_gathers_a_labels_folders_and_refuses_an_env_in_two(
        learning, runs_root, tmp_path, capsys):
    assert learning.main(["--summarize-only", "--out", str(runs_root)]) == 0
    summary = json.loads((runs_root / "summary.json").read_text())
    cartpole, pendulum = tmp_path / "cartpole", tmp_path / "pendulum"
    for folder, env in ((cartpole, "CartPole-v1"), (pendulum, "Pendulum-v1")):
        folder.mkdir()
        part = {"envs": {env: summary["envs"][env]}}
        (folder / "summary.json").write_text(json.dumps(part))
    capsys.readouterr()
    assert learning.main(["--compare", f"A={runs_root}", f"B={cartpole}",
                          f"B={pendulum}"]) == 0
    table = capsys.readouterr().out
    assert "| CartPole-v1 | 1, 2, 3 |" in table
    assert "| Pendulum-v1 |" in table
    with pytest.raises(SystemExit):
        learning.main(["--compare", f"A={runs_root}", f"B={cartpole}", f"B={runs_root}"])
    assert "CartPole-v1 is in both" in capsys.readouterr().err


def test_learning_plan_runs_every_envs_first_seed_first(learning, tmp_path):
    jobs = learning.plan(["Hopper-v5", "Ant-v5"], 2, tmp_path)
    assert [(job.env_id, job.seed) for job in jobs] == [
        ("Hopper-v5", 1), ("Ant-v5", 1), ("Hopper-v5", 2), ("Ant-v5", 2)]


def test_learning_plan_can_start_at_another_seed(learning, tmp_path):
    jobs = learning.plan(["Hopper-v5"], 2, tmp_path, steps=1000, first_seed=4)
    assert [job.seed for job in jobs] == [4, 5]
    assert [job.out_dir.name for job in jobs] == ["seed4", "seed5"]
    command = jobs[0].command
    assert command[command.index("--seed") + 1] == "4"
    assert command[command.index("--total-steps") + 1] == "1000"


@pytest.mark.parametrize("output,message", [
    ("x.xyz", r"x\.xyz: cannot write the plot \(Format 'xyz' is not supported"),
    (".", r"^\.: is a folder; name the plot's file, such as curves\.png"),
])
def test_an_output_that_cannot_be_written_is_one_line(runs_root, tmp_path, monkeypatch, output,
                                                     message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        plot.main([str(runs_root), "-o", output])


@pytest.mark.parametrize("damage", ["cut", "array", "bytes"])
def test_a_damaged_run_json_leaves_the_folder_names(tmp_path, damage):
    folder = write_run(tmp_path / "Hopper-v5" / "seed3", [(100, 1.0, 5.0), (200, 2.0, 6.0)],
                       "Hopper-v5", 3)
    (folder / "run.json").write_bytes({"cut": b'{"config": {"env', "array": b"[1, 2]",
                                       "bytes": b"\xff\xfe"}[damage])
    run = plot.load_run(folder)
    assert (run.env_id, run.seed) == ("Hopper-v5", 3)


def test_damaged_events_are_skipped_or_named_and_a_cut_last_line_dropped(tmp_path):
    folder = write_run(tmp_path / "run", [(100, 1.0, 5.0), (200, 2.0, 6.0)])
    with (folder / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"global_step": 300, "time/elapsed_s": 3.0,
                            "eval/return_mean": "high"}) + "\n")  # a string: not a point
        f.write(json.dumps({"global_step": 400, "time/elapsed_s": 4.0,
                            "eval/return_mean": 1e308}) + "\n")  # damage: not a point
        f.write('{"global_step": 500, "time/ela')  # cut by a kill
    curve = plot.load_run(folder).curve()
    assert curve.steps.tolist() == [100, 200]
    plot.plot_runs([plot.load_run(folder)], tmp_path / "ok.png")
    with (folder / "metrics.jsonl").open("a") as f:
        f.write('\n{"global_step": Infinity, "time/elapsed_s": 5.0}\n{"global_step": 1, '
                '"time/elapsed_s": 1.0}\n')
    with pytest.raises(SystemExit, match=r"metrics\.jsonl:7: not a metrics event"):
        plot.load_run(folder)  # cut, then followed: damage, not a kill
    (folder / "metrics.jsonl").write_text(
        '{"global_step": 1, "time/elapsed_s": 1.0}\n{"global_step": Infinity, '
        '"time/elapsed_s": 5.0}\n{"global_step": 2, "time/elapsed_s": 2.0}\n')
    with pytest.raises(SystemExit, match=r"metrics\.jsonl:2: not a metrics event"):
        plot.load_run(folder)
    (folder / "metrics.jsonl").write_bytes(b"\xff\xfe\n")
    with pytest.raises(SystemExit, match="metrics.jsonl: cannot be read"):
        plot.load_run(folder)


@pytest.mark.slow
def test_learning_continue_keeps_finished_runs_and_resumes_the_others(learning, tmp_path,
                                                                       capsys):
    pytest.importorskip("envpool")
    out = tmp_path / "set"
    common = ["--envs", "CartPole-v1", "--seeds", "1", "--out", str(out), "--jobs", "1",
              "--extra-args", "--num-envs 4 --rollout-steps 32 --eval-every 512 "
                              "--eval-episodes 2"]
    assert learning.main([*common, "--steps", "512"]) == 0
    # a longer budget: the run resumes from its checkpoint instead of starting again
    assert learning.main([*common, "--steps", "1024", "--continue"]) == 0
    assert "ok (resumed at step 512)" in capsys.readouterr().err
    run = out / "CartPole-v1" / "seed1"
    steps = [json.loads(line)["global_step"]
             for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 1024
    commands = [line for line in run.with_suffix(".log").read_text().splitlines()
                if line.startswith("$ ")]
    assert len(commands) == 2 and "--resume" not in commands[0]
    assert f"--resume {run / 'vmpo_last.pt'}" in commands[1]
    # finished: kept as it is
    before = (run / "metrics.jsonl").read_text()
    assert learning.main([*common, "--steps", "1024", "--continue"]) == 0
    assert "ok (kept (finished at step 1024))" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == before
    # without --continue the run starts again
    assert learning.main([*common, "--steps", "512"]) == 0
    assert "ok (trained)" in capsys.readouterr().err
    assert run.with_suffix(".log").read_text().count("\n$ ") == 0  # one command: the first line


def test_learning_summary_flags_collapse_and_reports_how_the_update_behaved(learning,
                                                                           tmp_path):
    root = tmp_path / "results"
    # seed 1 ends at its best; seed 2 falls from 500 to 300, below 0.8 of its best
    write_run(root / "Hopper-v5" / "seed1", [(1000, 1.0, 100.0), (2000, 2.0, 400.0)],
              "Hopper-v5", 1)
    write_run(root / "Hopper-v5" / "seed2", [(1000, 1.0, 500.0), (2000, 2.0, 300.0)],
              "Hopper-v5", 2)
    floor, cap = learning.DUAL_RANGE
    # seed 2's mean multiplier sinks to its floor (near it: 5e-8) on its last update
    for seed, alpha_std, alpha_mean in ((1, [10.0, cap, cap, 5.0], [1.0] * 4),
                                        (2, [1.0, 2.0, 3.0, 4.0], [1.0, 1e-3, 1e-6, 5 * floor])):
        folder = root / "Hopper-v5" / f"seed{seed}"
        info = json.loads((folder / "run.json").read_text())
        info["config"].update(max_grad_norm=10.0)
        (folder / "run.json").write_text(json.dumps(info))
        updates = [{"global_step": 500 * (i + 1), "time/elapsed_s": 0.5 * (i + 1),
                    "charts/policy_std": 0.5 - 0.1 * i,
                    "losses/eta": 1.0, "losses/alpha_mean": alpha_mean[i],
                    "losses/alpha_std": value,
                    "losses/policy_grad_norm": [5.0, 20.0, 30.0, float("nan")][i]}
                   for i, value in enumerate(alpha_std)]
        with (folder / "metrics.jsonl").open("a") as metrics:
            metrics.writelines(json.dumps(event) + "\n" for event in updates)

    summary = learning.summarize(learning.find_benchmark_runs(root), root)
    runs = summary["envs"]["Hopper-v5"]["runs"]
    assert [run["collapsed"] for run in runs] == [False, True]
    assert runs[0]["health"] == pytest.approx({
        "policy_std_first": 0.5, "policy_std_last": 0.2, "dual_at_cap_share": 0.5,
        "dual_near_floor_share": 0.0,
        "grad_norm_over_clip": 2.0})  # the NaN norm is skipped: median(5, 20, 30) / 10
    assert runs[1]["health"]["dual_at_cap_share"] == 0.0
    assert runs[1]["health"]["dual_near_floor_share"] == 0.25  # 1e-6 is not near it
    table = learning.markdown(summary)
    assert "| Hopper-v5 | 1/2 | 0.60 | 0.500 → 0.200 | 25% / 12% | 2.00 |" in table

    # a run that logged nothing has no health numbers; a share of a negative best means
    # nothing, so none is given
    write_run(root / "Pendulum-v1" / "seed1", [(1000, 1.0, -200.0)], "Pendulum-v1", 1)
    pendulum = learning.summarize(learning.find_benchmark_runs(root), root)["envs"][
        "Pendulum-v1"]["runs"][0]
    assert pendulum["health"] == {"policy_std_first": None, "policy_std_last": None,
                                  "dual_at_cap_share": None, "dual_near_floor_share": None,
                                  "grad_norm_over_clip": None}
    assert "| Pendulum-v1 | 0/1 | – | – → – | – / – | – |" in learning.markdown(
        learning.summarize(learning.find_benchmark_runs(root), root))
