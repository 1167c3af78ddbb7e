"""Evaluation networks: exact parameter counts (SPEC §5), output shapes, initialisation, torchvision layout."""
import math

import pytest
import torch
import torchvision

from models.classifiers import CLASSIFIERS, build_classifier, convnet_depth, count_params
from utils.errors import UserError

SPEC_PARAMS = {"convnet6": 754_570, "resnetap10": 4_910_922, "resnet18": 11_181_642}


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
    assert convnet_depth(224) == 6 and convnet_depth(256) == 6
    assert convnet_depth(32) == 3 and convnet_depth(28) == 3 and convnet_depth(64) == 4
    assert build_classifier("convnet6", 10, 224).fc.in_features == 128 * 3 * 3
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
