"""Roofline of the CPU nets Caffe was timed on: which "1.5x faster than Caffe" targets fp32 allows.

For LeNet b64, CIFAR-10 quick b100 and CaffeNet b8 at each thread count it prints, all measured
in one run:

* **GFLOP** of one forward+backward pass, counted by formula from the layer shapes of the
  hand-written torch net (native_nets.py; hovcaffe's own `macs()` is not used). Only the
  multiply-adds that every fp32 implementation of the net must do are counted:

  - Convolution: out.numel() * (C_in / group) * kh * kw MACs forward; the same again for the
    weight gradient, and again for the input gradient - except where the input needs no
    gradient (the first layer: the data). InnerProduct alike with in_features.
  - 1 MAC = 2 FLOPs. Pooling, ReLU, LRN, Dropout, softmax, bias and the SGD update are left out:
    they are memory-bound and small here, so leaving them out only makes the floor lower.
  - Direct-convolution arithmetic, as Caffe (im2col + GEMM), oneDNN and inductor do it. A
    fast-convolution algorithm (Winograd, FFT) multiplies less; none of these runs it here.

  LeNet by hand (see `lenet_hand_count` and tests/unit/test_roofline.py): conv1 64*20*24*24 *
  1*25 = 18.432 M MACs (forward + weight gradient: data needs none), conv2 64*50*8*8 * 20*25 =
  102.4 M (x3), ip1 64*800*500 = 25.6 M (x3), ip2 64*500*10 = 0.32 M (x3): 421.824 M MACs =
  0.8436 GFLOP.
* **peak**: the practical fp32 GEMM peak of this run - the best GFLOPS of `torch.matmul` on
  square matrices of several sizes and of `F.conv2d` with many channels (oneDNN), at the same
  thread count. Both are what a BLAS or oneDNN reaches, not the chip's nominal peak.
* **memory**: the best GB/s of a 256 MiB copy. Weights larger than the last-level cache
  (CaffeNet's fc6 and fc7 at batch 8) must be read twice and their gradient written once per
  pass; at batch 8 that traffic, not the arithmetic, bounds those layers.
* **floor ms** = the sum over layers of max(FLOPs / peak, weight bytes / bandwidth): no fp32
  implementation doing that arithmetic is faster.
* for hand-written eager torch, hovcaffe eager and each of hovcaffe's fast-path candidates
  (torch.compile; channels_last), alternating in one process: median ms, achieved GFLOPS and
  % of peak.
* **Caffe ms (scaled)** = Caffe's recorded time x (torch now / torch then): issue 18's formula,
  Caffe / hovcaffe = (Caffe / torch)_then x (torch / hovcaffe)_now, applied to a time.
* **Caffe/x**: each implementation's Caffe / x by that formula, and **best** = Caffe (scaled) /
  floor, the most any fp32 implementation could reach here. Where best < 1.5 the 1.5x target is
  out of reach in fp32.

    python benchmarks/roofline.py [--threads 1,2] [--nets lenet,cifar10_quick,caffenet]
                                  [--iters 10] [--warmup 3] [--no-fast]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hovcaffe.net import CaffeNet
from hovcaffe.runtime.fastpath import enable_fast_path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # next to this script
from converted_vs_native import NETS, RECORDED, copy_weights  # noqa: E402

#: the nets Caffe was timed on (issue 18)
CAFFE_NETS = tuple(RECORDED)
#: hovcaffe's fast-path candidates timed (runtime/fastpath.py; `--fast auto` picks among them)
FAST_CANDIDATES = ("compile", "channels_last")
TARGET = 1.5


def lenet_hand_count() -> int:
    """LeNet b64 forward+backward FLOPs, by hand (the docstring's sum)."""
    conv1 = 64 * 20 * 24 * 24 * (1 * 5 * 5)   # forward, weight grad; no input grad (data)
    conv2 = 64 * 50 * 8 * 8 * (20 * 5 * 5)    # forward, weight grad, input grad
    ip1 = 64 * 800 * 500
    ip2 = 64 * 500 * 10
    return 2 * (2 * conv1 + 3 * (conv2 + ip1 + ip2))


def layer_costs(module: nn.Module, data: torch.Tensor) -> list[tuple[int, int]]:
    """(FLOPs, bytes) per Conv2d / Linear for one forward+backward pass of `module` on `data`
    (which needs no gradient), from the shapes each layer sees; see the module docstring.

    bytes: the weight traffic no implementation avoids when the weight does not fit in the
    last-level cache: read for the forward, read for the input gradient, the gradient written
    (3 x its size); 0 for a weight that fits, whose traffic may stay in cache.
    """
    costs: list[tuple[int, int]] = []
    cache = last_level_cache_bytes()

    def hook(mod, args, out):
        x = args[0]
        if isinstance(mod, nn.Conv2d):
            macs = out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] \
                * mod.kernel_size[1]
        else:
            macs = out.numel() * mod.in_features
        passes = 2 + (1 if x.requires_grad else 0)   # forward, weight grad, input grad
        weight = mod.weight.numel() * mod.weight.element_size()
        costs.append((2 * macs * passes, 3 * weight if weight > cache else 0))

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.enable_grad():
            module(data)
    finally:
        for h in handles:
            h.remove()
    return costs


def pass_flops(module: nn.Module, data: torch.Tensor) -> int:
    """FLOPs of one forward+backward pass (`layer_costs` summed)."""
    return sum(f for f, _ in layer_costs(module, data))


