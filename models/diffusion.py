"""Gaussian diffusion as DiT uses it: linear betas, epsilon prediction, learned-range variance, the hybrid loss
(MSE on eps + variational bound training only the variance channels), respacing, ancestral and DDIM steps.

Coefficients are computed in float64 (as the original) and cast to the input's dtype when indexed."""
import math

import numpy as np
import torch


def linear_betas(num_steps=1000, start=1e-4, end=0.02):
    scale = 1000 / num_steps  # the original's scaling, identity at 1000 steps
    return np.linspace(scale * start, scale * end, num_steps, dtype=np.float64)


def space_timesteps(num_steps, n):
    """n evenly spaced original timesteps, 0 and num_steps-1 included (50 of 1000 -> 0, 20, 41, ..., 999)."""
    if n == num_steps:
        return list(range(num_steps))
    if not 1 < n <= num_steps:
        raise ValueError(f"cannot respace {num_steps} steps to {n}; choose 2..{num_steps}")
    stride = (num_steps - 1) / (n - 1)
    return [round(i * stride) for i in range(n)]


def ddim_counts(num_steps):
    """The step counts n that DiT/ADM's "ddimN" respacing can make from num_steps (one integer stride each)."""
    return sorted({len(range(0, num_steps, s)) for s in range(1, num_steps)})


def space_timesteps_ddim(num_steps, n):
    """DiT/ADM's "ddimN" respacing (diffusion/respace.py), which DDIM samplers there use (MGD³'s too): the timesteps
    0, s, 2s, ... < num_steps for the smallest integer stride s giving exactly n of them (20 of 1000 -> 0, 50, ...,
    950; 50 -> 0, 20, ..., 980). num_steps - 1 is kept only when s = 1. Most n have no such stride (37, 41, ...)."""
    for s in range(1, num_steps):
        if len(range(0, num_steps, s)) == n:
            return list(range(0, num_steps, s))
    near = min(ddim_counts(num_steps), key=lambda c: (abs(c - n), c))
    raise ValueError(f"no integer stride gives exactly {n} DDIM steps of {num_steps} (DiT's ddim{n} respacing); "
                     f"the nearest count that does is {near}")


SPACINGS = ("even", "ddim")  # respaced(n, spacing): DiT's "N" (create_diffusion(str(n))) | DiT's "ddimN"


