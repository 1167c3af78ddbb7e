"""Evaluation networks: the IDC protocol's ConvNet-6, ResNetAP-10, ResNet-18 with instance norm (SPEC §5; each with
the authors' depth or stem for the resolution), and torchvision's unmodified ResNet-18 / 50 / 101 with BatchNorm,
the RDED protocol's students (SPEC §9)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import ResNet, BasicBlock, Bottleneck

from utils.errors import UserError


def instance_norm(channels):
    """IDC's 'instance' norm: GroupNorm with one group per channel, affine (same as InstanceNorm + affine)."""
    return nn.GroupNorm(channels, channels, affine=True)


def init_weights(model):
    """Conv weights N(0, sqrt(2 / (k*k*C_out))), conv biases 0, norms (1, 0); Linear keeps PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def convnet_depth(image_size, max_depth=6, min_side=1):
    """Pooling layers of the ConvNet by default: the authors run `--depth 6` at every resolution (224 -> 3 px,
    128 -> 2 px, 64 -> 1 px); below 64 px, where their network pools the map to nothing, as many as keep >= 1 px.
    `min_side=3` gives the deepest net that keeps the final map >= 3 px (224 -> 6, 64 -> 4, 32 -> 3)."""
    depth = 0
    while depth < max_depth and (image_size >> (depth + 1)) >= min_side:
        depth += 1
    return max(depth, 1)


#### ConvNet-D ###############################################################################################

class ConvNet(nn.Module):
    """depth x [Conv3x3(width, bias) -> IN -> ReLU -> AvgPool2], flatten -> Linear."""

    def __init__(self, num_classes, image_size=224, depth=6, width=128, in_channels=3):
        super().__init__()
        side = image_size >> depth
        if side < 1:
            raise UserError(f"convnet depth {depth} pools a {image_size}px image to nothing; "
                            f"use depth <= {convnet_depth(image_size)} (or leave depth unset)")
        layers, c = [], in_channels
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=True), instance_norm(width), nn.ReLU(inplace=True),
                       nn.AvgPool2d(2, 2)]
            c = width
        self.features = nn.Sequential(*layers)
        self.num_features = width * side * side
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x):
        return self.features(x).flatten(1)  # (N, width * side * side)

    def forward(self, x):
        return self.fc(self.forward_features(x))  # (N, num_classes)


#### ResNetAP-10 #############################################################################################

class APBlock(nn.Module):
    """BasicBlock that downsamples by average pooling after conv1 (and after the 1x1 shortcut conv)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = instance_norm(cout)
        self.pool = nn.AvgPool2d(2, 2) if stride != 1 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = instance_norm(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False),
                                          nn.AvgPool2d(2, 2) if stride != 1 else nn.Identity(), instance_norm(cout))

    def forward(self, x):
        out = self.pool(F.relu(self.bn1(self.conv1(x))))  # (N, C_out, H/s, W/s)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def resnetap_stem(image_size):
    """IDC's stem by resolution -> (kernel, pool): 7x7 + AvgPool4 above 128 px, 3x3 + AvgPool2 above 64 px up to
    128 px, 3x3 without pooling up to 64 px."""
    if image_size <= 64:
        return 3, 1
    return (3, 2) if image_size <= 128 else (7, 4)


class ResNetAP(nn.Module):
    """IDC's ResNetAP: stem Conv(7x7 or 3x3) s1 -> IN -> ReLU -> AvgPool, AP blocks, global average pool -> FC."""

    def __init__(self, num_classes, layers=(1, 1, 1, 1), widths=(64, 128, 256, 512), in_channels=3,
                 stem_pool=4, stem_kernel=7):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], stem_kernel, stride=1, padding=stem_kernel // 2,
                                            bias=False),
                                  instance_norm(widths[0]), nn.ReLU(inplace=True),
                                  nn.AvgPool2d(stem_pool, stem_pool) if stem_pool > 1 else nn.Identity())
        blocks, c = [], widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            for b in range(n):
                blocks.append(APBlock(c, w, 2 if (i > 0 and b == 0) else 1))
                c = w
        self.layers = nn.Sequential(*blocks)
        self.num_features = c
        self.fc = nn.Linear(c, num_classes)

    def forward_features(self, x):
        x = self.layers(self.stem(x))  # (N, 512, H/32, W/32) at the default stem pool
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (N, 512)

    def forward(self, x):
        return self.fc(self.forward_features(x))


#### ResNet-18 (torchvision layout, instance norm) ###########################################################

