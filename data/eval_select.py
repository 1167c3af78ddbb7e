"""Coreset baselines (random, herding, k-center) and feature MMD (paper Tables 1 and 2), on feature matrices."""
import torch


def random_select(n, k, generator):
    """k distinct indices of n, in draw order."""
    return torch.randperm(n, generator=generator)[:k].tolist()


def herding(feats, k):
    """Welling's herding: greedily add the sample that keeps the running mean closest to the class mean."""
    feats = feats.double()  # (n, d)
    mu = feats.mean(0)
    chosen, total = [], torch.zeros_like(mu)
    free = torch.ones(feats.shape[0], dtype=torch.bool)
    for step in range(1, k + 1):
        dist = ((mu - (total + feats) / step) ** 2).sum(1)  # (n,) distance of the mean if each were added
        dist[~free] = float("inf")
        i = int(torch.argmin(dist))
        chosen.append(i)
        free[i] = False
        total += feats[i]
    return chosen


def kcenter(feats, k):
    """Greedy k-center: start at the sample nearest the class mean, then repeatedly add the farthest sample."""
    feats = feats.double()  # (n, d)
    first = int(torch.argmin(((feats - feats.mean(0)) ** 2).sum(1)))
    chosen = [first]
    mind = ((feats - feats[first]) ** 2).sum(1)  # (n,) squared distance to the nearest centre
    for _ in range(k - 1):
        i = int(torch.argmax(mind))
        chosen.append(i)
        mind = torch.minimum(mind, ((feats - feats[i]) ** 2).sum(1))
    return chosen


def _rbf_mmd2(a, b, sigma):
    def k(x, y):
        return torch.exp(-torch.cdist(x, y) ** 2 / (2 * sigma ** 2))
    return float(k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean())


def feature_mmd(syn, syn_labels, real, real_labels, num_classes):
    """Per-class MMD averaged over classes: linear kernel ||mean_syn - mean_real||_2 (DM's objective) and the
    biased RBF MMD^2 with the median-distance bandwidth of the real features."""
    lin, rbf = [], []
    syn, real = syn.double(), real.double()
    for c in range(num_classes):
        a, b = syn[syn_labels == c], real[real_labels == c]  # (n_syn, d), (n_real, d)
        lin.append(float((a.mean(0) - b.mean(0)).norm()))
        sub = b[:1000]
        sigma = float(torch.cdist(sub, sub).median().clamp_min(1e-8))
        rbf.append(_rbf_mmd2(a, b, sigma))
    return {"mmd_linear": sum(lin) / len(lin), "mmd_rbf": sum(rbf) / len(rbf), "mmd_linear_per_class": lin}
