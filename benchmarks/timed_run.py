"""One timed training run in a fresh process, for the benchmarks that compare two
installations of minerva (``peers.py throughput``, ``speed.py busy``):

    python benchmarks/timed_run.py '{"env_id": "HalfCheetah-v5", "steps": 65536, "num_envs": 8}'

The JSON holds ``env_id``, ``steps`` and any ``TrainConfig`` options (on top of the env's
preset). Evaluation happens only after the last update and is left out of the clock, as is
``torch.compile``'s compile time when the run has one. Prints one JSON object: steps,
seconds, ``steps_per_second``, the seconds per phase, and the compile seconds. It uses only
what every minerva release has (``TrainConfig``, ``preset``, ``VMPOTrainer``), so an older
installation can run it too.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

from minerva.config import TrainConfig
from minerva.presets import preset
from minerva.trainers.vmpo.trainer import VMPOTrainer


def timed_run(options: dict) -> dict:
    options = dict(options)
    steps = options.pop("steps")
    config = {**preset(options["env_id"]), **options, "total_steps": steps,
              "eval_every": 10 * steps, "eval_episodes": 1, "target_return": None,
              "progress": False}
    trainer = VMPOTrainer.from_config(TrainConfig(**config))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        trainer.train(steps, out)
        seconds = time.perf_counter() - start
    trainer.close()
    phases = dict(trainer.timer.seconds)
    compile_seconds = trainer.algorithm.compile_seconds
    phases["update"] -= compile_seconds  # compiling happens in the first steps of an update
    seconds -= phases.pop("evaluation", 0.0) + compile_seconds
    return {"steps": trainer.global_step, "seconds": seconds,
            "steps_per_second": trainer.global_step / seconds, "phases": phases,
            "compile_seconds": compile_seconds}


if __name__ == "__main__":
    print(json.dumps(timed_run(json.loads(sys.argv[1]))))
