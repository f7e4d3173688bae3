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

Two comparisons, printed apart (``--compare``, default both):

* **same process**: the two nets alternate in this process, which keeps glibc malloc's defaults
  for both. It isolates what the converted net itself costs.
* **as shipped**: each side in its own child process, alternating children over ``--rounds``
  rounds (median of the children's medians). The hovcaffe child first applies hovcaffe's
  process settings (`hovcaffe.runtime.process.apply_process_settings`, exactly what `hovcaffe
  time` and `train` do: today, freed memory stays in the heap instead of being page-faulted back
  in every pass); the hand-written torch child is a plain script with the defaults (MALLOC_* and
  GLIBC_TUNABLES removed from its environment). That is what a user of each gets. Caffe gets the
  same effect by design (it allocates its blobs once), and a hand-written script could set it
  too - the difference is a process setting, not a faster kernel.

Start-up (measuring, compiling the fast path) counts as start-up in both, not as step time.

    python benchmarks/converted_vs_native.py [--threads 1] [--iters 10] [--nets lenet,...]
                                             [--device cuda] [--fast off|on|auto]
                                             [--compare both|same-process|as-shipped] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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


def _inputs(net: CaffeNet, device: str) -> dict[str, torch.Tensor]:
    shape = net.blob_shapes["data"]
    return {"data": (torch.rand(shape) * 2 - 1).to(device),
            "label": torch.randint(0, 10, (shape[0],)).float().to(device)}


def _median_step(step: Callable[[], None], params: list, iters: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        time_step(step, params, sync)
    return statistics.median(time_step(step, params, sync) for _ in range(iters))


def child(side: str, name: str, iters: int, warmup: int, device: str, fast: str) -> dict:
    """One side of the as-shipped comparison, alone in this (child) process."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    make_param, make_native, _ = NETS[name]
    torch.manual_seed(0)
    if side == "native":   # a plain script: nothing of hovcaffe's runtime is set
        net = CaffeNet(make_param(), "TRAIN")   # only for the input shapes
        inputs = _inputs(net, device)
        del net
        native = make_native().train().to(device)
        data, target = inputs["data"], inputs["label"].long()

        def native_step():
            F.cross_entropy(native(data), target).backward()
        return {"s": _median_step(native_step, list(native.parameters()), iters, warmup, sync),
                "path": "-", "startup": 0.0, "settings": {}}
    from dataclasses import asdict

    from hovcaffe.runtime.process import apply_process_settings

    settings = apply_process_settings()   # what `hovcaffe time` / `train` do first
    net = CaffeNet(make_param(), "TRAIN").to(device)
    inputs = _inputs(net, device)
    startup = time.perf_counter()
    choice = enable_fast_path(net, fast, inputs, training=True)
    startup = time.perf_counter() - startup

    def converted_step():
        net.objective(net(**inputs)).backward()
    return {"s": _median_step(converted_step, list(net.parameters()), iters, warmup, sync),
            "path": choice.path, "startup": startup, "settings": asdict(settings)}


def _child_env(side: str) -> dict[str, str]:
    env = dict(os.environ)
    if side == "native":   # glibc's defaults, whatever the caller's shell set
        for key in [k for k in env if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]:
            del env[key]
    return env


def bench_as_shipped(name: str, args) -> tuple[float, float, str, float, dict]:
    """(hovcaffe s, native s, path, start-up s, settings): medians over alternating children."""
    runs: dict[str, list[dict]] = {"hovcaffe": [], "native": []}
    for r in range(args.rounds):
        for side in (("hovcaffe", "native") if r % 2 == 0 else ("native", "hovcaffe")):
            cmd = [sys.executable, __file__, "--child", side, "--nets", name,
                   "--threads", str(args.threads), "--iters", str(args.iters),
                   "--warmup", str(args.warmup), "--device", args.device, "--fast", args.fast]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                 env=_child_env(side))
            runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
    hov, nat = runs["hovcaffe"], runs["native"]
    paths = sorted({h["path"] for h in hov})
    return (statistics.median(h["s"] for h in hov), statistics.median(n["s"] for n in nat),
            "/".join(paths), max(h["startup"] for h in hov), hov[0]["settings"])


def googlenet_build_time(repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        CaffeNet(read_net(GOOGLENET), "TEST")
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _row(name: str, threads: int, device: str, conv: float, nat: float, path: str,
         startup: float) -> str:
    vs_caffe = caffe_over_hovcaffe(name, threads, nat, conv) if device == "cpu" else None
    return (f"{name:16s} {conv * 1e3:13.2f} {nat * 1e3:10.2f} {conv / nat:7.3f} {path:>8s} "
            f"{startup:10.1f} {'-' if vs_caffe is None else f'{vs_caffe:.2f}x':>15s}")


_HEADER = (f"{'net':16s} {'hovcaffe ms':>13s} {'native ms':>10s} {'ratio':>7s} "
           f"{'path':>8s} {'start-up s':>10s} {'Caffe/hovcaffe':>15s}")


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
    ap.add_argument("--compare", choices=("both", "same-process", "as-shipped"), default="both",
                    help="same process (both nets, malloc defaults) and/or as shipped (each in "
                         "its own process, hovcaffe with its process settings)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="as shipped: child processes per side, alternating")
    ap.add_argument("--child", choices=("hovcaffe", "native"), help=argparse.SUPPRESS)
    ap.add_argument("--skip-googlenet", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child, args.nets, args.iters, args.warmup, args.device,
                               args.fast)))
        return
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU, {args.threads} thread(s)"
    print(f"torch {torch.__version__}, {where}, median of {args.iters} "
          f"forward+backward steps after {args.warmup} warm-up")
    names = args.nets.split(",")
    if args.compare in ("both", "same-process"):
        print("\nSAME PROCESS: both nets alternate in this process, glibc malloc defaults for "
              "both")
        print(_HEADER)
        for name in names:
            conv, nat, path, startup = bench(name, args.iters, args.warmup, args.device,
                                             args.fast)
            print(_row(name, args.threads, args.device, conv, nat, path, startup))
    if args.compare in ("both", "as-shipped"):
        print(f"\nAS SHIPPED: each side in its own process, median of {args.rounds} alternating "
              "children; hovcaffe with its process settings (as `hovcaffe time`), native torch "
              "a plain script with the defaults")
        print(_HEADER)
        settings: dict = {}
        for name in names:
            conv, nat, path, startup, settings = bench_as_shipped(name, args)
            print(_row(name, args.threads, args.device, conv, nat, path, startup))
        print(f"hovcaffe process settings applied: {settings}")
    print("Caffe/hovcaffe = (Caffe / torch) recorded (issue 18, tests/oracle/perf) x "
          "(native / hovcaffe) now; '-' where Caffe was not timed")
    if args.skip_googlenet:
        return
    print(f"GoogLeNet build from prototxt (read + build, median of 5): "
          f"{googlenet_build_time() * 1e3:.1f} ms")

if __name__ == "__main__":
    main()
