"""IDC training augmentation, batched on the device (GPU path) and per sample with PIL (reference path).

Both paths share the tensor ops (colour jitter in random order, PCA lighting, normalisation), draw crops from the
same distribution (torchvision's RandomResizedCrop rule) and compute each crop as torchvision's resized_crop
(crop, then antialiased bilinear resize); only the execution (batched vs per sample) and the random streams differ.
"""
import math

import torch
from torchvision import transforms as T

from data.folder import load_rgb

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)  # ImageNet RGB covariance eigenvalues (AlexNet lighting noise)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
              (-0.5808, -0.0045, -0.8140),
              (-0.5836, -0.6948, 0.4203))
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = 0.4
LIGHTING_STD = 0.1


def _rand(shape, generator, device):
    return torch.rand(shape, generator=generator, device=device)


#### Crops ###################################################################################################

def sample_crops(n, height, width, generator=None, device="cpu", scale=CROP_SCALE, ratio=CROP_RATIO, tries=10):
    """RandomResizedCrop boxes for n samples at once -> (top, left, h, w) int64 tensors of shape (n,).

    Same rule as torchvision: up to 10 draws of (area fraction ~ U(scale), log-ratio ~ U(log ratio)); the first
    box that fits wins; otherwise the whole image clamped to the ratio range, centred."""
    area = height * width
    frac = scale[0] + (scale[1] - scale[0]) * _rand((n, tries), generator, device)
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * _rand((n, tries), generator, device)
    ar = torch.exp(logr)
    w = torch.round(torch.sqrt(area * frac * ar))  # (n, tries)
    h = torch.round(torch.sqrt(area * frac / ar))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(ok.int(), dim=1)  # first fitting try (0 when none fits; masked below)
    any_ok = ok.any(dim=1)
    w = w.gather(1, first[:, None]).squeeze(1)
    h = h.gather(1, first[:, None]).squeeze(1)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    w = torch.where(any_ok, w, torch.full_like(w, fw)).long()
    h = torch.where(any_ok, h, torch.full_like(h, fh)).long()
    u = _rand((n, 2), generator, device)
    top = torch.where(any_ok, torch.floor(u[:, 0] * (height - h + 1)).long(), (height - h) // 2)
    left = torch.where(any_ok, torch.floor(u[:, 1] * (width - w + 1)).long(), (width - w) // 2)
    return top, left, h, w


def resample_weights(start, length, in_size, size):
    """Per sample, the (size, in_size) matrix of torch's antialiased bilinear resize (`F.interpolate(...,
    antialias=True)`, torchvision's `resize(antialias=True)`) of the window [start, start + length) to `size`
    pixels -> (B, size, in_size) float32.

    The rule (PIL's, which torch follows): scale = length / size, output i centred at scale (i + 0.5) in the
    window, triangle filter of half-width max(scale, 1) stretched by max(scale, 1), taps clipped to the window
    (edge clamping) and renormalised. Upsampling (scale <= 1) is plain bilinear with clamped borders; pixels
    outside the window never contribute."""
    start, length = start.double()[:, None, None], length.double()[:, None, None]  # (B, 1, 1)
    scale = length / size
    support = scale.clamp(min=1.0)  # half-width of the filter in source pixels
    centre = scale * (torch.arange(size, dtype=torch.float64, device=start.device)[None, :, None] + 0.5)
    rel = torch.arange(in_size, dtype=torch.float64, device=start.device)[None, None, :] - start  # (B, 1, in)
    w = (1.0 - ((rel + 0.5 - centre) / support).abs()).clamp(min=0.0)  # (B, size, in)
    w = w * ((rel >= 0) & (rel < length))
    return (w / w.sum(-1, keepdim=True)).float()


def crop_resize(x, top, left, h, w, size):
    """Crop each sample's box, then resize it to size x size with antialiased bilinear interpolation: torchvision's
    `resized_crop(x, top, left, h, w, [size, size], antialias=True)` per sample (RandomResizedCrop), batched as two
    matrix products (horizontal pass first, as torch's). Only pixels inside the box contribute. Within 2e-7 of
    torchvision in float64 (torchvision's own float32 kernel is 1.6e-5 off it), tested; on CUDA as long as TF32
    matmuls stay off (PyTorch's default, which evaluate.py keeps)."""
    wx = resample_weights(left, w, x.shape[3], size).to(x.dtype)  # (B, size, W)
    wy = resample_weights(top, h, x.shape[2], size).to(x.dtype)  # (B, size, H)
    x = torch.matmul(x, wx.transpose(1, 2)[:, None])  # (B, C, H, size)
    return torch.matmul(wy[:, None], x)  # (B, C, size, size)


#### Colour ##################################################################################################

def _gray(x):
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])  # (B, 1, H, W)


