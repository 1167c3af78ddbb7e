"""Gaussian diffusion against references written here from SPEC §4 in float64, and against diffusers' schedulers
(DDPMScheduler with learned_range variance, DDIMScheduler) run on the same respaced betas."""
import numpy as np
import pytest
import torch

from models.diffusion import Diffusion

T = 1000


def reference(n):
    """Independent float64 respaced process: kept timesteps, their cumulative alphas and recomputed betas."""
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    abar = np.cumprod(1 - betas)
    keep = np.round(np.linspace(0, T - 1, n)).astype(int)
    ab = abar[keep]
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    return keep, ab, ab_prev, 1 - ab / ab_prev


def ref_step(model_out, x, i, ab, ab_prev, beta):
    """Mean, log-variance (learned range) of p(x_{i-1} | x_i) from the formulas (DDPM eq. 7, Nichol & Dhariwal)."""
    eps, v = model_out.chunk(2, dim=1)
    post_var = beta * (1 - ab_prev) / (1 - ab)
    min_log = np.log(post_var[1] if i == 0 else post_var[i])  # clipped: step 0's zero variance -> step 1's
    frac = (v + 1) / 2
    log_var = frac * np.log(beta[i]) + (1 - frac) * min_log
    x0 = (x - np.sqrt(1 - ab[i]) * eps) / np.sqrt(ab[i])
    mean = np.sqrt(ab_prev[i]) * beta[i] / (1 - ab[i]) * x0 + np.sqrt(1 - beta[i]) * (1 - ab_prev[i]) / (1 - ab[i]) * x
    return mean, log_var


def _ddim_keep(n, T=T):
    """DiT/ADM's space_timesteps(T, "ddimN") restated: the first stride s = 1, 2, ... with len(range(0, T, s)) == n."""
    for s in range(1, T):
        if -(-T // s) == n:  # len(range(0, T, s)) = ceil(T / s)
            return np.arange(0, T, s)
    return None


@pytest.mark.parametrize("n", [2, 3, 7, 20, 25, 36, 50, 100, 250])
def test_ddim_respacing_is_dits_stride(n):
    d = Diffusion.linear(T).respaced(n, "ddim")
    keep = _ddim_keep(n)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, T, dtype=np.float64))
    assert d.timesteps == keep.tolist() and len(keep) == n
    assert np.allclose(d.alphas_cumprod, abar[keep], rtol=1e-12)
    assert np.allclose(d.betas, 1 - abar[keep] / np.append(1.0, abar[keep][:-1]), rtol=1e-12)
    if n == 20:
        assert d.timesteps[:3] == [0, 50, 100] and d.timesteps[-1] == 950  # not 999: no step at pure noise
        assert Diffusion.linear(T).respaced(20).timesteps[-1] == 999  # even spacing (the ancestral default) keeps it


def test_ddim_respacing_refuses_counts_without_a_stride():
    assert _ddim_keep(37) is None
    with pytest.raises(ValueError, match="no integer stride gives exactly 37 DDIM steps of 1000.*nearest count that "
                                         "does is 36"):
        Diffusion.linear(T).respaced(37, "ddim")
    with pytest.raises(ValueError, match="unknown spacing"):
        Diffusion.linear(T).respaced(20, "linspace")


def test_respacing_50():
    d = Diffusion.linear(T).respaced(50)
    keep, ab, _, beta = reference(50)
    assert d.timesteps == keep.tolist() and d.timesteps[:3] == [0, 20, 41] and d.timesteps[-1] == 999
    assert np.allclose(d.betas, beta, rtol=1e-12) and np.allclose(d.alphas_cumprod, ab, rtol=1e-12)


@pytest.mark.parametrize("i", [0, 1, 25, 49])
def test_ancestral_step_matches_reference(i):
    d = Diffusion.linear(T).respaced(50)
    _, ab, ab_prev, beta = reference(50)
    g = torch.Generator().manual_seed(i)
    x = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64)
    out = torch.cat([torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64),
                     torch.rand(2, 4, 4, 4, generator=g, dtype=torch.float64) * 2 - 1], 1)
    noise = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64)
    mean_ref, logvar_ref = ref_step(out, x, i, ab, ab_prev, beta)
    mean, log_var, _ = d.p_mean_variance(out, x, torch.full((2,), i))
    assert torch.allclose(mean, mean_ref, rtol=1e-10, atol=1e-12)
    assert torch.allclose(log_var, logvar_ref, rtol=1e-10, atol=1e-12)
    step_ref = mean_ref + (i > 0) * torch.exp(0.5 * logvar_ref) * noise
    assert torch.allclose(d.p_step(out, x, i, noise), step_ref, rtol=1e-10, atol=1e-12)
    step32 = d.p_step(out.float(), x.float(), i, noise.float())  # the dtype sampling runs in
    assert ((step32.double() - step_ref).norm() / step_ref.norm()) < 1e-5


