"""Prototxt text of whole fork-style nets, written layer by layer from the papers' tables.

The public Caffe files of DenseNet (shicai/DenseNet-Caffe) and ShuffleNet (farmingyard/ShuffleNet)
carry no licence, so they are not copied into tests/zoo; these builders write the same
architectures with the same fork layers (pooling ceil_mode: false, ConvolutionDepthwise,
ShuffleChannel), so that the published parameter counts can be checked.
"""
from __future__ import annotations


class Proto:
    """Accumulates `layer { ... }` blocks; every method returns the name of its top."""

    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        dims = " ".join(f"dim: {d}" for d in shape)
        self.parts = [f'name: "{name}"\ninput: "data"\ninput_shape {{ {dims} }}\n']

    def text(self) -> str:
        return "".join(self.parts)

    def add(self, name: str, type_: str, bottoms, tops=None, body: str = "") -> str:
        bottoms = [bottoms] if isinstance(bottoms, str) else list(bottoms)
        tops = [name] if tops is None else ([tops] if isinstance(tops, str) else list(tops))
        lines = [f'layer {{ name: "{name}" type: "{type_}"']
        lines += [f' bottom: "{b}"' for b in bottoms] + [f' top: "{t}"' for t in tops]
        self.parts.append("".join(lines) + (f" {body}" if body else "") + " }\n")
        return tops[0]

    def conv(self, name, bottom, num, k, stride=1, pad=0, group=1, bias=False,
             type_="Convolution") -> str:
        grouping = f"group: {group} " if group != 1 else ""
        body = (f"convolution_param {{ num_output: {num} kernel_size: {k} stride: {stride} "
                f"pad: {pad} {grouping}bias_term: {str(bias).lower()} "
                'weight_filler { type: "msra" } }')
        return self.add(name, type_, bottom, body=body)

    def dwconv(self, name, bottom, channels, k=3, stride=1, pad=1) -> str:
        return self.conv(name, bottom, channels, k, stride, pad, type_="ConvolutionDepthwise")

    def bn(self, name, bottom, relu: bool = False) -> str:
        """BVLC BatchNorm + Scale (bias) [+ ReLU], all in place."""
        self.add(f"{name}/bn", "BatchNorm", bottom, bottom)
        self.add(f"{name}/scale", "Scale", bottom, bottom, "scale_param { bias_term: true }")
        if relu:
            self.add(f"{name}/relu", "ReLU", bottom, bottom)
        return bottom

    def pool(self, name, bottom, method, k, stride, pad=0, ceil_mode=None, global_=False) -> str:
        if global_:
            body = f"pooling_param {{ pool: {method} global_pooling: true }}"
        else:
            body = f"pooling_param {{ pool: {method} kernel_size: {k} stride: {stride} pad: {pad}"
            body += f" ceil_mode: {str(ceil_mode).lower()} }}" if ceil_mode is not None else " }"
        return self.add(name, "Pooling", bottom, body=body)

    def fc(self, name, bottom, num) -> str:
        return self.add(name, "InnerProduct", bottom, body=f"inner_product_param {{ num_output: {num} "
                        'weight_filler { type: "xavier" } }')


def densenet(blocks=(6, 12, 24, 16), growth=32, stem=64, classes=1000, size=224,
             batch=1) -> str:
    """DenseNet-BC (121 by default) as in shicai/DenseNet-Caffe: pools with ceil_mode false."""
    p = Proto("DenseNet", (batch, 3, size, size))
    x = p.bn("conv1", p.conv("conv1", "data", stem, 7, 2, 3), relu=True)
    x = p.pool("pool1", x, "MAX", 3, 2, 1, ceil_mode=False)
    channels = stem
    for b, layers in enumerate(blocks, 1):
        for i in range(1, layers + 1):
            name = f"conv{b + 1}_{i}"
            y = p.add(f"{name}/x1/in", "Split", x, f"{name}/x1/in")   # keep x for the concat
            y = p.bn(f"{name}/x1", y, relu=True)
            y = p.bn(f"{name}/x2", p.conv(f"{name}/x1", y, 4 * growth, 1), relu=True)
            y = p.conv(f"{name}/x2", y, growth, 3, pad=1)
            x = p.add(f"concat_{b + 1}_{i}", "Concat", [x, y])
            channels += growth
        if b < len(blocks):
            channels //= 2
            y = p.bn(f"conv{b + 1}_blk", x, relu=True)
            y = p.conv(f"conv{b + 1}_blk", y, channels, 1)
            x = p.pool(f"pool{b + 1}", y, "AVE", 2, 2, ceil_mode=False)
    x = p.bn("conv5_blk", x, relu=True)
    x = p.pool("pool5", x, "AVE", 0, 0, global_=True)
    p.fc("fc6", x, classes)
    return p.text()


