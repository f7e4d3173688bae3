"""Numeric precision on a device: Caffe-exact float32 by default, TF32 and AMP only when asked.

Why exact is the default: torch lets cuDNN convolutions use TF32 on Ampere and newer GPUs, which
keeps a 10-bit mantissa in the multiplies. Measured on an H200 against the oracle (see
`hovcaffe.net.use_exact_fp32`), gradients moved by up to 0.43 relative with TF32 and stayed within
1e-5 without it. So every CUDA entry point calls `apply_precision` before it runs a net.

Opt-ins, with what they cost in fidelity (documented from the formats, not measured here):

* ``--tf32``: TF32 convolutions and matmuls. Inputs are rounded to a 10-bit mantissa (relative
  error up to ~5e-4 per product, accumulated in fp32); results are no longer within the oracle's
  1e-4 tolerances, and training trajectories drift from Caffe's.
* ``--amp``: autocast to bfloat16 on CUDA (8-bit mantissa, relative error up to ~4e-3 per
  rounding; reductions such as softmax and losses stay fp32 under autocast). Use it for
  throughput, never to compare with Caffe. bfloat16 needs no loss scaling, so no GradScaler.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import ContextManager

import torch

from hovcaffe.errors import UserInputError
from hovcaffe.net import use_exact_fp32

log = logging.getLogger(__name__)

#: dtype --amp autocasts to (bfloat16: fp32's exponent range, no loss scaling needed)
AMP_DTYPE = torch.bfloat16


@dataclasses.dataclass(frozen=True)
class Precision:
    """What a run asked for: ``tf32`` and ``amp`` are the opt-ins; neither means Caffe-exact."""

    tf32: bool = False
    amp: bool = False

    @property
    def exact(self) -> bool:
        return not (self.tf32 or self.amp)


def apply_precision(device: str | torch.device, precision: Precision = Precision()) -> None:
    """Set the process-wide TF32 flags for a run on `device`.

    On CUDA: TF32 off (`use_exact_fp32`) unless ``precision.tf32``. On other devices the flags
    do not apply and are left alone. `--amp` on a device other than CUDA is a user error.
    """
    kind = torch.device(device).type
    if precision.amp and kind != "cuda":
        raise UserInputError(f"--amp needs a CUDA device (got {device}); on CPU the float32 path "
                             "is the exact one")
    if kind != "cuda":
        return
    if precision.tf32:
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True
        log.warning("TF32 on (--tf32): convolutions and matmuls round inputs to a 10-bit "
                    "mantissa; results are not Caffe-exact")
    else:
        use_exact_fp32()
    if precision.amp:
        log.warning("AMP on (--amp): forward passes autocast to %s; results are not Caffe-exact",
                    AMP_DTYPE)


def autocast(device: str | torch.device, precision: Precision) -> ContextManager:
    """The context a forward pass runs in: bfloat16 autocast with ``--amp``, else nothing."""
    if not precision.amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=AMP_DTYPE)
