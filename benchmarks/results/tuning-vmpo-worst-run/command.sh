# the second study of V-MPO's continuous-control preset (docs/tuning.md#the-worst-run-study);
# run from the repository's root: the same command continues it. A trial's value is its worst
# run's score (--aggregate min) over seeds 1 and 7 of the five MuJoCo tasks, each scored
# against minerva's PPO at 1M (a score of 1 is that PPO's mean over seeds 2-6; Humanoid's 718
# is seeds 2-5, its mean when the study began, and the study keeps the references it began with).
python -m minerva.tune --env-ids HalfCheetah-v5 Hopper-v5 Walker2d-v5 Ant-v5 Humanoid-v5 \
  --seeds 1 7 --aggregate min --space vmpo-worst-run \
  --total-steps 300000 --eval-every 25000 --prune-after 125000 \
  --reference HalfCheetah-v5=1827 --reference Hopper-v5=3159 --reference Walker2d-v5=4162 \
  --reference Ant-v5=604 --reference Humanoid-v5=718 \
  --startup-trials 10 --pruner-startup-trials 5 --trials 60 --enqueue-preset \
  --study vmpo-worst-run --out-dir benchmarks/results/tuning-vmpo-worst-run
