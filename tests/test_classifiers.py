"""Evaluation networks: exact parameter counts (SPEC §5), output shapes, initialisation, torchvision layout."""
import math

import pytest
import torch
import torchvision

from models.classifiers import CLASSIFIERS, TORCHVISION, build_classifier, convnet_depth, count_params
from utils.errors import UserError

SPEC_PARAMS = {"convnet6": 754_570, "resnetap10": 4_910_922, "resnet18": 11_181_642, "resnet18_bn": 11_181_642,
               "resnet50_bn": 23_528_522, "resnet101_bn": 42_520_650}  # the last two: torchvision's at 10 classes


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_param_count_and_shape_224(name):
    model = build_classifier(name, 10, 224)
    assert count_params(model) == SPEC_PARAMS[name]
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
@pytest.mark.parametrize("size", [32, 64])
def test_shapes_100_classes_small_images(name, size):
    model = build_classifier(name, 100, size)
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
        feats = model.forward_features(torch.randn(2, 3, size, size))
    assert out.shape == (2, 100) and torch.isfinite(out).all()
    assert feats.shape == (2, model.num_features)


def test_convnet_depth_rule():
    # the authors run depth 6 at every resolution down to 64 px (final map 3 / 2 / 1 px); below, the deepest net
    # that keeps 1 px (their network would pool to nothing); min_side=3 is the former rule
    assert [convnet_depth(s) for s in (256, 224, 128, 64, 32, 28, 16)] == [6, 6, 6, 6, 5, 4, 4]
    assert [convnet_depth(s, min_side=3) for s in (224, 128, 64, 32, 28)] == [6, 5, 4, 3, 3]
    assert build_classifier("convnet6", 10, 224).fc.in_features == 128 * 3 * 3
    assert build_classifier("convnet6", 10, 128).fc.in_features == 128 * 2 * 2
    assert build_classifier("convnet6", 10, 64).fc.in_features == 128
    net = build_classifier("convnet6", 10, 32, depth=3)
    assert net.fc.in_features == 128 * 4 * 4 and len(net.features) == 3 * 4
    with pytest.raises(UserError):
        build_classifier("convnet6", 10, 16, depth=6)
    with pytest.raises(UserError):
        build_classifier("vgg11", 10, 32)


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_initialisation(name):
    torch.manual_seed(0)
    model = build_classifier(name, 10, 64)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.weight.numel() > 20000:
            if name == "convnet6":  # the authors' ConvNet keeps PyTorch's default: kaiming-uniform, a = sqrt(5)
                fan_in = m.weight[0].numel()
                assert abs(m.weight.std().item() / math.sqrt(1.0 / (3 * fan_in)) - 1) < 0.05
                continue
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            assert abs(m.weight.std().item() / math.sqrt(2.0 / n) - 1) < 0.05
        if isinstance(m, torch.nn.GroupNorm):
            assert m.num_groups == m.num_channels and m.affine  # instance norm with affine
            assert (m.weight == 1).all() and (m.bias == 0).all()
    if name not in TORCHVISION:  # the IDC networks use instance norm; the RDED students keep BatchNorm
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_resnet18_is_torchvision_layout():
    ours = {k: v.shape for k, v in build_classifier("resnet18", 10, 224).named_parameters()}
    ref = {k: v.shape for k, v in torchvision.models.resnet18(num_classes=10).named_parameters()}
    assert ours == ref


def test_same_seed_same_init():
    torch.manual_seed(3)
    a = build_classifier("resnetap10", 10, 32).state_dict()
    torch.manual_seed(3)
    b = build_classifier("resnetap10", 10, 32).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("size,kernel,pool,side", [(224, 7, 4, 7), (160, 7, 4, 5), (128, 3, 2, 8), (96, 3, 2, 6),
                                                   (64, 3, 1, 8), (32, 3, 1, 4)])
def test_resnetap_stem_by_resolution(size, kernel, pool, side):
    """IDC's stem: 7x7 + AvgPool4 above 128 px, 3x3 + AvgPool2 in (64, 128], 3x3 and no pooling up to 64 px."""
    model = build_classifier("resnetap10", 10, size)
    conv = model.stem[0]
    assert conv.kernel_size == (kernel, kernel) and conv.padding == (kernel // 2, kernel // 2)
    assert (model.stem[3].kernel_size if pool > 1 else 1) == pool
    with torch.no_grad():
        assert model.layers(model.stem(torch.zeros(1, 3, size, size))).shape[-1] == side


@pytest.mark.parametrize("depth", [18, 50, 101])
def test_resnet_bn_is_torchvision(depth):
    """The RDED students: torchvision's ResNet-18 / 50 / 101, same state-dict keys and shapes, BatchNorm."""
    ours = build_classifier(f"resnet{depth}_bn", 1000)
    ref = getattr(torchvision.models, f"resnet{depth}")()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert isinstance(ours.bn1, torch.nn.BatchNorm2d)
