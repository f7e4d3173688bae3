"""Hand-written PyTorch nets for the benchmarks, layer for layer the Caffe prototxts they are
timed against (no torchvision: it pulls a CUDA torch). Caffe's BatchNorm + Scale pair is one
affine `nn.BatchNorm2d` here, as a PyTorch author would write it.

ResNet-50 is KaimingHe/deep-residual-networks' layout (stride 2 on the first 1x1 of a stage's
first block and on its projection), generated here as a prototxt too, since the zoo holds no
classification ResNet-50; MobileNet v2 is shicai/MobileNet-Caffe's (tests/zoo/forks), where
every block has its 1x1 expansion, ReLU (not ReLU6), the 64-channel stage at stride 1 and the
96-channel one at stride 2, and a 1x1 convolution as classifier.
"""
from __future__ import annotations

import torch
from torch import nn

from hovcaffe.caffe import caffe_pb2


def native_lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))


def native_cifar10_quick() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Flatten(), nn.Linear(1024, 64), nn.Linear(64, 10))


def native_caffenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Flatten(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 1000))


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             relu: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU()] if relu else layers


class _Residual(nn.Module):
    """out = relu?(body(x) + shortcut(x))."""

    def __init__(self, body: list[nn.Module], shortcut: nn.Module | None, relu: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(*body)
        self.shortcut = shortcut or nn.Identity()
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


#: ResNet-50 stages: (blocks, bottleneck width, output channels, first stride)
RESNET50_STAGES = ((3, 64, 256, 1), (4, 128, 512, 2), (6, 256, 1024, 2), (3, 512, 2048, 2))


def native_resnet50() -> nn.Module:
    layers: list[nn.Module] = [*_conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, ceil_mode=True)]
    cin = 64
    for blocks, width, cout, stride in RESNET50_STAGES:
        for b in range(blocks):
            s = stride if b == 0 else 1
            body = [*_conv_bn(cin, width, 1, s), *_conv_bn(width, width, 3),
                    *_conv_bn(width, cout, 1, relu=False)]
            shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, s, relu=False)) if b == 0 else None
            layers.append(_Residual(body, shortcut, relu=True))
            cin = cout
    return nn.Sequential(*layers, nn.AvgPool2d(7, 1), nn.Flatten(), nn.Linear(2048, 1000))


def resnet50_prototxt(batch: int) -> str:
    """The same ResNet-50 as a TRAIN prototxt (Input data + label, SoftmaxWithLoss)."""
    out = [f'name: "ResNet-50"\nlayer {{ name: "input" type: "Input" top: "data" top: "label" '
           f'input_param {{ shape {{ dim: {batch} dim: 3 dim: 224 dim: 224 }} '
           f'shape {{ dim: {batch} }} }} }}']

    def conv_bn(name, bottom, cout, k, stride=1, relu=True):
        out.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                   f'convolution_param {{ num_output: {cout} kernel_size: {k} pad: {k // 2} '
                   f'stride: {stride} bias_term: false weight_filler {{ type: "msra" }} }} }}')
        out.append(f'layer {{ name: "bn_{name}" type: "BatchNorm" bottom: "{name}" top: "{name}" }}')
        out.append(f'layer {{ name: "scale_{name}" type: "Scale" bottom: "{name}" top: "{name}" '
                   f'scale_param {{ bias_term: true }} }}')
        if relu:
            out.append(f'layer {{ name: "{name}_relu" type: "ReLU" bottom: "{name}" top: "{name}" }}')
        return name

    top = conv_bn("conv1", "data", 64, 7, 2)
    out.append('layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" '
               'pooling_param { pool: MAX kernel_size: 3 stride: 2 } }')
    top = "pool1"
    for stage, (blocks, width, cout, stride) in enumerate(RESNET50_STAGES, start=2):
        for b in range(blocks):
            name, s = f"res{stage}{chr(ord('a') + b)}", (stride if b == 0 else 1)
            short = conv_bn(f"{name}_branch1", top, cout, 1, s, relu=False) if b == 0 else top
            x = conv_bn(f"{name}_branch2a", top, width, 1, s)
            x = conv_bn(f"{name}_branch2b", x, width, 3)
            x = conv_bn(f"{name}_branch2c", x, cout, 1, relu=False)
            out.append(f'layer {{ name: "{name}" type: "Eltwise" bottom: "{short}" bottom: "{x}" '
                       f'top: "{name}" }}')
            out.append(f'layer {{ name: "{name}_relu" type: "ReLU" bottom: "{name}" top: "{name}" }}')
            top = name
    out.append(f'layer {{ name: "pool5" type: "Pooling" bottom: "{top}" top: "pool5" '
               'pooling_param { pool: AVE kernel_size: 7 stride: 1 } }')
    out.append('layer { name: "fc1000" type: "InnerProduct" bottom: "pool5" top: "fc1000" '
               'inner_product_param { num_output: 1000 weight_filler { type: "msra" } } }')
    out.append('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc1000" bottom: "label" '
               'top: "loss" }')
    return "\n".join(out)


