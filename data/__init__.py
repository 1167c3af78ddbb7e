"""Subsets, image folders, transforms and the latent cache."""