def test_q_sample_predict_x0_round_trip():
    d = Diffusion.linear(T)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(4, 4, 8, 8, generator=g,
                                                                                        dtype=torch.float64)
    t = torch.tensor([0, 1, 500, 999])
    xt = d.q_sample(x0, t, noise)
    assert torch.allclose(d.predict_x0(xt, t, noise), x0, atol=1e-9)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, T))[t.numpy()]
    assert torch.allclose(xt, torch.from_numpy(np.sqrt(abar))[:, None, None, None] * x0
                          + torch.from_numpy(np.sqrt(1 - abar))[:, None, None, None] * noise, atol=1e-12)


def test_loss_terms_train_their_own_channels():
    d = Diffusion.linear(T)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 4, 8, 8, generator=g)
    noise = torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 3, 500, 999])  # t = 0 uses the decoder NLL branch
    out = torch.randn(4, 8, 8, 8, generator=g).mul(0.5).requires_grad_()
    losses = d.training_losses(lambda xt, tt, y: out, x0, t, None, noise)
    g_vb, = torch.autograd.grad(losses["vb"].sum(), out, retain_graph=True)
    g_mse, = torch.autograd.grad(losses["mse"].sum(), out, retain_graph=True)
    assert torch.count_nonzero(g_vb[:, :4]) == 0 and g_vb[:, 4:].abs().sum() > 0  # VB: variance channels only
    assert torch.count_nonzero(g_mse[:, 4:]) == 0 and g_mse[:, :4].abs().sum() > 0  # MSE: eps channels only
    assert torch.allclose(losses["loss"], losses["mse"] + losses["vb"])
    assert torch.allclose(losses["mse"], (noise - out[:, :4]).square().mean((1, 2, 3)))


def _fake_model(x, i):
    """A deterministic stand-in for DiT: eps and variance (in [-1, 1]) depending on x and the step."""
    return torch.cat([0.3 * x + 0.1 * np.sin(i), torch.tanh(x + i / 50)], 1)


def test_ancestral_sampling_equals_diffusers_ddpm():
    """diffusers' DDPMScheduler(learned_range) on the respaced betas computes the same trajectory: its
    log-variance at step 0 differs (log 1e-20 vs clipped) but step 0 adds no noise."""
    from diffusers import DDPMScheduler
    d = Diffusion.linear(T).respaced(50)
    sched = DDPMScheduler(num_train_timesteps=50, trained_betas=d.betas, variance_type="learned_range",
                          clip_sample=False, prediction_type="epsilon")
    sched.set_timesteps(50)
    assert sched.timesteps.tolist() == list(range(49, -1, -1))
    x0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    ours, theirs = x0.clone(), x0.clone()
    g_ours, g_theirs = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for i in range(49, -1, -1):
        noise = torch.randn(ours.shape, generator=g_ours) if i > 0 else torch.zeros_like(ours)
        ours = d.p_step(_fake_model(ours, i), ours, i, noise)
        theirs = sched.step(_fake_model(theirs, i), i, theirs, generator=g_theirs).prev_sample
    assert ((ours - theirs).norm() / theirs.norm()) < 1e-4  # float32 cumprod in diffusers vs float64 here


def test_ddim_eta0_deterministic_and_equals_diffusers():
    from diffusers import DDIMScheduler
    d = Diffusion.linear(T).respaced(50)
    sched = DDIMScheduler(num_train_timesteps=50, trained_betas=d.betas, clip_sample=False, set_alpha_to_one=True,
                          prediction_type="epsilon")
    sched.set_timesteps(50)
    x0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    runs = []
    for seed in (1, 2):  # different noise offered, eta = 0 ignores it
        x, g = x0.clone(), torch.Generator().manual_seed(seed)
        for i in range(49, -1, -1):
            x = d.ddim_step(_fake_model(x, i), x, i, noise=torch.randn(x.shape, generator=g), eta=0.0)
        runs.append(x)
    assert torch.equal(runs[0], runs[1])
    theirs = x0.clone()
    for i in range(49, -1, -1):
        theirs = sched.step(_fake_model(theirs, i)[:, :4], i, theirs, eta=0.0).prev_sample
    assert ((runs[0] - theirs).norm() / theirs.norm()) < 1e-4
