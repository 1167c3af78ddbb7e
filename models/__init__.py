"""DiT, Difffit, diffusion math, VAE helpers, the minimax criterion, the evaluation classifiers, and the three engines
(trainer, sampling, evaluation)."""
