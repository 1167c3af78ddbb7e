"""What the minimax losses aim at, measured on a finished image set in a feature space (paper Table 2, Sec. 3).

Three numbers per set, each computed per class and averaged over classes, on features of a network trained on
the real train split (evaluation.feature_net):
  mmd  - ||mean_syn - mean_real||_2 of the raw features (the paper's Table 2 measure; feature_mmd's linear kernel):
         is the set's centre where the real class's centre is?
  rep  - representativeness as coverage: mean over the REAL images of a class of the cosine distance (1 - cos) to
         their nearest generated image of that class. Eq. 3 pulls the prediction least similar to the real memory
         toward it; a set that covers every mode of the class leaves no real image far from all samples. Lower is
         better; 0 when every real image is in the set.
  div  - diversity: mean cosine over the distinct pairs of generated images within a class (Eq. 4 pushes the most
         similar pair apart). Lower is more diverse; 1 for copies of one image.
Cosines are taken after subtracting the mean real feature: penultimate features of a ReLU network are all
non-negative, so raw cosines crowd near 1 and hide the differences these measures are for.
"""
import torch

from data.eval_select import feature_mmd

KEYS = ("mmd_linear", "mmd_rbf", "rep", "div", "mmd_linear_per_class", "rep_per_class", "div_per_class")


def _unit(x, eps=1e-12):
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def coverage_and_diversity(syn, syn_labels, real, real_labels, num_classes):
    """{"rep", "div", "rep_per_class", "div_per_class"} of syn (n, d) against real (m, d); labels 0..K-1."""
    syn, real = syn.double(), real.double()
    centre = real.mean(0)  # (d,) over every class: one fixed origin for every set measured against this split
    syn_u, real_u = _unit(syn - centre), _unit(real - centre)
    rep, div = [], []
    for c in range(num_classes):
        a, b = syn_u[syn_labels == c], real_u[real_labels == c]  # (n_c, d), (m_c, d)
        if a.shape[0] < 2 or b.shape[0] < 1:
            raise ValueError(f"class {c}: {a.shape[0]} set images and {b.shape[0]} real ones; the measures need "
                             f">= 2 set images and >= 1 real image per class")
        rep.append(float((1 - (b @ a.T).max(1).values).mean()))  # each real image to its nearest set image
        g = a @ a.T  # (n_c, n_c)
        n = a.shape[0]
        div.append(float((g.sum() - g.diagonal().sum()) / (n * (n - 1))))  # distinct pairs only
    return {"rep": sum(rep) / len(rep), "div": sum(div) / len(div), "rep_per_class": rep, "div_per_class": div}


def set_measures(syn, syn_labels, real, real_labels, num_classes):
    """MMD (linear and RBF), representativeness and diversity of a feature set against the real features."""
    out = feature_mmd(syn, syn_labels, real, real_labels, num_classes)
    out.update(coverage_and_diversity(syn, syn_labels, real, real_labels, num_classes))
    return out