def last_level_cache_bytes() -> int:
    """The L3 size from sysfs (32 MiB here); 0 - every weight counted as traffic - if unknown."""
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    except OSError:
        return 0
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def memory_bandwidth(mib: int = 256, repeats: int = 3) -> float:
    """Best GB/s of copying a `mib` MiB fp32 buffer (read + write counted) at this thread count."""
    src = torch.randn(mib << 18)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best / 1e9


def _best_gflops(fn: Callable[[], object], flops: float, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def gemm_peak(repeats: int = 3) -> tuple[float, str]:
    """The best fp32 GFLOPS of matmul and big-channel conv2d at the current thread count."""
    results: list[tuple[float, str]] = []
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        results.append((_best_gflops(lambda: torch.matmul(a, b), 2 * n ** 3, repeats),
                        f"matmul {n}"))
    for batch, c, hw, k in ((8, 256, 28, 3), (16, 512, 14, 1)):
        x, w = torch.randn(batch, c, hw, hw), torch.randn(c, c, k, k)
        flops = 2 * batch * c * hw * hw * c * k * k
        results.append((_best_gflops(lambda: F.conv2d(x, w, padding=k // 2), flops, repeats),
                        f"conv2d {c}ch {k}x{k}"))
    return max(results)


def time_impls(name: str, iters: int, warmup: int, fast: bool
               ) -> tuple[dict[str, float], list[tuple[int, int]]]:
    """Median forward+backward seconds per implementation, alternating, and `layer_costs`."""
    make_param, make_native, same_weights = NETS[name]
    torch.manual_seed(0)
    native = make_native().train()
    eager = CaffeNet(make_param(), "TRAIN")
    if same_weights:
        copy_weights(eager, native)
    shape = eager.blob_shapes["data"]
    data = torch.rand(shape) * 2 - 1
    label = torch.randint(0, 10, (shape[0],)).float()
    target = label.long()
    inputs = {"data": data, "label": label}
    costs = layer_costs(native, data)
    steps: dict[str, tuple[Callable[[], None], list[torch.Tensor]]] = {
        "torch": (lambda: F.cross_entropy(native(data), target).backward(),
                  list(native.parameters())),
        "hovcaffe": (lambda: eager.objective(eager(**inputs)).backward(),
                     list(eager.parameters())),
    }
    for candidate in (FAST_CANDIDATES if fast else ()):
        other = CaffeNet(make_param(), "TRAIN")
        other.load_state_dict(eager.state_dict())
        enable_fast_path(other, "on", inputs, training=True, candidate=candidate)
        steps[f"hov {candidate}"] = (
            lambda n=other: n.objective(n(**inputs)).backward(), list(other.parameters()))

    def one(key: str) -> float:
        fn, params = steps[key]
        for p in params:
            p.grad = None
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    for _ in range(warmup):   # the fast path's first pass compiles here
        for key in steps:
            one(key)
    times: dict[str, list[float]] = {k: [] for k in steps}
    order = list(steps)
    for i in range(iters):    # rotate the order to cancel drift
        for key in order[i % len(order):] + order[:i % len(order)]:
            times[key].append(one(key))
    return {k: statistics.median(v) for k, v in times.items()}, costs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--nets", default=",".join(CAFFE_NETS))
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-fast", action="store_true", help="skip hovcaffe's fast-path candidates")
    args = ap.parse_args()
    print(f"torch {torch.__version__}; fp32; median of {args.iters} forward+backward passes "
          f"after {args.warmup} warm-up, implementations alternating")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        peak, peak_by = gemm_peak()
        bandwidth = memory_bandwidth()
        print(f"\n{threads} thread(s): practical fp32 peak {peak:.1f} GFLOPS ({peak_by}); "
              f"memory {bandwidth:.1f} GB/s (copy)")
        print(f"{'net':14s} {'GFLOP':>7s} {'floor ms':>8s} {'Caffe ms*':>9s} {'best':>6s}   "
              f"{'impl':17s} {'ms':>8s} {'GFLOPS':>7s} {'% peak':>6s} {'Caffe/x':>8s}")
        for name in args.nets.split(","):
            medians, costs = time_impls(name, args.iters, args.warmup, not args.no_fast)
            flops = sum(f for f, _ in costs)
            # per layer, the slower of its arithmetic and its unavoidable weight traffic
            floor = sum(max(f / (peak * 1e9), b / (bandwidth * 1e9)) for f, b in costs)
            caffe_ms, torch_then_ms = RECORDED[name][threads] if threads in RECORDED[name] \
                else (None, None)
            caffe_now = None if caffe_ms is None else \
                caffe_ms / torch_then_ms * medians["torch"] * 1e3
            best = "-" if caffe_now is None else f"{caffe_now / (floor * 1e3):.2f}x"
            head = (f"{name:14s} {flops / 1e9:7.3f} {floor * 1e3:8.2f} "
                    f"{'-' if caffe_now is None else f'{caffe_now:.2f}':>9s} {best:>6s}")
            for i, (impl, sec) in enumerate(medians.items()):
                gflops = flops / sec / 1e9
                vs = "-" if caffe_now is None else f"{caffe_now / (sec * 1e3):.2f}x"
                print(f"{head if i == 0 else '':{len(head)}s}   {impl:17s} {sec * 1e3:8.2f} "
                      f"{gflops:7.1f} {100 * gflops / peak:5.1f}% {vs:>8s}")
    print(f"\nCaffe ms* = Caffe's recorded ms x (torch now / torch then) (issue 18; "
          f"tests/oracle/perf). best = Caffe ms* / floor ms: the largest Caffe/x any fp32 "
          f"implementation could reach; the target is {TARGET}x.")


if __name__ == "__main__":
    main()
