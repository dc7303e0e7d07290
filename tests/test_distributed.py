"""Data-parallel training on 2 CPU processes (gloo), as ``torchrun`` launches them: the ranks
stay one agent, their statistics and E-step are global, and a 2-rank run learns and resumes
on 1 rank."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from minerva import ops
from minerva.checkpoint import load
from minerva.losses import normalize_advantages
from minerva.normalization import RewardScaler, RunningMeanStd

pytest.importorskip("envpool")

# several processes per test (torchrun's): the slow tier
pytestmark = pytest.mark.slow

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(script: str, folder: Path, timeout: float = 240,
              expected_codes: tuple[int, ...] = (0, 0)) -> list[str]:
    """Runs ``script`` as 2 ranks of one process group (the environment torchrun sets);
    each writes its results under ``folder``. Returns each rank's output."""
    path = folder / "script.py"
    path.write_text(textwrap.dedent(script))
    port = str(_free_port())
    processes = []
    for rank in range(WORLD_SIZE):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(WORLD_SIZE), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        processes.append(subprocess.Popen(
            [sys.executable, "-P", str(path), str(folder)], env=env, cwd=tempfile.gettempdir(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    for rank, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == expected_codes[rank], f"rank {rank}:\n{output}"
    return outputs


def test_ranks_stay_one_agent(tmp_path):
    run_ranks("""
        import sys, torch
        from minerva import distributed
        from minerva.trainers.vmpo.trainer import VMPOTrainer
        folder = sys.argv[1]
        trainer = VMPOTrainer("Pendulum-v1", 0, "cpu", (16,), (16,), 16, num_envs=4,
                              m_steps=2, num_minibatches=2, eval_every=128, eval_episodes=2,
                              progress=False, backend="envpool", advantage_estimator="gae")
        trainer.train(384, folder + "/run")
        rank = trainer.ranks.rank
        torch.save({"agent": trainer.agent.state_dict(), "duals": trainer.duals.state_dict(),
                    "reward_var": trainer.reward_scaler.return_stats.var,
                    "global_step": trainer.global_step,
                    "observations": trainer.storage.observations.clone()},
                   f"{folder}/rank{rank}.pt")
        trainer.close()
        distributed.finish()
    """, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    # 3 updates later the weights, the duals and both normalisers are the same on each rank
    for name, tensor in ranks[0]["agent"].items():
        torch.testing.assert_close(ranks[1]["agent"][name], tensor, rtol=0, atol=0, msg=name)
    for name, tensor in ranks[0]["duals"].items():
        torch.testing.assert_close(ranks[1]["duals"][name], tensor, rtol=0, atol=0)
    # every rank's rows: 3 rollouts of 16 steps x 4 envs each (Pendulum's episodes last 200)
    assert ranks[0]["agent"]["obs_normalizer.count"] == 3 * 64 * WORLD_SIZE
    torch.testing.assert_close(ranks[0]["reward_var"], ranks[1]["reward_var"], rtol=0, atol=0)
    # global_step counts every rank's steps; the ranks' envs are seeded apart
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 384
    assert not torch.equal(ranks[0]["observations"], ranks[1]["observations"])
    # only rank 0 writes
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
              .splitlines()]
    assert [e["global_step"] for e in events if "eval/return_mean" in e] == [128, 256, 384]
    assert load(tmp_path / "run" / "vmpo_last.pt")["global_step"] == 384


def _rank_data(rank: int) -> tuple[torch.Tensor, np.ndarray]:
    generator = torch.Generator().manual_seed(rank)
    observations = torch.randn(50 + 30 * rank, 3, generator=generator) * (rank + 1) + rank
    returns = np.random.default_rng(rank).normal(rank, 1 + rank, size=20 + 7 * rank)
    return observations, returns


def test_merged_normalisers_equal_one_process_over_the_union(tmp_path):
    run_ranks("""
        import sys, numpy as np, torch
        from minerva import distributed
        from minerva.normalization import RewardScaler, RunningMeanStd
        sys.path.insert(0, %r)
        from test_distributed import _rank_data
        folder = sys.argv[1]
        ranks = distributed.init(torch.device("cpu"), 60)
        gather = lambda rows: distributed.all_gather_rows(rows, ranks.world_size)
        observations, returns = _rank_data(ranks.rank)
        stats = RunningMeanStd((3,))
        stats.update(observations[:10], gather)  # twice: merged into earlier statistics too
        stats.update(observations[10:], gather)
        scaler = RewardScaler(1, 0.99)
        scaler._pending.append(returns)
        scaler.update_statistics(gather)
        torch.save({"stats": stats.state_dict(), "returns": scaler.return_stats.state_dict()},
                   f"{folder}/rank{ranks.rank}.pt")
        distributed.finish()
    """ % str(Path(__file__).parent), tmp_path)
    data = [_rank_data(rank) for rank in range(WORLD_SIZE)]
    union = torch.cat([observations for observations, _ in data])
    expected = RunningMeanStd((3,))
    first = torch.cat([data[0][0][:10], data[1][0][:10]])
    rest = torch.cat([data[0][0][10:], data[1][0][10:]])
    expected.update(first)
    expected.update(rest)
    scaler = RewardScaler(1, 0.99)
    scaler._pending.append(np.concatenate([returns for _, returns in data]))
    scaler.update_statistics()
    for rank in range(WORLD_SIZE):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        for name, value in expected.state_dict().items():
            torch.testing.assert_close(saved["stats"][name], value, msg=name)
        for name, value in scaler.return_stats.state_dict().items():
            torch.testing.assert_close(saved["returns"][name], value, msg=name)
    # and the union's statistics are the plain ones
    torch.testing.assert_close(expected.mean, union.double().mean(0))
    torch.testing.assert_close(expected.var, union.double().var(0, unbiased=False))


def test_the_e_step_selection_is_global(tmp_path):
    run_ranks("""
        import sys, torch
        from minerva import distributed
        from minerva.trainers.vmpo.trainer import VMPOTrainer
        folder = sys.argv[1]
        trainer = VMPOTrainer("CartPole-v1", 0, "cpu", (8,), (8,), 8, num_envs=2,
                              eval_episodes=1, progress=False, backend="envpool",
                              normalize_advantages=True)
        rank = trainer.ranks.rank
        generator = torch.Generator().manual_seed(10 + rank)
        # rank 1's advantages are all larger: a per-rank top half would keep half of each
        advantages = torch.randn(16, generator=generator) + 5.0 * rank
        valid = torch.rand(16, generator=generator) < 0.8
        selection = trainer.algorithm.selection(advantages, valid)
        torch.save({"advantages": advantages, "valid": valid, "selection": selection},
                   f"{folder}/rank{rank}.pt")
        trainer.close()
        distributed.finish()
    """, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    advantages = torch.cat([r["advantages"] for r in ranks])
    valid = torch.cat([r["valid"] for r in ranks])
    normalized = normalize_advantages(advantages, valid)
    expected = ops.topk_mask(normalized, valid, 0.5)
    for rank, saved in enumerate(ranks):
        got_advantages, got_selected = saved["selection"]
        torch.testing.assert_close(got_advantages, normalized)
        assert torch.equal(got_selected, expected)
    # which a per-rank selection is not: it would keep half of each rank's samples
    per_rank = torch.cat([ops.topk_mask(normalize_advantages(r["advantages"], r["valid"]),
                                        r["valid"], 0.5) for r in ranks])
    assert expected[16:].sum() > per_rank[16:].sum()


def _torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-P", "-m", "torch.distributed.run", "--nproc-per-node",
               str(WORLD_SIZE), "--master-port", str(_free_port()), "-m", "minerva.train",
               *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          cwd=tempfile.gettempdir())


def test_a_two_rank_cartpole_run_learns_and_resumes_on_one_rank(tmp_path):
    out = tmp_path / "run"
    result = _torchrun("--total-steps", "100000", "--out-dir", str(out), "--torch-threads", "1",
                       "--no-progress", "--eval-every", "5120")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 envs x 2 ranks" in result.stdout
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(e.get("eval/return_mean", 0) for e in events) >= 475  # the target return
    state = load(out / "vmpo_last.pt")
    assert state["global_step"] % (2 * 8 * 64) == 0  # every iteration counts both ranks
    resumed = subprocess.run(
        [sys.executable, "-P", "-m", "minerva.train", "--resume", str(out / "vmpo_last.pt"),
         "--total-steps", str(state["global_step"] + 1024), "--target-return", "none",
         "--no-progress", "--torch-threads", "1"],
        capture_output=True, text=True, timeout=300, cwd=tempfile.gettempdir())
    assert resumed.returncode == 0, resumed.stderr
    assert "8 envs, device cpu" in resumed.stdout  # one process
    assert load(out / "vmpo_last.pt")["global_step"] == state["global_step"] + 1024


def test_a_rank_that_dies_stops_the_others_with_a_clear_error(tmp_path):
    import time

    start = time.monotonic()
    outputs = run_ranks("""
        import os, sys
        from minerva.distributed import DistributedError
        from minerva.trainers.vmpo.trainer import VMPOTrainer
        folder = sys.argv[1]
        trainer = VMPOTrainer("CartPole-v1", 0, "cpu", (8,), (8,), 8, num_envs=2,
                              eval_episodes=1, progress=False, backend="envpool",
                              dist_timeout_s=30)
        if trainer.ranks.rank == 1:  # dies during its second update
            update_class = type(trainer.algorithm)
            update, calls = update_class.__call__, []
            def dying(self, batch, *progress):
                if calls:
                    os._exit(3)
                calls.append(batch)
                return update(self, batch, *progress)
            update_class.__call__ = dying
        try:
            trainer.train(100_000, folder + "/run")
        except DistributedError as error:
            print(error)
            sys.exit(7)
    """, tmp_path, expected_codes=(7, 3))
    # (rank 0's next collective is the gathering of its next rollout's advantages)
    assert "rank 0 of 2: the all-gather of the rollouts' statistics failed, so another rank " \
        "has stopped" in outputs[0]
    assert time.monotonic() - start < 120  # well within the timeout: no hang


def test_ctrl_c_on_the_launcher_stops_every_rank_with_a_checkpoint(tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-P", "-m", "torch.distributed.run", "--nproc-per-node",
         str(WORLD_SIZE), "--master-port", str(_free_port()), "-m", "minerva.train",
         "--env-id", "Pendulum-v1", "--num-envs", "4", "--rollout-steps", "16",
         "--total-steps", "10000000", "--eval-every", "1000000", "--no-progress",
         "--torch-threads", "1", "--out-dir", str(out)],
        cwd=tempfile.gettempdir(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert launcher.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    launcher.send_signal(signal.SIGINT)
    output = launcher.communicate(timeout=120)[0]
    assert (out / "vmpo_last.pt").exists(), output
    state = load(out / "vmpo_last.pt")
    events = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert state["global_step"] == events[-1]["global_step"] > 0, output
    assert f"the last checkpoint (step {state['global_step']})" in output
