"""PPO on the shared on-policy machinery: its losses with worked numbers, its update, its
presets, and the loop's features (checkpoints, resume, signals, torchrun, evaluation, videos,
W&B) working for it as they do for V-MPO."""

import dataclasses
import json
import math
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
from minerva.networks import CategoricalPolicy, GaussianPolicy
from minerva.presets import preset
from minerva.trainers import OnPolicyTrainer, PPOTrainer, VMPOTrainer
from minerva.trainers.ppo import losses as ppo_losses

pytest.importorskip("envpool")


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


# --- losses ----------------------------------------------------------------------------------

def test_clipped_surrogate_worked_numbers():
    # ratios 1.5, 0.5, 1.1 (the last sample invalid); advantages 2, 2, -1; clip 0.2
    log_probs, old = t(math.log(1.5), math.log(0.5), math.log(1.1)), t(0.0, 0.0, 0.0)
    valid = torch.tensor([True, True, False])
    out = ppo_losses.clipped_surrogate(log_probs, old, t(2.0, 2.0, -1.0), 0.2, valid)
    # min(1.5 * 2, 1.2 * 2) = 2.4 and min(0.5 * 2, 0.8 * 2) = 1.0: the loss is -(3.4 / 2)
    assert out.loss.item() == pytest.approx(-1.7)
    assert out.clip_fraction.item() == 1.0  # both valid ratios are outside [0.8, 1.2]
    expected_kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2
    assert out.approx_kl.item() == pytest.approx(expected_kl)


def test_clipped_surrogate_gradient_stops_outside_the_clip_range():
    log_probs = t(math.log(1.5), math.log(1.1)).requires_grad_()
    out = ppo_losses.clipped_surrogate(log_probs, t(0.0, 0.0), t(1.0, 1.0), 0.2,
                                       torch.tensor([True, True]))
    out.loss.backward()
    # a positive advantage above 1 + clip: no gradient; within: -ratio * A / |V|
    torch.testing.assert_close(log_probs.grad, t(0.0, -1.1 / 2))


def test_clipped_value_loss_worked_numbers():
    valid = torch.tensor([True, True, False])
    # value 3 from an old 1 towards a return of 4: clipped to 1.2, error (1.2 - 4)^2 = 7.84
    # beats (3 - 4)^2 = 1; value 0.1 from 0 towards 0: both errors 0.01
    got = ppo_losses.clipped_value_loss(t(3.0, 0.1, 9.0), t(1.0, 0.0, 0.0), t(4.0, 0.0, 0.0),
                                        0.2, valid)
    assert got.item() == pytest.approx(0.5 * (7.84 + 0.01) / 2)


def test_entropies_match_torch_distributions():
    box = gym.spaces.Box(-1.0, 1.0, (3,))
    gaussian = GaussianPolicy(4, box)
    params = gaussian(torch.randn(5, 4))
    mean, std = gaussian.split(params)
    torch.testing.assert_close(gaussian.entropy(params),
                               torch.distributions.Normal(mean, std).entropy().sum(-1))
    categorical = CategoricalPolicy(4, gym.spaces.Discrete(3))
    logits = categorical(torch.randn(5, 4))
    torch.testing.assert_close(categorical.entropy(logits),
                               torch.distributions.Categorical(logits=logits).entropy())


def test_clipped_actions_keep_the_gaussians_log_prob():
    box = gym.spaces.Box(np.array([-1.0, 0.0]), np.array([1.0, 2.0]))
    clip = GaussianPolicy(4, box, action_bounds="clip")
    raw = t(-3.0, 0.5).float().unsqueeze(0)
    torch.testing.assert_close(clip.to_env(raw), torch.tensor([[-1.0, 0.5]]))
    params = clip(torch.zeros(1, 4))
    squash = GaussianPolicy(4, box)
    squash.load_state_dict(clip.state_dict())
    torch.testing.assert_close(clip.log_prob(params, raw), squash.log_prob(params, raw))
    with pytest.raises(ValueError, match="action_bounds"):
        GaussianPolicy(4, box, action_bounds="wrap")


# --- presets and options ---------------------------------------------------------------------

def test_the_continuous_preset_is_cleanrls_ppo_continuous_action():
    options = preset("Hopper-v5", "ppo")
    cleanrl = {"num_envs": 1, "rollout_steps": 2048, "m_steps": 10, "num_minibatches": 32,
               "policy_lr": 3e-4, "value_lr": 3e-4, "lr_schedule": "linear", "gamma": 0.99,
               "gae_lambda": 0.95, "clip_coef": 0.2, "entropy_coef": 0.0, "value_coef": 0.5,
               "max_grad_norm": 0.5, "policy_layer_sizes": (64, 64), "activation": "tanh",
               "state_dependent_std": False, "init_log_std": 0.0, "clip_value_loss": True,
               "normalize_observations": True, "normalize_rewards": True}
    assert {name: options[name] for name in cleanrl} == cleanrl
    # the run's budget and cadence are the env's, whichever the algorithm
    for name in ("total_steps", "eval_every"):
        assert options[name] == preset("Hopper-v5", "vmpo")[name]
    discrete = preset("CartPole-v1", "ppo")
    assert (discrete["num_envs"], discrete["rollout_steps"], discrete["entropy_coef"]) == (
        4, 128, 0.01)
    assert not discrete["normalize_observations"]


