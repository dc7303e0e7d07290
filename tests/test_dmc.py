"""dm_control tasks (``dm_control/<domain>/<task>``, through shimmy): short training runs, and
clear errors for ids that do not exist."""

import json
import subprocess
import sys
import tempfile

import pytest

pytest.importorskip("shimmy")
pytest.importorskip("dm_control")

# dm_control and MuJoCo load for every test: the slow tier
pytestmark = pytest.mark.slow

from minerva.presets import preset  # noqa: E402
from minerva.trainers.vmpo.trainer import VMPOTrainer, _resolve_env_id  # noqa: E402


def train_cli(*args):
    return subprocess.run([sys.executable, "-P", "-m", "minerva.train", *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          cwd=tempfile.gettempdir())


@pytest.mark.parametrize("task,observations,actions", [("cheetah/run", 17, 6),
                                                       ("walker/walk", 24, 6)])
def test_a_dm_control_task_trains(task, observations, actions, tmp_path):
    env_id = f"dm_control/{task}"
    trainer = VMPOTrainer(env_id, 0, "cpu", (32,), (32,), 16, num_envs=2, eval_every=64,
                          eval_episodes=1, eval_max_steps=50, progress=False)
    try:
        assert trainer.env_id == f"dm_control/{task.replace('/', '-')}-v0"
        assert trainer.backend == "gymnasium"  # envpool has no dm_control ids of this form
        # the Dict of observations flattened into one vector
        assert trainer.envs.single_observation_space.shape == (observations,)
        assert trainer.envs.single_action_space.shape == (actions,)
        trainer.train(128, str(tmp_path))
    finally:
        trainer.close()
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evaluations = [e for e in events if "eval/return_mean" in e]
    assert [e["global_step"] for e in evaluations] == [64, 128]
    assert all(e["eval/length_mean"] == 50 and e["eval/cut_episodes"] == 1 for e in evaluations)
    assert (tmp_path / "vmpo_last.pt").exists()


def test_dm_control_tasks_train_with_the_continuous_control_preset():
    options = preset(_resolve_env_id("dm_control/cheetah/run"))
    assert options["total_steps"] == 1_000_000 and options["eval_every"] == 50_000
    assert options["policy_layer_sizes"] == (256, 256)  # from [continuous-control]


@pytest.mark.parametrize("env_id,named,suggested", [
    ("dm_control/cheetah/fly", "dm_control/cheetah-fly-v0", "dm_control/cheetah-run-v0"),
    ("dm_control/chetah/run", "dm_control/chetah-run-v0", "dm_control/cheetah-run-v0"),
])
def test_an_unknown_domain_or_task_is_named(env_id, named, suggested):
    with pytest.raises(ValueError, match=f"unknown environment id '{env_id}' "
                                         f"\\(gymnasium id '{named}'\\); did you mean "
                                         f".*'{suggested}'"):
        _resolve_env_id(env_id)
    result = train_cli("--env-id", env_id, "--total-steps", 64)
    assert result.returncode == 2
    assert f"--env-id: unknown environment id '{env_id}'" in result.stderr.splitlines()[-1]
