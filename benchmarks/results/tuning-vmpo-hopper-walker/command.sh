# the study of docs/tuning.md; run from the repository's root. Running it again continues it.
python -m minerva.tune --env-ids Hopper-v5 Walker2d-v5 --seeds 1 \
  --total-steps 300000 --eval-every 25000 --prune-after 100000 \
  --startup-trials 8 --pruner-startup-trials 4 --trials 40 --enqueue-preset \
  --study vmpo-hopper-walker --out-dir benchmarks/results/tuning-vmpo-hopper-walker
