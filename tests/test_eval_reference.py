"""Issue 16, evaluation side: each default against an independent re-statement of the reference code's rule, on
forced draws where randomness is involved. RDED = LINs-lab/RDED validation/main.py + validation/utils.py; the
authors' ResNet = vimar-gu/MinimaxDiffusion train_models/resnet.py."""
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.transforms.v2 import functional as TF

from data.eval_augment import (color_jitter, crop_resize, cutmix, gpu_train_batch, lighting, normalize,
                               rded_train_batch, sample_crops, shuffle_patches)
from engines.evaluate import rded
from engines.evaluate.common import DeviceTest, DeviceTrain
from models.classifiers import build_classifier, count_params, net_ident


#### point 1: BatchNorm statistics move twice per step, as RDED's train() ####################################

def _rded_epoch(student, teacher, train, gen, opt, temperature):
    """RDED's train(), line by line: CutMix in place, the student's train-accuracy forward under no_grad (train
    mode, on the mixed batch), the teacher's soft labels, zero_grad, the loss forward, backward, step."""
    for x, y in train.batches(gen):
        images = cutmix(x, y, gen)[0]  # RDED's cutmix pastes into `images` itself: both forwards see the mix
        with torch.no_grad():
            student(images)  # pred_label (only its top-1 is logged)
            soft = F.softmax(teacher(images) / temperature, dim=1)
        opt.zero_grad()
        loss = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(student(images) / temperature, dim=1), soft)
        loss.backward()
        opt.step()


@pytest.fixture(scope="module")
def bn_setup():
    torch.manual_seed(0)
    u8 = torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8)
    labels = torch.arange(8) % 5
    teacher = torchvision.models.resnet18(num_classes=5).eval().requires_grad_(False)
    torch.manual_seed(1)
    student = build_classifier("resnet18_bn", 5, 16)
    return u8, labels, teacher, student


def _train(u8, labels, augment):
    return DeviceTrain(u8, labels, 16, 4, torch.device("cpu"), augment=augment)  # 2 steps per epoch


def test_bn_updates_twice_equals_rded_loop_bit_for_bit(bn_setup):
    u8, labels, teacher, student = bn_setup
    aug = lambda x, s, g: rded_train_batch(x, s, 2, (0.5, 1.0), g)  # noqa: E731
    test = DeviceTest(u8[:4, :, 2:18, 2:18], labels[:4], 4, torch.device("cpu"))
    kw = dict(epochs=2, lr=1e-3, weight_decay=0.01, temperature=20.0, eval_every=2, best_after=0, seed=3,
              device=torch.device("cpu"), log=lambda *a: None)
    ours, once = copy.deepcopy(student), copy.deepcopy(student)
    rded.train_student(ours, teacher, _train(u8, labels, aug), test, **kw)
    rded.train_student(once, teacher, _train(u8, labels, aug), test, bn_updates="once", **kw)
    ref = copy.deepcopy(student).train()
    opt = torch.optim.AdamW(rded.param_groups(ref, 0.01), lr=1e-3, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: rded.lr_factor(e, 2))
    gen, train = torch.Generator().manual_seed(3), _train(u8, labels, aug)
    for _ in range(2):
        _rded_epoch(ref, teacher, train, gen, opt, 20.0)
        sched.step()
    a, r, o = ours.state_dict(), ref.state_dict(), once.state_dict()
    assert all(torch.equal(a[k], r[k]) for k in r), [k for k in r if not torch.equal(a[k], r[k])][:3]
    assert int(a["bn1.num_batches_tracked"]) == 2 * 4 and int(o["bn1.num_batches_tracked"]) == 4
    assert not torch.allclose(o["layer4.1.bn2.running_var"], r["layer4.1.bn2.running_var"])
    assert not any(m._forward_pre_hooks for m in ours.modules())  # the hooks go when training ends


