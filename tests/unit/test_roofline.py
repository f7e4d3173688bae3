"""benchmarks/roofline.py counts forward+backward FLOPs from layer shapes: checked against sums
done by hand, never against hovcaffe's own `macs()`."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from native_nets import native_lenet  # noqa: E402
from roofline import lenet_hand_count, pass_flops  # noqa: E402


def test_lenet_b64_pass_is_843_648_000_flops():
    # conv1 64*20*24*24*25 = 18,432,000 MACs, forward + weight gradient (the data needs none);
    # conv2 64*50*8*8*500 = 102,400,000, ip1 64*800*500 = 25,600,000, ip2 64*500*10 = 320,000,
    # each forward + weight gradient + input gradient: 421,824,000 MACs, 2 FLOPs each.
    assert lenet_hand_count() == 843_648_000
    assert pass_flops(native_lenet(), torch.zeros(64, 1, 28, 28)) == 843_648_000


def test_grouped_conv_and_an_input_that_needs_its_gradient():
    # 2 groups: each output element sees 4/2 channels * 3*3 = 18 MACs; 1*6*4*4 = 96 outputs.
    conv = nn.Conv2d(4, 6, 3, groups=2)
    x = torch.zeros(1, 4, 6, 6)
    assert pass_flops(conv, x) == 2 * 96 * 18 * 2                        # no input gradient
    assert pass_flops(conv, x.requires_grad_()) == 2 * 96 * 18 * 3     # with it
