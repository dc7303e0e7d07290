# the study of V-MPO's M-step options (docs/tuning.md); run from the repository's root.
# It ran 60 trials with five more options in its space, removed since
# (docs/tuning.md#the-m-step-study): running it now is refused as another study.
# References: the 1M-step targets (a score of 1 reaches one).
python -m minerva.tune --env-ids Hopper-v5 Walker2d-v5 Ant-v5 --seeds 1 \
  --space vmpo-m-step --total-steps 300000 --eval-every 25000 --prune-after 125000 \
  --reference Hopper-v5=2500 --reference Walker2d-v5=3000 --reference Ant-v5=2500 \
  --startup-trials 10 --pruner-startup-trials 5 --trials 60 --enqueue-preset \
  --study vmpo-m-step --out-dir benchmarks/results/tuning-vmpo-m-step