#: MobileNet v2 blocks: (expansion, output channels, repeats, first stride). shicai's prototxt
#: puts the stride 2 on the first 96-channel block (conv4_7/dwise), not on the first 64-channel
#: one as the paper's table does: the 64-channel blocks run at 28x28. Written the paper's way,
#: this net did 4 of its 384-channel blocks at 14x14 and timed the converted net 1.16-1.34x
#: "slower" for work the hand-written one did not do.
MOBILENET_V2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 1), (6, 96, 3, 2),
                       (6, 160, 3, 2), (6, 320, 1, 1))


def native_mobilenet_v2() -> nn.Module:
    layers: list[nn.Module] = [*_conv_bn(3, 32, 3, 2)]
    cin = 32
    for t, cout, repeats, stride in MOBILENET_V2_BLOCKS:
        for r in range(repeats):
            s, mid = (stride if r == 0 else 1), cin * t
            body = [*_conv_bn(cin, mid, 1), *_conv_bn(mid, mid, 3, s, groups=mid),
                    *_conv_bn(mid, cout, 1, relu=False)]
            layers.append(_Residual(body, None, relu=False) if s == 1 and cin == cout
                          else nn.Sequential(*body))
            cin = cout
    return nn.Sequential(*layers, *_conv_bn(320, 1280, 1), nn.AdaptiveAvgPool2d(1),
                         nn.Conv2d(1280, 1000, 1), nn.Flatten())


#: GoogLeNet inception modules: (in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj); None = a
#: 3x3/2 max pooling between them
GOOGLENET_INCEPTIONS = (
    (192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64), None,
    (480, 192, 96, 208, 16, 48, 64), (512, 160, 112, 224, 24, 64, 64),
    (512, 128, 128, 256, 24, 64, 64), (512, 112, 144, 288, 32, 64, 64),
    (528, 256, 160, 320, 32, 128, 128), None,
    (832, 256, 160, 320, 32, 128, 128), (832, 384, 192, 384, 48, 128, 128))


class _Inception(nn.Module):
    def __init__(self, cin, c1, r3, c3, r5, c5, proj) -> None:
        super().__init__()
        relu_conv = lambda i, o, k: [nn.Conv2d(i, o, k, padding=k // 2), nn.ReLU()]  # noqa: E731
        self.b1 = nn.Sequential(*relu_conv(cin, c1, 1))
        self.b3 = nn.Sequential(*relu_conv(cin, r3, 1), *relu_conv(r3, c3, 3))
        self.b5 = nn.Sequential(*relu_conv(cin, r5, 1), *relu_conv(r5, c5, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), *relu_conv(cin, proj, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


def native_googlenet() -> nn.Module:
    """BVLC GoogLeNet as in tests/zoo/bvlc/bvlc_googlenet/deploy.prototxt (no auxiliary heads)."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0), nn.Conv2d(64, 64, 1), nn.ReLU(),
        nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(), nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0),
        nn.MaxPool2d(3, 2, ceil_mode=True)]
    for spec in GOOGLENET_INCEPTIONS:
        layers.append(nn.MaxPool2d(3, 2, ceil_mode=True) if spec is None else _Inception(*spec))
    return nn.Sequential(*layers, nn.AvgPool2d(7, 1), nn.Dropout(0.4), nn.Flatten(),
                         nn.Linear(1024, 1000))


def as_train_net(deploy: caffe_pb2.NetParameter, batch: int, scores: str) -> caffe_pb2.NetParameter:
    """A deploy net (first layer Input) as the TRAIN net timed against a hand-written one: batch
    `batch`, BatchNorm on batch statistics (`use_global_stats` dropped), a label Input and a
    SoftmaxWithLoss on `scores` in place of the final Softmax."""
    deploy.layer[0].input_param.shape[0].dim[0] = batch
    for layer in deploy.layer:
        if layer.type == "BatchNorm":
            layer.batch_norm_param.ClearField("use_global_stats")
    if deploy.layer[-1].type == "Softmax":
        del deploy.layer[-1]
    label = deploy.layer.add(name="label", type="Input", top=["label"])
    label.input_param.shape.add(dim=[batch])
    deploy.layer.add(name="loss", type="SoftmaxWithLoss", bottom=[scores, "label"], top=["loss"])
    return deploy
