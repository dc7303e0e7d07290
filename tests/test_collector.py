"""minerva/collector.py's checks on what the envs give: a NaN or an infinity in an
observation or a reward (or a float64 beyond float32's range) is named, with the env and the
step of the rollout, before anything is trained on, saved or fed to the reward scaler."""

import pytest
import torch
from faulty_env import register_faulty_env
from helpers import make_trainer

from minerva.errors import NonFiniteError

pytest.importorskip("envpool")


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
    env_id = register_faulty_env("Faulty" + "".join(c if c.isalnum() else "_" for c in name),
                                 **kwargs)
    trainer = make_trainer(env_id, "gymnasium", eval_every=10_000)
    with pytest.raises(NonFiniteError, match=message):
        trainer.train(1024, str(tmp_path))
    # nothing was saved, and the reward scaler's statistics were never fed the bad values
    assert not (tmp_path / "vmpo_last.pt").exists()
    assert torch.isfinite(trainer.reward_scaler.return_stats.var).all()
    trainer.close()
