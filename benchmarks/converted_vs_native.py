"""Forward+backward time of converted Caffe nets vs the same nets written by hand in PyTorch.

For LeNet (batch 64), CIFAR-10 quick (batch 100) and CaffeNet (batch 8, full fc6/fc7) - the
prototxts of tests/oracle/perf - it times `objective(net(**inputs)).backward()` of hovcaffe's
CaffeNet (TRAIN phase) against a plain `nn.Sequential` with the same layers, the same weights,
batch, threads and data, alternating the two in one process, and prints the median ratio
(target: <= 1.05). It also prints how long building GoogLeNet from its prototxt takes.

    python benchmarks/converted_vs_native.py [--threads 1] [--iters 10] [--nets lenet,...]
                                             [--device cuda]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hovcaffe.caffe.io import read_net
from hovcaffe.net import CaffeNet

REPO = Path(__file__).resolve().parents[1]
PERF = REPO / "tests" / "oracle" / "perf"
GOOGLENET = REPO / "tests" / "zoo" / "bvlc" / "bvlc_googlenet" / "deploy.prototxt"


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


NETS = {
    "lenet": ("lenet_b64.prototxt", native_lenet),
    "cifar10_quick": ("cifar10_quick_b100.prototxt", native_cifar10_quick),
    "caffenet": ("caffenet_b8.prototxt", native_caffenet),
}


def copy_weights(converted: CaffeNet, native: nn.Module) -> None:
    """Give the native net the converted net's (filler-initialised) weights, layer by layer."""
    src = [m.blobs for m in converted.layers.values() if len(m.blobs)]
    dst = [m for m in native.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(src) == len(dst), (len(src), len(dst))
    with torch.no_grad():
        for blobs, mod in zip(src, dst):
            mod.weight.copy_(blobs[0])
            mod.bias.copy_(blobs[1])


def time_step(fn, params, sync) -> float:
    for p in params:
        p.grad = None
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def bench(name: str, iters: int, warmup: int, device: str = "cpu") -> tuple[float, float]:
    prototxt, make_native = NETS[name]
    torch.manual_seed(0)
    net = CaffeNet(read_net(PERF / prototxt), "TRAIN").to(device)
    native = make_native().train().to(device)
    copy_weights(net, native)
    shape = net.blob_shapes["data"]
    data = (torch.rand(shape) * 2 - 1).to(device)
    label = torch.randint(0, 10, (shape[0],)).float().to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    inputs = {"data": data, "label": label}
    target = label.long()

    def converted_step():
        net.objective(net(**inputs)).backward()

    def native_step():
        F.cross_entropy(native(data), target).backward()

    cp, npar = list(net.parameters()), list(native.parameters())
    for _ in range(warmup):
        time_step(converted_step, cp, sync)
        time_step(native_step, npar, sync)
    conv_t, nat_t = [], []
    for i in range(iters):   # alternate the order to cancel drift
        if i % 2:
            nat_t.append(time_step(native_step, npar, sync))
            conv_t.append(time_step(converted_step, cp, sync))
        else:
            conv_t.append(time_step(converted_step, cp, sync))
            nat_t.append(time_step(native_step, npar, sync))
    return statistics.median(conv_t), statistics.median(nat_t)


def googlenet_build_time(repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        CaffeNet(read_net(GOOGLENET), "TEST")
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU, {args.threads} thread(s)"
    print(f"torch {torch.__version__}, {where}, median of {args.iters} "
          f"forward+backward steps after {args.warmup} warm-up")
    print(f"{'net':16s} {'converted ms':>13s} {'native ms':>10s} {'ratio':>7s}")
    for name in args.nets.split(","):
        conv, nat = bench(name, args.iters, args.warmup, args.device)
        print(f"{name:16s} {conv * 1e3:13.2f} {nat * 1e3:10.2f} {conv / nat:7.3f}")
    print(f"GoogLeNet build from prototxt (read + build, median of 5): "
          f"{googlenet_build_time() * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
