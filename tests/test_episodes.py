"""minerva/episodes.py: evaluation episodes that never end are cut at a cap on their steps
(the evaluation's own argument, or the trainer's eval_max_steps) and counted as cut, so that
an evaluation cannot hang."""

import pytest
from faulty_env import register_faulty_env
from helpers import make_trainer

from minerva.trainers.vmpo.trainer import _evaluate_vectorized

pytest.importorskip("envpool")


def test_evaluation_cuts_episodes_that_never_end():
    env_id = register_faulty_env("Endless", at=None, length=None)
    trainer = make_trainer(env_id, "gymnasium", eval_max_steps=50)
    result = _evaluate_vectorized(trainer.agent, trainer.eval_envs, max_steps=30)
    assert result["eval/length_mean"] == 30 and result["eval/cut_episodes"] == 2
    result = trainer.evaluate()  # the trainer's own cap
    assert result["eval/length_mean"] == 50 and result["eval/cut_episodes"] == 2
    trainer.close()