def color_jitter(x, strength=JITTER, generator=None):
    """Brightness, contrast, saturation, each `x.lerp(target, a)` with a ~ U(-s, s), in a random order per sample."""
    b = x.shape[0]
    alpha = (2 * _rand((b, 3), generator, x.device) - 1) * strength  # (B, op)
    order = torch.argsort(_rand((b, 3), generator, x.device), dim=1)  # (B, 3) a permutation per sample
    for k in range(3):
        gray = _gray(x)
        targets = (torch.zeros_like(x),                                     # brightness: towards black
                   gray.mean(dim=(1, 2, 3), keepdim=True).expand_as(x),     # contrast: towards mean grey
                   gray.expand_as(x))                                       # saturation: towards greyscale
        op = order[:, k].view(b, 1, 1, 1)
        a = alpha.gather(1, order[:, k:k + 1]).view(b, 1, 1, 1)
        target = torch.where(op == 0, targets[0], torch.where(op == 1, targets[1], targets[2]))
        x = x + a * (target - x)
    return x


def lighting(x, alphastd=LIGHTING_STD, generator=None):
    """AlexNet PCA lighting noise: add eigvec @ (alpha * eigval), alpha ~ N(0, alphastd), per sample."""
    b = x.shape[0]
    alpha = torch.randn((b, 3), generator=generator, device=x.device) * alphastd
    vec = torch.tensor(PCA_EIGVEC, device=x.device, dtype=x.dtype)  # (3 rgb, 3 components)
    val = torch.tensor(PCA_EIGVAL, device=x.device, dtype=x.dtype)
    rgb = (vec[None] * (alpha * val)[:, None, :]).sum(-1)  # (B, 3)
    return x + rgb.view(b, 3, 1, 1)


def normalize(x):
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


#### Batched (device-resident) path ##########################################################################

def gpu_train_batch(images, size, generator=None):
    """uint8 (B, 3, S0, S0) on the device -> augmented, normalised float (B, 3, size, size)."""
    b, _, hgt, wid = images.shape
    x = images.float().div_(255)
    top, left, h, w = sample_crops(b, hgt, wid, generator, x.device)
    x = crop_resize(x, top, left, h, w, size)  # (B, 3, size, size)
    flip = _rand((b,), generator, x.device) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    x = lighting(color_jitter(x, generator=generator), generator=generator)
    return normalize(x)


def gpu_test_batch(images):
    """uint8 (B, 3, S, S) already resized and centre-cropped -> normalised float."""
    return normalize(images.float().div_(255))


#### RDED soft-label protocol (SPEC §9) #####################################################################

def _strip_order(n, factor, length, generator, device, remainder="drop", order=None):
    """Per image, the source index of each output position after shuffling `factor` strips -> (n, out) int64.
    remainder "drop" (RDED's): strips of length // factor, the rest of an odd side is cut off (out = factor *
    (length // factor)); "keep": the last strip also takes the remainder (out = length). `order` (n, factor) forces
    the strip permutation (default: a uniform random one per image, as RDED's random.shuffle)."""
    base = length // factor
    sizes = torch.full((factor,), base, device=device)
    if remainder == "keep":
        sizes[-1] = length - base * (factor - 1)
    starts = torch.cumsum(sizes, 0) - sizes  # (factor,) where each strip begins in the source
    if order is None:
        order = torch.argsort(_rand((n, factor), generator, device), dim=1)  # (n, factor) a random strip order
    out_sizes = sizes[order]  # (n, factor)
    out_ends = torch.cumsum(out_sizes, 1)  # (n, factor) where each placed strip ends in the output
    total = int(sizes.sum())
    pos = torch.arange(total, device=device).expand(n, total).contiguous()
    slot = torch.searchsorted(out_ends, pos, right=True)  # (n, out) which placed strip holds each position
    offset = pos - (out_ends - out_sizes).gather(1, slot)
    return starts[order.gather(1, slot)] + offset


def shuffle_patches(x, factor, generator=None, remainder="drop", orders=None):
    """RDED's ShufflePatches per image: cut the width into `factor` strips and permute them at random, then the
    same for the height (factor 2: swap the column halves or not, then the row halves or not). remainder "drop"
    (RDED's) cuts the last W % factor columns and H % factor rows off, so an odd side shrinks by one at factor 2;
    "keep" gives them to the last strip. (RDED's code keeps them in the one case where a strip is 1 px wide, a slip
    of its index test; not reproduced.) `orders` = (column order, row order), each (B, factor), forces the draws."""
    if factor <= 1:
        return x
    b, c, hgt, wid = x.shape
    cols = _strip_order(b, factor, wid, generator, x.device, remainder, None if orders is None else orders[0])
    x = x.gather(3, cols[:, None, None, :].expand(b, c, hgt, cols.shape[1]))  # (B, C, H, W')
    rows = _strip_order(b, factor, hgt, generator, x.device, remainder, None if orders is None else orders[1])
    return x.gather(2, rows[:, None, :, None].expand(b, c, rows.shape[1], x.shape[3]))  # (B, C, H', W')