def shufflenet_v2(channels=(116, 232, 464), repeats=(4, 8, 4), classes=1000, size=224,
                  batch=1) -> str:
    """ShuffleNet v2 1x: channel split (Slice), depthwise convs, ShuffleChannel group 2."""
    p = Proto("ShuffleNetV2", (batch, 3, size, size))
    x = p.bn("conv1", p.conv("conv1", "data", 24, 3, 2, 1), relu=True)
    x = p.pool("pool1", x, "MAX", 3, 2, 1)
    c_in = 24
    for s, (c_out, n) in enumerate(zip(channels, repeats), 2):
        half = c_out // 2
        for i in range(1, n + 1):
            u = f"stage{s}_{i}"
            if i == 1:
                a = p.bn(f"{u}/b1dw", p.dwconv(f"{u}/b1dw", x, c_in, stride=2))
                a = p.bn(f"{u}/b1pw", p.conv(f"{u}/b1pw", a, half, 1), relu=True)
                b = x
            else:
                a, b = f"{u}/left", f"{u}/right"
                p.add(f"{u}/split", "Slice", x, [a, b], f"slice_param {{ slice_point: {half} }}")
            b = p.bn(f"{u}/b2pw1", p.conv(f"{u}/b2pw1", b, half, 1), relu=True)
            b = p.bn(f"{u}/b2dw", p.dwconv(f"{u}/b2dw", b, half, stride=2 if i == 1 else 1))
            b = p.bn(f"{u}/b2pw2", p.conv(f"{u}/b2pw2", b, half, 1), relu=True)
            x = p.add(f"{u}/concat", "Concat", [a, b])
            x = p.add(f"{u}/shuffle", "ShuffleChannel", x, body="shuffle_channel_param { group: 2 }")
            c_in = c_out
    x = p.bn("conv5", p.conv("conv5", x, 1024, 1), relu=True)
    x = p.pool("pool5", x, "AVE", 0, 0, global_=True)
    p.fc("fc", x, classes)
    return p.text()


def shufflenet_v1(groups=3, channels=(240, 480, 960), repeats=(4, 8, 4), classes=1000,
                  size=224, batch=1) -> str:
    """ShuffleNet v1 1x (g = 3): grouped 1x1 convs, ShuffleChannel, depthwise 3x3."""
    p = Proto("ShuffleNetV1", (batch, 3, size, size))
    x = p.bn("conv1", p.conv("conv1", "data", 24, 3, 2, 1), relu=True)
    x = p.pool("pool1", x, "MAX", 3, 2, 1)
    c_in = 24
    for s, (c_out, n) in enumerate(zip(channels, repeats), 2):
        for i in range(1, n + 1):
            u = f"resx{s}_{i}"
            first = i == 1
            width = c_out - c_in if first else c_out     # the concat branch fills up the rest
            mid = c_out // 4
            g1 = 1 if (s == 2 and first) else groups
            y = p.bn(f"{u}/conv1", p.conv(f"{u}/conv1", x, mid, 1, group=g1), relu=True)
            y = p.add(f"{u}/shuffle", "ShuffleChannel", y,
                      body=f"shuffle_channel_param {{ group: {groups} }}")
            y = p.bn(f"{u}/conv2", p.dwconv(f"{u}/conv2", y, mid, stride=2 if first else 1))
            y = p.bn(f"{u}/conv3", p.conv(f"{u}/conv3", y, width, 1, group=groups))
            if first:
                short = p.pool(f"{u}/match", x, "AVE", 3, 2, 1)
                x = p.add(f"{u}/concat", "Concat", [short, y])
            else:
                x = p.add(f"{u}/add", "Eltwise", [x, y])
            x = p.add(f"{u}/relu", "ReLU", x, f"{u}/relu")
            c_in = c_out
    x = p.pool("pool_ave", x, "AVE", 0, 0, global_=True)
    p.fc("fc1000", x, classes)
    return p.text()


def enet_style(size=32, batch=1, classes=4) -> str:
    """ENet's encoder-decoder pattern at toy size: BN (INFERENCE), PReLU, pooling with a mask
    top, max-unpooling Upsample, Deconvolution."""
    p = Proto("ENetStyle", (batch, 3, size, size))
    bn = ('bn_param { bn_mode: INFERENCE scale_filler { type: "constant" value: 1 } '
          'shift_filler { type: "constant" value: 0.001 } }')
    x = p.conv("conv0", "data", 13, 3, 2, 1, bias=True)
    pooled = p.pool("pool0", "data", "MAX", 2, 2)
    x = p.add("concat0", "Concat", [x, pooled])
    x = p.add("bn0", "BN", x, body=bn)
    x = p.add("prelu0", "PReLU", x)
    p.add("pool1", "Pooling", x, ["pool1", "pool1_mask"],
          "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
    y = p.conv("conv1", "pool1", 16, 3, 1, 1, bias=True)
    y = p.add("bn1", "BN", y, body=bn)
    y = p.add("prelu1", "PReLU", y)
    up = p.add("upsample1", "Upsample", [y, "pool1_mask"], body="upsample_param { scale: 2 }")
    x = p.add("add1", "Eltwise", [up, x])
    p.add("fullconv", "Deconvolution", x, body=f"convolution_param {{ num_output: {classes} "
          'kernel_size: 2 stride: 2 bias_term: true weight_filler { type: "msra" } }')
    return p.text()
