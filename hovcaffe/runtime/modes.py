"""The run-mode names and their one-line meanings, torch-free so that command-line parsers can
list them without importing torch."""
from __future__ import annotations

#: --fast values (hovcaffe.runtime.fastpath)
FAST_MODES = ("auto", "on", "off")

FAST_HELP = ("CPU fast path (torch.compile): auto = time eager and compiled on the first batch "
             "and keep the faster (cached under $HOVCAFFE_CACHE or ~/.cache/hovcaffe; compile "
             "time is start-up), on = compiled unmeasured, off = eager [env HOVCAFFE_FAST].")
TF32_HELP = ("On CUDA, let convolutions and matmuls use TF32 (faster, not Caffe-exact: inputs "
             "rounded to a 10-bit mantissa). Default: exact float32.")
AMP_HELP = ("On CUDA, autocast forward passes to bfloat16 (faster, not Caffe-exact: 8-bit "
            "mantissa). Default: exact float32.")