def resnet18_stem(image_size):
    """The authors' ResNet stem by resolution (their IntroBlock) -> (kernel, stride, max-pool): up to 64 px 3x3
    stride 1 and no pooling, up to 128 px 3x3 stride 1 + MaxPool(3, 2), above that torchvision's 7x7 stride 2 +
    MaxPool(3, 2)."""
    if image_size <= 64:
        return 3, 1, False
    return (3, 1, True) if image_size <= 128 else (7, 2, True)


class ResNet18IN(ResNet):
    """torchvision's ResNet-18 with GroupNorm(C, C) in place of BatchNorm and the authors' stem for `image_size`
    (resnet18_stem; at 224 px torchvision's, 11,181,642 parameters at 10 classes; 7,680 fewer with the 3x3 stem).
    The layout (conv1, bn1, maxpool, layer1..4, fc) stays torchvision's at every size."""

    def __init__(self, num_classes, image_size=224):
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, norm_layer=instance_norm)
        kernel, stride, pool = resnet18_stem(image_size)
        if kernel != 7:
            self.conv1 = nn.Conv2d(3, 64, kernel, stride=stride, padding=kernel // 2, bias=False)
        if not pool:
            self.maxpool = nn.Identity()
        self.num_features = self.fc.in_features

    def forward_features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)  # (N, 512)

    def forward(self, x):
        return self.fc(self.forward_features(x))


class ResNet18BN(ResNet):
    """torchvision's ResNet-18, unmodified (BatchNorm, torchvision's initialisation): RDED's student (SPEC §9).
    `block`/`layers` give its larger students ResNet-50 / 101 (Bottleneck, [3, 4, 6, 3] / [3, 4, 23, 3])."""

    def __init__(self, num_classes, block=BasicBlock, layers=(2, 2, 2, 2)):
        super().__init__(block, list(layers), num_classes=num_classes)
        self.num_features = self.fc.in_features

    forward_features = ResNet18IN.forward_features

    def forward(self, x):
        return self.fc(self.forward_features(x))


#### Registry ################################################################################################

def _convnet(num_classes, image_size, depth=None, width=None):
    return ConvNet(num_classes, image_size, depth=depth or convnet_depth(image_size), width=width or 128)


def _resnetap10(num_classes, image_size, depth=None, width=None):
    kernel, pool = resnetap_stem(image_size)
    return ResNetAP(num_classes, stem_pool=pool, stem_kernel=kernel)


def _resnet18(num_classes, image_size, depth=None, width=None):
    return ResNet18IN(num_classes, image_size)


def _resnet18_bn(num_classes, image_size, depth=None, width=None):
    return ResNet18BN(num_classes)


def _resnet50_bn(num_classes, image_size, depth=None, width=None):
    return ResNet18BN(num_classes, Bottleneck, (3, 4, 6, 3))


def _resnet101_bn(num_classes, image_size, depth=None, width=None):
    return ResNet18BN(num_classes, Bottleneck, (3, 4, 23, 3))


CLASSIFIERS = {"convnet6": _convnet, "resnetap10": _resnetap10, "resnet18": _resnet18, "resnet18_bn": _resnet18_bn,
               "resnet50_bn": _resnet50_bn, "resnet101_bn": _resnet101_bn}
TORCHVISION = ("resnet18_bn", "resnet50_bn", "resnet101_bn")  # keep torchvision's own initialisation
# under the RDED protocol 'resnet18' / 'resnet50' / 'resnet101' are torchvision's BatchNorm networks (its students);
# 'resnet18_in' is the IDC one
RDED_ALIASES = {"resnet18": "resnet18_bn", "resnet50": "resnet50_bn", "resnet101": "resnet101_bn",
                "resnet18_in": "resnet18"}


def build_classifier(name, num_classes, image_size=224, depth=None, width=None):
    """A freshly initialised evaluation network. `depth` and `width` only apply to convnet6 (depth None: 6 as the
    authors, fewer below 64 px; width None: 128, narrower for quick CPU demos).
    Every model has `forward_features(x) -> (N, num_features)`."""
    if name not in CLASSIFIERS:
        raise UserError(f"unknown arch '{name}'; choose from {', '.join(CLASSIFIERS)}")
    model = CLASSIFIERS[name](num_classes, image_size, depth=depth, width=width)
    # the authors' (IDC's) ConvNet keeps PyTorch's default initialisation; their ResNets use N(0, sqrt(2/n));
    # torchvision's ResNet-18 keeps torchvision's own
    return model if name == "convnet6" or name in TORCHVISION else init_weights(model)


def net_ident(name, image_size):
    """What a results key must add for network `name` at `image_size` beyond its name: the IDC ResNet-18's stem
    up to 128 px is the authors' 3x3 one since issue 16 (earlier runs there used the 7x7 stem)."""
    return {"stem": "authors"} if name == "resnet18" and image_size <= 128 else {}


def count_params(model):
    return sum(p.numel() for p in model.parameters())