@pytest.mark.parametrize("schedule", ["adaptive", "adaptive_annealed"])
def test_ppo_refuses_the_adaptive_schedules(schedule):
    with pytest.raises(ValueError, match="lr_schedule: adaptive follows V-MPO"):
        TrainConfig(algo="ppo", lr_schedule=schedule).validate()
    with pytest.raises(ValueError, match="algo: must be one of vmpo, ppo"):
        TrainConfig(algo="a2c").validate()


def make_ppo(env_id="Pendulum-v1", **overrides):
    options = {"env_id": env_id, "seed": 0, "num_envs": 4, "rollout_steps": 16,
               "policy_layer_sizes": (16,), "value_layer_sizes": (16,), "m_steps": 2,
               "num_minibatches": 4, "eval_every": 64, "eval_episodes": 2, "progress": False,
               "backend": "envpool", "entropy_coef": 0.01, **overrides}
    return PPOTrainer(**options)


def test_ppo_trainer_defaults_are_ppos_own():
    """PPOTrainer starts from PPO's defaults (CleanRL's, presets.toml's [ppo]), not V-MPO's;
    what it is given wins."""
    from minerva.presets import algorithm_table

    trainer = PPOTrainer(env_id="CartPole-v1", progress=False, entropy_coef=0.0)
    defaults = algorithm_table("ppo")
    assert defaults["max_grad_norm"] == 0.5 and defaults["lr_schedule"] == "linear"
    config = dataclasses.asdict(trainer.config)
    assert {k: config[k] for k in defaults if k != "entropy_coef"} == {
        k: v for k, v in defaults.items() if k != "entropy_coef"}
    assert trainer.config.entropy_coef == 0.0
    trainer.close()


# --- the update ------------------------------------------------------------------------------

@pytest.mark.parametrize("env_id,options", [
    ("Pendulum-v1", {}), ("Pendulum-v1", {"clip_value_loss": False, "num_minibatches": 1}),
    ("Pendulum-v1", {"action_bounds": "clip", "state_dependent_std": False}),
    ("CartPole-v1", {"normalize_advantages": False})])
def test_the_update_trains_and_reports_its_terms(env_id, options):
    trainer = make_ppo(env_id, **options)
    before = [p.detach().clone() for p in trainer.agent.parameters()]
    metrics = trainer.algorithm(trainer._collect_rollout().batch, 0, 1000)
    trainer.close()
    for name in ("losses/policy", "losses/value", "losses/entropy", "losses/approx_kl",
                 "losses/approx_kl_after", "losses/grad_norm", "charts/clip_fraction",
                 "charts/explained_variance"):
        assert math.isfinite(metrics[name]), name
    assert metrics["losses/approx_kl_after"] > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.agent.parameters()))