def test_bn_double_update_first_layer_by_hand():
    """One step from a fresh BatchNorm: running_mean = (1 - (1 - m)^2) * batch mean, running_var = (1 - m)^2 +
    (1 - (1 - m)^2) * unbiased batch variance (m = 0.1), and the counter is 2."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    x = torch.randn(6, 3, 8, 8)
    hooks = rded.repeat_bn_updates(net)
    net(x)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        z = net[0](x).double()
    mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=True)
    keep = 0.9 ** 2
    bn = net[1]
    assert torch.allclose(bn.running_mean.double(), (1 - keep) * mean, rtol=0, atol=1e-6)
    assert torch.allclose(bn.running_var.double(), keep + (1 - keep) * var, rtol=0, atol=1e-6)
    assert int(bn.num_batches_tracked) == 2


#### point 2: crops as torchvision's resized_crop(antialias=True) ###########################################

def _torchvision_crops(x, top, left, h, w, size):
    return torch.stack([TF.resized_crop(x[i], int(top[i]), int(left[i]), int(h[i]), int(w[i]), [size, size],
                                        antialias=True) for i in range(x.shape[0])])


@pytest.mark.parametrize("src,size,scale", [(256, 224, (0.5, 1.0)),    # generated 256 px images, down to 224
                                            (224, 224, (0.5, 1.0)),    # IDC and RDED at 224: up-sampling
                                            (37, 32, (0.08, 1.0)),     # odd side, D3HR's scale range
                                            (64, 17, (0.08, 1.0))])    # strong shrinking (antialias)
def test_crop_resize_equals_torchvision_resized_crop(src, size, scale):
    g = torch.Generator().manual_seed(src)
    n = 6 if src > 200 else 24
    x = torch.rand(n, 3, src, src, generator=g, dtype=torch.float64)
    top, left, h, w = sample_crops(n, src, src, g, scale=scale)
    ref = _torchvision_crops(x, top, left, h, w, size)  # float64: torchvision's rule without float32 rounding
    ours = crop_resize(x.float(), top, left, h, w, size).double()
    assert (ours - ref).abs().max() < 1e-6  # measured 1.7e-7; torchvision's own float32 kernel is off by 1.6e-5
    assert (ours - _torchvision_crops(x.float(), top, left, h, w, size)).abs().max() < 5e-5
    # nothing outside the box leaks in: a box on a constant patch inside a noisy image stays constant
    y = torch.rand(1, 1, 40, 40, generator=g)
    y[..., 10:30, 5:25] = 0.25
    one = torch.ones(1, dtype=torch.long)
    assert torch.allclose(crop_resize(y, 10 * one, 5 * one, 20 * one, 20 * one, size), torch.tensor(0.25), atol=1e-6)


def test_idc_train_batch_equals_torchvision_composition():
    """gpu_train_batch = per image RandomResizedCrop (torchvision's resized_crop on the drawn box) -> flip ->
    jitter -> lighting -> normalise, on the same draws."""
    u8 = torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ours = gpu_train_batch(u8, 24, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    x = u8.double() / 255
    top, left, h, w = sample_crops(8, 24, 24, g)
    x = _torchvision_crops(x, top, left, h, w, 24)
    flip = torch.rand(8, generator=g) < 0.5
    x = torch.stack([TF.horizontal_flip(v) if f else v for v, f in zip(x, flip)]).float()
    ref = normalize(lighting(color_jitter(x, generator=g), generator=g))
    assert (ours - ref).abs().max() < 1e-5


@pytest.mark.parametrize("src,size,n", [(256, 224, 2), (25, 16, 8)])
def test_rded_train_batch_equals_torchvision_composition(src, size, n):
    """rded_train_batch = per image ShufflePatches (an odd side loses its remainder) -> RandomResizedCrop(size,
    (0.5, 1)) as torchvision's resized_crop on the drawn box -> flip -> normalise, on the same draws; 256 px
    generated images go down to 224 (antialiased)."""
    u8 = torch.randint(0, 256, (n, 3, src, src), dtype=torch.uint8, generator=torch.Generator().manual_seed(src))
    ours = rded_train_batch(u8, size, 2, (0.5, 1.0), torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    x = shuffle_patches(u8.double() / 255, 2, g)
    assert x.shape[-1] == src // 2 * 2
    top, left, h, w = sample_crops(n, x.shape[2], x.shape[3], g, scale=(0.5, 1.0))
    x = _torchvision_crops(x, top, left, h, w, size)
    flip = torch.rand(n, generator=g) < 0.5
    ref = normalize(torch.stack([TF.horizontal_flip(v) if f else v for v, f in zip(x, flip)]))
    assert (ours.double() - ref).abs().max() < 5e-6  # [0, 1] within 1e-6, divided by std >= 0.224


#### point 7: ShufflePatches drops the remainder, as RDED's ######################################################

def _rded_shuffle_patches(img, factor, col_order, row_order):
    """RDED's ShufflePatches.forward on one (C, H, W) image, its random.shuffle replaced by a given order."""
    def shuffle_weight(img, order):
        w = img.shape[2]
        tw = w // factor
        patches = [img[..., i * tw: i * tw + tw] for i in range(factor)]  # (its `i != factor - 1` holds here)
        return torch.cat([patches[k] for k in order], -1)
    img = shuffle_weight(img, col_order)
    img = shuffle_weight(img.permute(0, 2, 1), row_order).permute(0, 2, 1)
    return img


@pytest.mark.parametrize("shape,factor", [((9, 7), 2), ((37, 36), 2), ((20, 23), 3), ((32, 32), 2)])
def test_shuffle_patches_equals_rded_on_forced_orders(shape, factor):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(6, 3, *shape, generator=g)
    cols = torch.stack([torch.randperm(factor, generator=g) for _ in range(6)])
    rows = torch.stack([torch.randperm(factor, generator=g) for _ in range(6)])
    ours = shuffle_patches(x, factor, orders=(cols, rows))
    ref = torch.stack([_rded_shuffle_patches(x[i], factor, cols[i].tolist(), rows[i].tolist()) for i in range(6)])
    assert ours.shape == ref.shape == (6, 3, shape[0] // factor * factor, shape[1] // factor * factor)
    assert torch.equal(ours, ref)
    kept = shuffle_patches(x, factor, remainder="keep", orders=(cols, rows))  # the former rule, an option
    assert kept.shape == x.shape
    if shape[0] % factor == 0 and shape[1] % factor == 0:  # sides that divide: both rules are one (same draws)
        a = shuffle_patches(x, factor, torch.Generator().manual_seed(1))
        assert torch.equal(a, shuffle_patches(x, factor, torch.Generator().manual_seed(1), remainder="keep"))
    u8 = (x * 255).to(torch.uint8)
    assert rded_train_batch(u8, 16, factor, (0.5, 1.0), torch.Generator().manual_seed(0)).shape == (6, 3, 16, 16)


def test_rded_test_resize_is_size_div_7_times_8():
    assert [rded.val_resize_for(s) for s in (224, 128, 112, 64, 32, 16)] == [256, 144, 128, 72, 32, 16]
    assert [s for s in range(8, 300) if rded.val_resize_for(s) != s // 7 * 8] == [9, 10, 11, 12, 13, 17, 18, 19, 20,
                                                                             25, 26, 27, 33, 34, 41]
    assert rded.val_resize_for(20) == 20  # RDED's 16 would pad the centre crop: never below the size


#### point 3: the authors' ResNet-18 stem by resolution ######################################################

@pytest.mark.parametrize("size,kernel,stride,pool,side", [(224, 7, 2, True, 7), (129, 7, 2, True, 5),
                                                          (128, 3, 1, True, 8), (65, 3, 1, True, 5),
                                                          (64, 3, 1, False, 8), (32, 3, 1, False, 4)])
def test_resnet18_stem_is_the_authors_intro_block(size, kernel, stride, pool, side):
    """IntroBlock: <= 64 px 3x3 stride 1, no pooling; <= 128 px 3x3 stride 1 + MaxPool(3, 2, 1); above, 7x7
    stride 2 + MaxPool(3, 2, 1). 11,181,642 parameters at 10 classes with the 7x7 stem, 7,680 fewer with 3x3."""
    torch.manual_seed(0)
    net = build_classifier("resnet18", 10, size).eval()
    assert count_params(net) == (11_181_642 if kernel == 7 else 11_181_642 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64)
    assert net.conv1.kernel_size == (kernel, kernel) and net.conv1.stride == (stride, stride)
    assert net.conv1.padding == (kernel // 2, kernel // 2) and net.conv1.bias is None
    mp = net.maxpool
    assert (isinstance(mp, torch.nn.MaxPool2d) and (mp.kernel_size, mp.stride, mp.padding) == (3, 2, 1)) == pool
    assert isinstance(mp, torch.nn.Identity) != pool
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        fmap = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
        logits = net(x)
    assert fmap.shape[-1] == side
    assert (logits[0] - logits[1]).abs().max() > 1e-3  # not the constant network of the 7x7 stem at 32 px
    assert net_ident("resnet18", size) == ({} if kernel == 7 else {"stem": "authors"})
    assert net_ident("resnet18_bn", size) == {} and net_ident("resnetap10", size) == {}
