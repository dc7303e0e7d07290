"""PPO (Schulman et al. 2017): the clipped-surrogate control on V-MPO's machinery."""
