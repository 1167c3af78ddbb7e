"""The networks and their math: DiT, Difffit, diffusion, the VAE helpers, the minimax criterion, the evaluation
classifiers, and weight loading. Nothing here imports an engine or a schema."""

# models.dit.DiT_models' names, spelt out so that validation runs without torch (tests/test_schema.py: equal)
DIT_NAMES = tuple(f"DiT-{s}/{p}" for s in ("XL", "L", "B", "S", "T") for p in (2, 4, 8))
