"""Largest deviation of hovcaffe from real Caffe on every oracle forward case, on any device.

For each case: TEST-phase blobs (and layer_outputs), and where the oracle has them TRAIN-phase
blobs and gradients. Prints max |got - caffe| / max |caffe| per case and kind, whether the
oracle README's tolerances hold (the unit test `test_oracle_forward.py` asserts them on CPU), and
last the one figure: the largest relative deviation over every case, with its case and kind.

--tf32 / --amp measure what those opt-ins cost in fidelity (CUDA only); --fast on runs the TEST
blobs on hovcaffe's compiled fast path (the in-place intermediates are then not compared).

    python benchmarks/oracle_deviation.py [--device cuda] [--extra DIR ...] [--tf32] [--amp]
                                          [--fast on]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import read_net
from hovcaffe.diffs import run_pass
from hovcaffe.net import CaffeNet
from hovcaffe.runtime.fastpath import enable_fast_path
from hovcaffe.runtime.precision import Precision, apply_precision, autocast
from hovcaffe.weights import load_caffemodel

REPO = Path(__file__).resolve().parents[1]


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


def _dev(got: torch.Tensor, want: np.ndarray, rtol: float, atol_f: float) -> tuple[float, bool]:
    g = got.detach().float().cpu().numpy()
    scale = float(np.abs(want).max()) if want.size else 0.0
    if g.shape != want.shape:
        return float("inf"), False
    if not want.size:
        return 0.0, True
    dev = float(np.nanmax(np.abs(g - want))) / max(scale, 1e-30)
    ok = bool(np.allclose(g, want, rtol=rtol, atol=atol_f * scale, equal_nan=True))
    return dev, ok


def check_case(d: Path, device: str, precision: Precision = Precision(), fast: str = "off"
               ) -> dict:
    kind = json.loads((d / "meta.json").read_text()).get("kind", "layer")
    rtol, atol = (1e-4, 1e-5) if kind == "net" else (1e-5, 1e-6)
    out = {"case": d.name, "kind": kind}
    net = CaffeNet(read_net(d / "net.prototxt"), caffe_pb2.TEST).to(device)
    load_caffemodel(net, d / "weights.caffemodel", strict=True)
    inputs = {k: torch.from_numpy(v).to(device) for k, v in _load(d / "input.npz").items()}
    compiled = enable_fast_path(net, fast, inputs, training=False).path != "eager"
    with autocast(device, precision), torch.inference_mode():
        blobs = net(**inputs) if compiled else None
        res = None if compiled else run_pass(net, inputs)
    devs = [_dev(blobs[k] if compiled else res.blobs[k], v, rtol, atol)
            for k, v in _load(d / "blobs.npz").items()]
    if not compiled and (d / "layer_outputs.npz").exists():
        devs += [_dev(res.layer_outputs[k], v, rtol, atol)
                 for k, v in _load(d / "layer_outputs.npz").items()]
    out["forward"] = (max(x for x, _ in devs), all(ok for _, ok in devs))
    if (d / "grads.npz").exists():
        net = CaffeNet(read_net(d / "net_train.prototxt"), caffe_pb2.TRAIN).to(device)
        load_caffemodel(net, d / "weights.caffemodel", strict=True)
        arrays = _load(d / "input.npz")
        if (d / "train_input.npz").exists():
            arrays.update(_load(d / "train_input.npz"))
        with autocast(device, precision):
            res = run_pass(net, {k: torch.from_numpy(v).to(device) for k, v in arrays.items()},
                           backward=True)
        tb = [_dev(res.blobs[k], v, rtol, atol) for k, v in _load(d / "train_blobs.npz").items()
              if k in res.blobs]
        gr = [_dev(res.grads[k], v, 1e-4, 1e-5) for k, v in _load(d / "grads.npz").items()]
        out["train"] = (max(x for x, _ in tb), all(ok for _, ok in tb))
        out["grads"] = (max(x for x, _ in gr), all(ok for _, ok in gr))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--extra", nargs="*", default=[], help="more case folders (caffenet, ...)")
    ap.add_argument("--tf32", "--allow-tf32", dest="tf32", action="store_true",
                    help="let cuDNN/cuBLAS use TF32 (off by default: it costs ~1e-3 accuracy)")
    ap.add_argument("--amp", action="store_true", help="autocast to bfloat16 (CUDA)")
    ap.add_argument("--fast", choices=("off", "on"), default="off",
                    help="TEST blobs on the compiled fast path")
    args = ap.parse_args()
    precision = Precision(tf32=args.tf32, amp=args.amp)
    apply_precision(args.device, precision)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"device: {where}, tf32: {args.tf32}, amp: {args.amp}, fast: {args.fast}")
    cases = sorted(p for p in (REPO / "tests/oracle/forward").iterdir() if p.is_dir())
    cases += [Path(e) for e in args.extra]
    worst: dict[str, float] = {}
    largest = (0.0, "-", "-")
    failures = []
    print(f"{'case':38s} {'forward':>10s} {'train':>10s} {'grads':>10s}")
    for d in cases:
        r = check_case(d, args.device, precision, args.fast)
        cells = []
        for key in ("forward", "train", "grads"):
            if key in r:
                dev, ok = r[key]
                worst[key] = max(worst.get(key, 0.0), dev)
                largest = max(largest, (dev, d.name, key))
                cells.append(f"{dev:9.1e}{'' if ok else '!'}")
                if not ok:
                    failures.append(f"{d.name}:{key}")
            else:
                cells.append(f"{'-':>9s} ")
        print(f"{d.name:38s} " + " ".join(cells))
    print("max relative deviation:", {k: f"{v:.2e}" for k, v in worst.items()})
    print("outside the README tolerances:", failures or "none")
    print(f"largest relative deviation from Caffe: {largest[0]:.2e} ({largest[1]}, {largest[2]})")


if __name__ == "__main__":
    main()
