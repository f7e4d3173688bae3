"""Forward+backward time of converted Caffe nets vs the same nets written by hand in PyTorch.

For LeNet (batch 64), CIFAR-10 quick (batch 100) and CaffeNet (batch 8, full fc6/fc7) - the
prototxts of tests/oracle/perf - and ResNet-50 (batch 8) and MobileNet v2 (batch 16) (see
native_nets.py) it times `objective(net(**inputs)).backward()` of hovcaffe's
CaffeNet (TRAIN phase) against a plain `nn.Sequential` with the same layers, the same weights,
batch, threads and data, alternating the two in one process, and prints the median ratio
(target: <= 1.05), and for the nets real Caffe was timed on, how many times faster than
Caffe hovcaffe is: (Caffe / torch) as recorded x (torch / hovcaffe) now. With --fast the
converted net takes hovcaffe's fast path; its start-up (measuring, compiling) is printed apart.
It also prints how long building GoogLeNet from its prototxt takes.

    python benchmarks/converted_vs_native.py [--threads 1] [--iters 10] [--nets lenet,...]
                                             [--device cuda] [--fast off|on|auto]
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

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import parse_net, read_net
from hovcaffe.net import CaffeNet
from hovcaffe.runtime.fastpath import enable_fast_path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # native_nets, next to this script
from native_nets import (as_train_net, native_caffenet, native_cifar10_quick,  # noqa: E402
                         native_lenet, native_mobilenet_v2, native_resnet50, resnet50_prototxt)

REPO = Path(__file__).resolve().parents[1]
PERF = REPO / "tests" / "oracle" / "perf"
GOOGLENET = REPO / "tests" / "zoo" / "bvlc" / "bvlc_googlenet" / "deploy.prototxt"
MOBILENET_V2 = REPO / "tests" / "zoo" / "forks" / "MobileNet-Caffe" / "mobilenet_v2_deploy.prototxt"


def _perf_net(prototxt: str) -> Callable[[], caffe_pb2.NetParameter]:
    return lambda: read_net(PERF / prototxt)


def _resnet50_b8() -> caffe_pb2.NetParameter:
    return parse_net(resnet50_prototxt(8), "resnet50_b8")


def _mobilenet_v2_b16() -> caffe_pb2.NetParameter:
    return as_train_net(read_net(MOBILENET_V2), 16, "fc7")   # read_net makes input_dim an Input


#: name -> (the converted net's NetParameter, the hand-written module, weights copied?)
NETS = {
    "lenet": (_perf_net("lenet_b64.prototxt"), native_lenet, True),
    "cifar10_quick": (_perf_net("cifar10_quick_b100.prototxt"), native_cifar10_quick, True),
    "caffenet": (_perf_net("caffenet_b8.prototxt"), native_caffenet, True),
    "resnet50": (_resnet50_b8, native_resnet50, False),
    "mobilenet_v2": (_mobilenet_v2_b16, native_mobilenet_v2, False),
}

#: fwd+bwd ms per iteration, Caffe (`caffe time`) and hand-written eager torch 2.13, timed side by
#: side in one quiet run (issue 18's table; Caffe's logs and nets: tests/oracle/perf/)
RECORDED = {
    "lenet": {1: (14.2, 16.2), 2: (11.9, 8.7)},
    "cifar10_quick": {1: (116.8, 79.2), 2: (91.1, 33.1)},
    "caffenet": {1: (381.9, 381.8), 2: (276.9, 247.9)},
}


def caffe_over_hovcaffe(name: str, threads: int, native_s: float, converted_s: float
                        ) -> float | None:
    """(Caffe / torch) then x (torch / hovcaffe) now: how many times faster than Caffe."""
    caffe_ms, torch_ms = RECORDED.get(name, {}).get(threads, (None, None))
    if caffe_ms is None:
        return None
    return (caffe_ms / torch_ms) * (native_s / converted_s)


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


def bench(name: str, iters: int, warmup: int, device: str = "cpu", fast: str = "off"
          ) -> tuple[float, float, str, float]:
    """(converted s, native s, fast path, compile s) - medians per step."""
    make_param, make_native, same_weights = NETS[name]
    torch.manual_seed(0)
    net = CaffeNet(make_param(), "TRAIN").to(device)
    native = make_native().train().to(device)
    if same_weights:   # else both keep their fillers' random weights: the time does not care
        copy_weights(net, native)
    shape = net.blob_shapes["data"]
    data = (torch.rand(shape) * 2 - 1).to(device)
    label = torch.randint(0, 10, (shape[0],)).float().to(device)
    startup = time.perf_counter()
    choice = enable_fast_path(net, fast, {"data": data, "label": label}, training=True)
    startup = time.perf_counter() - startup
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
    return statistics.median(conv_t), statistics.median(nat_t), choice.path, startup


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
    ap.add_argument("--fast", choices=("off", "on", "auto"), default="off",
                    help="the converted net's fast path (hovcaffe --fast); its start-up "
                         "(measuring, compiling) is printed, not in the step times")
    ap.add_argument("--skip-googlenet", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU, {args.threads} thread(s)"
    print(f"torch {torch.__version__}, {where}, median of {args.iters} "
          f"forward+backward steps after {args.warmup} warm-up")
    print(f"{'net':16s} {'converted ms':>13s} {'native ms':>10s} {'ratio':>7s} "
          f"{'path':>8s} {'start-up s':>10s} {'Caffe/hovcaffe':>15s}")
    for name in args.nets.split(","):
        conv, nat, path, startup = bench(name, args.iters, args.warmup, args.device, args.fast)
        vs_caffe = caffe_over_hovcaffe(name, args.threads, nat, conv) \
            if args.device == "cpu" else None
        print(f"{name:16s} {conv * 1e3:13.2f} {nat * 1e3:10.2f} {conv / nat:7.3f} {path:>8s} "
              f"{startup:10.1f} {'-' if vs_caffe is None else f'{vs_caffe:.2f}x':>15s}")
    print("Caffe/hovcaffe = (Caffe / torch) recorded (issue 18, tests/oracle/perf) x "
          "(native / converted) now; '-' where Caffe was not timed")
    if args.skip_googlenet:
        return
    print(f"GoogLeNet build from prototxt (read + build, median of 5): "
          f"{googlenet_build_time() * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
