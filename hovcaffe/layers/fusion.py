"""BatchNorm + Scale as one F.batch_norm call (the Caffe ResNet/MobileNet pattern).

Caffe writes a learned batch normalisation as two layers, BatchNorm (statistics only) and a
per-channel Scale with bias_term; run apart they cost two passes over the blob plus the
Scale's multiply and add. `FusedBatchNormScale` runs the pair as one call with the Scale's
blobs as weight and bias. Both layers stay what they are - their blobs, names, lr_mult and
export are untouched - the fused step only borrows them at call time. The net decides where a
pair may fuse (nothing else reads the BatchNorm's top; `CaffeNet._fused_plan`); this module
decides which layer pairs can.
"""
from __future__ import annotations

import torch

from hovcaffe.layers.normalization import BatchNorm, Scale


def can_fuse(bn: object, scale: object) -> bool:
    """True when `scale` is exactly a per-channel learned affine over `bn`'s (N, C, ...) top.

    Scale with a second bottom (operand given at run time), another axis/num_axes or a 1-axis
    BatchNorm input keeps running as its own layer.
    """
    if type(bn) is not BatchNorm or type(scale) is not Scale or scale.two_bottoms:
        return False
    c = bn.channels
    rank = len(scale._view)
    return (rank >= 2 and tuple(scale._view) == (1, c) + (1,) * (rank - 2)
            and all(tuple(b.shape) == (c,) for b in scale.blobs))


class FusedBatchNormScale:
    """Callable step of the net's fused plan: the BatchNorm, then the Scale, in one call.

    Not a module: it owns nothing, so state_dict, parameters() and .to() see only the two
    layers. When either layer has forward hooks (`hovcaffe time` per layer), it runs them one
    after the other so the hooks see both.
    """

    def __init__(self, bn: BatchNorm, scale: Scale) -> None:
        self.bn = bn
        self.scale = scale

    @property
    def name(self) -> str:
        return f"{self.bn.name}+{self.scale.name}"

    @property
    def type(self) -> str:
        return "BatchNorm+Scale"

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        bn, scale = self.bn, self.scale
        if (bn._forward_hooks or bn._forward_pre_hooks or scale._forward_hooks
                or scale._forward_pre_hooks):
            return scale(*bn(x))
        bias = scale.blobs[1] if scale.bias_term else None
        return [bn.normalize(x, scale.blobs[0], bias)]
