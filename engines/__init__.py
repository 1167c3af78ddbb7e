"""The three engines behind the entry scripts, each a package of the same shape: schema.py (its keys and the checks
across them, no torch), run.py (the work), state.py (what makes it resumable), and `main(argv)` in __init__.py, which
the entry script calls. train/ (train_minimax.py), sample/ (sample.py), evaluate/ (evaluate.py)."""
