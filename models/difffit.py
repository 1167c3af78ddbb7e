"""Difffit parameter-efficient fine-tuning (Xie et al., 2023) as the Minimax authors apply it to DiT."""
import torch.nn as nn

MODES = ("difffit", "bitfit", "full")


def is_difffit_param(name):
    """Biases, gammas and the class table train; everything else stays frozen."""
    return name.endswith(".bias") or "gamma" in name.rsplit(".", 1)[-1] or name == "y_embedder.embedding_table.weight"


def apply_difffit(model: nn.Module, gamma_blocks=None, mode="difffit"):
    """Freeze the model except what `mode` trains; returns the names of the trainable parameters.

    difffit: biases + class table + gammas (init 1) in `gamma_blocks` (default: the first half of the blocks).
    bitfit:  biases only.   full: every parameter except the fixed position embedding.
    """
    if mode not in MODES:
        raise ValueError(f"unknown fine-tuning mode '{mode}'; choose one of {', '.join(MODES)}")
    if mode == "difffit":
        depth = len(model.blocks)
        model.enable_gammas(range(depth // 2) if gamma_blocks is None else gamma_blocks)
    names = []
    for name, p in model.named_parameters():
        if mode == "full":
            train = name != "pos_embed"
        elif mode == "bitfit":
            train = name.endswith(".bias")
        else:
            train = is_difffit_param(name)
        p.requires_grad_(train)
        if train:
            names.append(name)
    return names


def trainable_state(model):
    """{name: tensor} of the parameters that require grad (what an adapter checkpoint holds)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def count_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