def mean_flat(x):
    return x.mean(dim=list(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N1 || N2) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of x in [-1, 1] discretised to 256 bins (the decoder term at t = 0)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


class Diffusion:
    """A (possibly respaced) diffusion process. `timesteps[i]` is the original timestep fed to the model at step i."""

    def __init__(self, betas, timesteps=None):
        self.betas = betas = np.asarray(betas, dtype=np.float64)
        self.num_steps = len(betas)
        self.timesteps = list(range(self.num_steps)) if timesteps is None else list(timesteps)
        ac = np.cumprod(1.0 - betas)
        ac_prev = np.append(1.0, ac[:-1])
        self.alphas_cumprod, self.alphas_cumprod_prev = ac, ac_prev
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        self.posterior_variance = post_var
        # log of the posterior variance with the t = 0 entry (0) replaced by the t = 1 entry
        self.posterior_log_variance_clipped = np.log(np.append(post_var[1], post_var[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(ac_prev) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac)
        self.sqrt_ac, self.sqrt_1m_ac = np.sqrt(ac), np.sqrt(1.0 - ac)
        self.sqrt_recip_ac, self.sqrt_recipm1_ac = np.sqrt(1.0 / ac), np.sqrt(1.0 / ac - 1)
        self.log_betas = np.log(betas)
        self._t = {}

    @classmethod
    def linear(cls, num_steps=1000):
        return cls(linear_betas(num_steps))

    def respaced(self, n, spacing="even"):
        """Keep n steps, betas recomputed from the kept cumulative alphas. spacing "even": round(linspace(0, T-1, n))
        (DiT's create_diffusion(str(n)), its sampling default); "ddim": DiT's "ddimN" stride (space_timesteps_ddim)."""
        if spacing not in SPACINGS:
            raise ValueError(f"unknown spacing '{spacing}'; choose one of {', '.join(SPACINGS)}")
        keep = (space_timesteps if spacing == "even" else space_timesteps_ddim)(self.num_steps, n)
        last, betas = 1.0, []
        for i in keep:
            betas.append(1.0 - self.alphas_cumprod[i] / last)
            last = self.alphas_cumprod[i]
        return Diffusion(np.array(betas), [self.timesteps[i] for i in keep])

    def _coef(self, name, t, x):
        """Coefficient array `name` at integer steps t (N,), broadcast to x's shape and dtype."""
        key = (name, x.device)
        if key not in self._t:
            self._t[key] = torch.from_numpy(getattr(self, name)).to(x.device)
        return self._t[key][t].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))

    def model_timesteps(self, i, n, device):
        """The original timestep the model sees at step i, for a batch of n."""
        return torch.full((n,), self.timesteps[i], dtype=torch.long, device=device)

    ####################################### forward process and x0 ######################################
    def q_sample(self, x0, t, noise):
        return self._coef("sqrt_ac", t, x0) * x0 + self._coef("sqrt_1m_ac", t, x0) * noise

    def predict_x0(self, xt, t, eps):
        """x0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps."""
        return self._coef("sqrt_recip_ac", t, xt) * xt - self._coef("sqrt_recipm1_ac", t, xt) * eps

    def q_posterior(self, x0, xt, t):
        """Mean and log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._coef("posterior_mean_coef1", t, xt) * x0 + self._coef("posterior_mean_coef2", t, xt) * xt
        return mean, self._coef("posterior_log_variance_clipped", t, xt)

    def p_mean_variance(self, model_out, xt, t):
        """From the model's (N, 2C) output: mean, log-variance (learned range) and predicted x0 of p(x_{t-1}|x_t)."""
        eps, v = model_out.chunk(2, dim=1)
        min_log = self._coef("posterior_log_variance_clipped", t, xt)
        max_log = self._coef("log_betas", t, xt)
        frac = (v + 1) / 2  # v in [-1, 1] interpolates between the two variance bounds
        log_var = frac * max_log + (1 - frac) * min_log
        x0 = self.predict_x0(xt, t, eps)
        mean, _ = self.q_posterior(x0, xt, t)
        return mean, log_var, x0

    ################################################ loss ###############################################
    def training_losses(self, model, x0, t, y, noise):
        """DiT's hybrid loss per sample: MSE(eps) + VB term (in bits) whose gradient reaches only the variance
        channels. Also returns pred_x0 from the eps half, with gradient, for the minimax criteria."""
        xt = self.q_sample(x0, t, noise)
        out = model(xt, t, y)  # (N, 2C, H, W)
        eps, v = out.chunk(2, dim=1)
        frozen = torch.cat([eps.detach(), v], dim=1)  # the VB term must not move the mean
        true_mean, true_logvar = self.q_posterior(x0, xt, t)
        mean, log_var, _ = self.p_mean_variance(frozen, xt, t)
        kl = mean_flat(normal_kl(true_mean, true_logvar, mean, log_var)) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        mse = mean_flat((noise - eps) ** 2)
        return {"loss": mse + vb, "mse": mse, "vb": vb, "pred_x0": self.predict_x0(xt, t, eps), "xt": xt}

    ############################################## sampling #############################################
    def p_step(self, model_out, x, i, noise, mode=None, mode_scale=0.0):
        """One ancestral step from step i with the given noise: x_{i-1} = mean + sigma * noise (no noise at i=0).
        No x0 clipping (latent space). With a mode m (N, C, H, W), MGD³'s mode guidance:
        x_{i-1} = mean + g + sigma * noise, g = -mode_scale * sigma * (x0_hat - m), x0_hat from the same eps."""
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        mean, log_var, x0 = self.p_mean_variance(model_out, x, t)
        if i == 0:
            return mean  # the last step adds no noise
        sigma = torch.exp(0.5 * log_var)
        if mode is not None:
            mean = mean - mode_scale * sigma * (x0 - mode)
        return mean + sigma * noise

    def ddim_step(self, model_out, x, i, noise=None, eta=0.0, mode=None, mode_scale=0.0):
        """One DDIM step from step i (eta = 0: deterministic). With a mode m, MGD³'s guided DDIM step (its
        ddim_sample_with_mode_guidance): x0_hat moves by -mode_scale * (x0_hat - m), then eps is re-derived from the
        moved x0 and x_t, eps' = (sqrt(1/abar_t) x_t - x0') / sqrt(1/abar_t - 1), and the step uses both; at eta 0
        the net move of x_{t-1} is -mode_scale (x0_hat - m) (sqrt(abar_prev) - sqrt(abar_t (1 - abar_prev) /
        (1 - abar_t)))."""
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        eps = model_out.chunk(2, dim=1)[0] if model_out.shape[1] == 2 * x.shape[1] else model_out
        x0 = self.predict_x0(x, t, eps)
        if mode is not None and mode_scale != 0:  # lambda 0 is no guidance: eps stays the model's, bit for bit
            x0 = x0 - mode_scale * (x0 - mode)
            eps = (self._coef("sqrt_recip_ac", t, x) * x - x0) / self._coef("sqrt_recipm1_ac", t, x)
        ab = self._coef("alphas_cumprod", t, x)
        ab_prev = self._coef("alphas_cumprod_prev", t, x)
        sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
        mean = x0 * torch.sqrt(ab_prev) + torch.sqrt(1 - ab_prev - sigma ** 2) * eps
        if noise is None or i == 0 or eta == 0:
            return mean
        return mean + sigma * noise