def rded_train_batch(images, size, factor, scale, generator=None):
    """uint8 (B, 3, S0, S0) on the device -> ShufflePatches(factor) -> RandomResizedCrop(size, scale) -> flip ->
    normalise, per image (SPEC §9). CutMix is per batch, after this."""
    b = images.shape[0]
    x = shuffle_patches(images.float().div_(255), factor, generator)
    top, left, h, w = sample_crops(b, x.shape[2], x.shape[3], generator, x.device, scale=scale)
    x = crop_resize(x, top, left, h, w, size)  # (B, 3, size, size)
    flip = _rand((b,), generator, x.device) < 0.5
    return normalize(torch.where(flip.view(b, 1, 1, 1), x.flip(3), x))


#### CutMix (IDC: one box per batch, loss mixed by the pasted area) #########################################

def cutmix_box(height, width, lam, cx, cy):
    """IDC's rand_bbox: side sqrt(1-lam) of each dimension, centred at (cx, cy), clipped at the border."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    y1, y2 = min(max(cy - ch // 2, 0), height), min(max(cy + ch // 2, 0), height)
    x1, x2 = min(max(cx - cw // 2, 0), width), min(max(cx + cw // 2, 0), width)
    return y1, y2, x1, x2


def cutmix(x, y, generator=None):
    """Paste a box from a permuted partner -> (x, y, y_partner, ratio); ratio = unpasted area fraction."""
    b, _, hgt, wid = x.shape
    g_dev = x.device if generator is None else generator.device
    u = torch.rand(3, generator=generator, device=g_dev).tolist()
    lam = u[0]  # Beta(1, 1) = U(0, 1)
    cy, cx = min(int(u[1] * hgt), hgt - 1), min(int(u[2] * wid), wid - 1)
    perm = torch.randperm(b, generator=generator, device=g_dev).to(x.device)
    y1, y2, x1, x2 = cutmix_box(hgt, wid, lam, cx, cy)
    x = x.clone()
    x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    ratio = 1.0 - (y2 - y1) * (x2 - x1) / float(hgt * wid)
    return x, y, y[perm], ratio


def cutmix_loss(logits, y, y_b, ratio):
    ce = torch.nn.functional.cross_entropy
    return ce(logits, y) * ratio + ce(logits, y_b) * (1.0 - ratio)


#### PIL reference path (per sample, in DataLoader workers) #################################################

class PilTrainSet(torch.utils.data.Dataset):
    """The authors' path: decode from disk every epoch, PIL Resize + CenterCrop, then as their transform_imagenet
    on the float tensor (ToTensor first, so the crop's resize is not rounded to uint8): crop, flip, jitter,
    lighting per sample."""

    def __init__(self, paths, labels, size):
        self.paths, self.labels = paths, labels
        self.load = T.Compose([T.Resize(size), T.CenterCrop(size)])
        self.aug = T.Compose([T.ToTensor(), T.RandomResizedCrop(size, scale=CROP_SCALE, ratio=CROP_RATIO,
                                                                antialias=True), T.RandomHorizontalFlip()])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        x = self.aug(self.load(load_rgb(self.paths[i])))[None]  # (1, 3, S, S) float in [0, 1]
        return normalize(lighting(color_jitter(x)))[0], self.labels[i]


class PilRdedTrainSet(torch.utils.data.Dataset):
    """RDED's per-sample path: decode from disk every epoch, ToTensor -> ShufflePatches -> RandomResizedCrop ->
    flip -> normalise (the random draws use the worker's torch RNG)."""

    def __init__(self, paths, labels, size, factor, scale):
        self.paths, self.labels, self.factor = paths, labels, factor
        self.load = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor()])
        self.aug = T.Compose([T.RandomResizedCrop(size, scale=tuple(scale), ratio=CROP_RATIO, antialias=True),
                              T.RandomHorizontalFlip()])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        x = shuffle_patches(self.load(load_rgb(self.paths[i]))[None], self.factor)[0]  # (3, S, S) in [0, 1]
        return normalize(self.aug(x)[None])[0], self.labels[i]


class PilTestSet(torch.utils.data.Dataset):
    """Test transform: Resize(resize, default size) -> CenterCrop(size) -> ToTensor -> normalise."""

    def __init__(self, paths, labels, size, resize=None):
        self.paths, self.labels = paths, labels
        self.tf = T.Compose([T.Resize(resize or size), T.CenterCrop(size), T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.tf(load_rgb(self.paths[i])), self.labels[i]