def test_the_gradient_norm_is_clipped_over_both_networks(monkeypatch):
    trainer = make_ppo(max_grad_norm=1e-3)
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording(parameters, max_norm):
        parameters = list(parameters)
        norms.append((len(parameters), max_norm))
        return clip(parameters, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    trainer.algorithm(trainer._collect_rollout().batch, 0, 1000)
    everything = len(trainer.algorithm.policy_params) + len(trainer.algorithm.value_params)
    assert norms == [(everything, 1e-3)] * (2 * 4)  # one clip of all weights per step
    trainer.close()


def test_the_linear_schedule_anneals_both_networks():
    trainer = make_ppo(lr_schedule="linear", policy_lr=1e-3, value_lr=2e-3)
    assert trainer.algorithm.schedule({}, 250, 1000) == pytest.approx(0.75e-3)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([0.75e-3, 1.5e-3])
    assert trainer.algorithm.schedule({}, 2000, 1000) == 0.0
    trainer.close()


@pytest.mark.slow
def test_ppo_solves_cartpole():
    config = TrainConfig(**{**preset("CartPole-v1", "ppo"), "algo": "ppo", "seed": 1,
                            "env_id": "CartPole-v1", "progress": False,
                            "total_steps": 150_000, "torch_threads": 1})
    trainer = OnPolicyTrainer.from_config(config)
    assert isinstance(trainer, PPOTrainer)
    with tempfile.TemporaryDirectory() as out:
        result = trainer.train(config.total_steps, out)
    trainer.close()
    # the preset's target return (475) stops the run once an evaluation reaches it
    assert result["eval/return_mean"] >= 475, result
    assert trainer.global_step < config.total_steps


# --- the loop's features ---------------------------------------------------------------------

def cli(*args, timeout=300, module="minerva.train"):
    return subprocess.run([sys.executable, "-P", "-m", module, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          cwd=tempfile.gettempdir())


SHORT = ("--algo", "ppo", "--env-id", "Pendulum-v1", "--num-envs", "4", "--rollout-steps", "32",
         "--eval-every", "256", "--eval-episodes", "2", "--no-progress")


@pytest.mark.slow
def test_cli_trains_checkpoints_resumes_and_evaluates(tmp_path):
    out = tmp_path / "run"
    result = cli(*SHORT, "--total-steps", "256", "--out-dir", out)
    assert result.returncode == 0, result.stderr
    assert "PPO on Pendulum-v1" in result.stdout
    assert {"ppo_last.pt", "ppo_best.pt"} <= {p.name for p in out.iterdir()}
    state = checkpoint.load(out / "ppo_last.pt")
    assert state["config"]["algo"] == "ppo" and "duals" not in state
    # the checkpoint knows its algorithm: resumed without --algo, it continues as PPO
    resumed = cli("--resume", out / "ppo_last.pt", "--total-steps", "512", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.load(out / "ppo_last.pt")["global_step"] == 512
    refused = cli("--resume", out / "ppo_last.pt", "--algo", "vmpo", "--total-steps", "1024")
    assert refused.returncode == 2
    assert "--algo: the checkpoint has 'ppo'" in refused.stderr
    with pytest.raises(checkpoint.CheckpointError, match="is a ppo checkpoint"):
        VMPOTrainer.from_checkpoint(out / "ppo_last.pt")
    summary = tmp_path / "summary.json"
    evaluated = cli(out / "ppo_best.pt", "--episodes", "2", "--json", summary,
                    module="minerva.evaluate")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(summary.read_text())["return_mean"] < 0  # Pendulum's returns


@pytest.mark.slow
def test_a_sigterm_stops_ppo_with_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-P", "-m", "minerva.train", *SHORT, "--total-steps", "10000000",
         "--out-dir", str(out)], cwd=tempfile.gettempdir(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    events = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert checkpoint.load(out / "ppo_last.pt")["global_step"] == events[-1]["global_step"]


@pytest.mark.slow
def test_ppo_records_a_video_of_its_best_policy(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    trainer = make_ppo("CartPole-v1", capture_video=True)
    trainer.train(64, str(tmp_path))
    trainer.close()
    assert (tmp_path / "videos" / "best.mp4").stat().st_size > 0


@pytest.mark.slow
def test_ppo_logs_to_wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []
    init = wandb.init

    def recording_init(*args, **kwargs):
        run = init(*args, **kwargs)
        log = run.log
        run.log = lambda data, *a, **k: (logged.append(dict(data)), log(data, *a, **k))[1]
        return run

    monkeypatch.setattr(wandb, "init", recording_init)
    trainer = make_ppo("CartPole-v1", wandb_project="minerva-tests")
    trainer.train(128, str(tmp_path))
    trainer.close()
    assert any("losses/approx_kl" in event for event in logged)
    assert any("eval/return_mean" in event for event in logged)


@pytest.mark.slow
def test_ppo_ranks_stay_one_agent(tmp_path):
    from test_distributed import WORLD_SIZE, run_ranks

    run_ranks("""
        import sys, torch
        from minerva import distributed
        from minerva.trainers import PPOTrainer
        folder = sys.argv[1]
        trainer = PPOTrainer(env_id="Pendulum-v1", seed=0, num_envs=4, rollout_steps=16,
                             policy_layer_sizes=(16,), value_layer_sizes=(16,), m_steps=2,
                             num_minibatches=2, eval_every=128, eval_episodes=2,
                             progress=False, backend="envpool")
        trainer.train(256, folder + "/run")
        torch.save(trainer.agent.state_dict(), f"{folder}/rank{trainer.ranks.rank}.pt")
        trainer.close()
        distributed.finish()
    """, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    for name, tensor in ranks[0].items():
        torch.testing.assert_close(ranks[1][name], tensor, rtol=0, atol=0, msg=name)
    assert checkpoint.load(tmp_path / "run" / "ppo_last.pt")["global_step"] == 256


def test_the_seed_api_keeps_its_names():
    from minerva.trainers.vmpo import trainer as seed

    for name in ("_format_metrics", "_iter_final_info_entries", "_extract_final_observations",
                 "_extract_episode_returns", "_resolve_env_id", "_make_env", "find_wrapper",
                 "_evaluate_vectorized", "VMPOTrainer"):
        assert callable(getattr(seed, name)), name
    for name in ("_reset_rollout", "_rollout_full", "train"):
        assert callable(getattr(VMPOTrainer, name)), name
    assert Path(seed.__file__).read_text().count("\n") < 400


def test_only_minervas_own_checkpoint_names_mark_a_run(tmp_path):
    from minerva.run_folder import prepare_out_dir

    (tmp_path / "model_best.pt").write_bytes(b"a user's file")
    assert prepare_out_dir(tmp_path) == (tmp_path, None)  # not a run: kept, and no refusal
    (tmp_path / "ppo_best.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="already holds a run"):
        prepare_out_dir(tmp_path)
    _, aside = prepare_out_dir(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [aside.name, "model_best.pt"]
    assert [p.name for p in aside.iterdir()] == ["ppo_best.pt"]  # until the new checkpoint
