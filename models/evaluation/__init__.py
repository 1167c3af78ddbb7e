"""The evaluation engine: a shared runner (data, results, repeats) and one module per protocol (idc)."""
from models.evaluation.runner import run_evaluation  # noqa: F401
