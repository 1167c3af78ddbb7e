"""DiT, Difffit, diffusion math, VAE helpers, the minimax criterion and the evaluation classifiers."""
