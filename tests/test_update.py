"""minerva/trainers/update.py's checks on an update's results: losses or gradient norms that
come out NaN or infinite are named (with the span of the returns behind them), and the
failed rollout is neither saved nor fed to the observation normaliser."""

import pytest
from faulty_env import register_faulty_env
from helpers import make_trainer

from minerva.errors import NonFiniteError

pytest.importorskip("envpool")


def test_an_update_with_non_finite_losses_names_them(tmp_path):
    env_id = register_faulty_env("HugeRewards", where="reward", at=None, reward=1e30)
    trainer = make_trainer(env_id, "gymnasium", normalize_rewards=False, eval_every=10_000)
    with pytest.raises(NonFiniteError, match=r"losses/value = inf.*returns span \[1e\+30"):
        trainer.train(1024, str(tmp_path))
    assert not (tmp_path / "vmpo_last.pt").exists()
    assert trainer.agent.obs_normalizer.count.item() == 0  # not fed the failed rollout
    trainer.close()
