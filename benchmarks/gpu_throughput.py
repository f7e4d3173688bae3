"""Training images/s on a GPU: hovcaffe's converted nets vs the same nets written by hand.

For CaffeNet, GoogLeNet and ResNet-50 at batch 32 and 64 it times SGD steps (forward, backward,
momentum update; random data on the device) of hovcaffe's CaffeNet (TRAIN phase) and of the
hand-written module (benchmarks/native_nets.py), alternating the two in one process, in two modes:

* exact: float32 with TF32 off (hovcaffe's default on CUDA), eager, for both sides;
* fast: hovcaffe's fast path (`--fast on`: torch.compile) with TF32 on (`--tf32`); the
  hand-written net compiled with the same TF32 setting. Compile time is start-up, printed apart.

Prints images/s of both and hovcaffe / native (target: >= 0.95 in both modes).

    python benchmarks/gpu_throughput.py [--device cuda] [--iters 20] [--warmup 5]
                                        [--nets caffenet,googlenet,resnet50] [--batches 32,64]
                                        [--modes exact,fast]

It needs a CUDA device for its figures; `--device cpu --batches 2 --iters 1` only checks that it runs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import parse_net, read_net
from hovcaffe.net import CaffeNet
from hovcaffe.runtime.fastpath import enable_fast_path
from hovcaffe.runtime.precision import Precision, apply_precision

sys.path.insert(0, str(Path(__file__).resolve().parent))  # native_nets, next to this script
from native_nets import (as_train_net, native_caffenet, native_googlenet,  # noqa: E402
                         native_resnet50, resnet50_prototxt)

REPO = Path(__file__).resolve().parents[1]


def caffenet(batch: int) -> caffe_pb2.NetParameter:
    param = read_net(REPO / "tests" / "oracle" / "perf" / "caffenet_b8.prototxt")
    for layer in param.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = batch
    return param


def googlenet(batch: int) -> caffe_pb2.NetParameter:
    deploy = read_net(REPO / "tests" / "zoo" / "bvlc" / "bvlc_googlenet" / "deploy.prototxt")
    return as_train_net(deploy, batch, "loss3/classifier")


def resnet50(batch: int) -> caffe_pb2.NetParameter:
    return parse_net(resnet50_prototxt(batch), "resnet50")


NETS = {"caffenet": (caffenet, native_caffenet), "googlenet": (googlenet, native_googlenet),
        "resnet50": (resnet50, native_resnet50)}


def bench(name: str, batch: int, mode: str, device: str, iters: int, warmup: int) -> dict:
    make_param, make_native = NETS[name]
    apply_precision(device, Precision(tf32=mode == "fast"))
    torch.manual_seed(0)
    net = CaffeNet(make_param(batch), "TRAIN").to(device)
    native = make_native().train().to(device)
    data = torch.rand(net.blob_shapes["data"], device=device) * 2 - 1
    label = torch.randint(0, 1000, (batch,), device=device)
    inputs = {"data": data, "label": label.float()}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    opt_c = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
    opt_n = torch.optim.SGD(native.parameters(), lr=1e-4, momentum=0.9)
    start = time.perf_counter()
    native_fwd = native
    if mode == "fast":
        enable_fast_path(net, "on", inputs, training=True)
        native_fwd = torch.compile(native, dynamic=False)

    def converted_step():
        opt_c.zero_grad(set_to_none=True)
        net.objective(net(**inputs)).backward()
        opt_c.step()

    def native_step():
        opt_n.zero_grad(set_to_none=True)
        F.cross_entropy(native_fwd(data), label).backward()
        opt_n.step()

    for _ in range(warmup):   # the first ones compile in fast mode
        converted_step()
        native_step()
    sync()
    startup = time.perf_counter() - start
    times: dict[str, list[float]] = {"converted": [], "native": []}
    for i in range(iters):   # alternate the order to cancel drift
        order = [("converted", converted_step), ("native", native_step)]
        for side, step in (order if i % 2 == 0 else order[::-1]):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times[side].append(time.perf_counter() - t0)
    conv, nat = statistics.median(times["converted"]), statistics.median(times["native"])
    return {"converted": batch / conv, "native": batch / nat, "startup": startup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--batches", default="32,64")
    ap.add_argument("--modes", default="exact,fast")
    args = ap.parse_args()
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU (smoke run)"
    print(f"torch {torch.__version__}, {where}; median of {args.iters} SGD steps after "
          f"{args.warmup} warm-up (compile) steps")
    print(f"{'net':10s} {'batch':>5s} {'mode':>6s} {'hovcaffe img/s':>15s} {'native img/s':>13s} "
          f"{'ratio':>6s} {'start-up s':>10s}")
    for name in args.nets.split(","):
        for batch in map(int, args.batches.split(",")):
            for mode in args.modes.split(","):
                r = bench(name, batch, mode, args.device, args.iters, args.warmup)
                print(f"{name:10s} {batch:5d} {mode:>6s} {r['converted']:15.1f} {r['native']:13.1f} "
                      f"{r['converted'] / r['native']:6.3f} {r['startup']:10.1f}", flush=True)
    print("ratio = hovcaffe / native images/s (target >= 0.95); exact = fp32, TF32 off, eager; "
          "fast = torch.compile + TF32 on both sides")


if __name__ == "__main__":
    main()
