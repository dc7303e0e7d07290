"""V-MPO (Song et al. 2019): the trainer whose API the seed fixes."""
