"""The detection demo: a MobileNet-SSD-style net learns coloured shapes, scored by mAP.

    python examples/detection/run_demo.py [--out detection-output] [--iterations N]
                                          [--num-proc 2 --backend torch]

1. draws 600 training and 120 held-out 96 x 96 images of squares, discs and triangles
   (shapes.py) with their boxes as JSON, and SSD's label map;
2. converts both to Parquet (`hovcaffe convert annoset SRC DST --labels labelmap.prototxt`
   does the same);
3. trains solver.prototxt (train.prototxt: AnnotatedData with SSD's augmentation, MultiBoxLoss)
   and scores test.prototxt (DetectionOutput + DetectionEvaluate) by 11-point mAP every
   test_interval, into a metrics CSV (`hovcaffe train -solver ...` does the same);
4. exports deploy.prototxt's heads to ONNX (`hovcaffe export deploy.prototxt -format onnx
   -outputs mbox_loc,mbox_conf_flatten,mbox_priorbox`), runs them in onnxruntime, applies the
   documented post-process (`hovcaffe.layers.detection.detect` with DetectionOutput's settings)
   and compares the detections with the net's own DetectionOutput on the held-out images;
5. draws the loss / mAP / lr curves into curve.png (`hovcaffe plot metrics.csv`).

Steps whose output already exists are skipped, so a second run only trains again.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def make_data(out: str) -> dict[str, str]:
    sys.path.insert(0, HERE)
    import shapes

    from hovcaffe.data.convert import convert_source, make_source

    raw = os.path.join(out, "raw")
    if not os.path.exists(os.path.join(raw, "labelmap.prototxt")):
        shapes.write(raw, 600, 120, 96)
    urls = {}
    for split in ("train", "test"):
        dest = os.path.join(out, "data", f"{split}_parquet")
        report = convert_source(make_source("annoset", os.path.join(raw, f"{split}.json"),
                                            label_map=os.path.join(raw, "labelmap.prototxt")), dest)
        print(report.summary(), flush=True)
        urls[split] = dest
    return urls


def train(out: str, urls: dict[str, str], iterations: int | None, num_proc: int = 1,
          backend: str = "auto") -> tuple[str, list[tuple[int, float]], float]:
    from hovcaffe.caffe.io import read_solver
    from hovcaffe.metrics import MetricsCallback
    from hovcaffe.training.loop import TrainConfig, Trainer

    solver = os.path.join(HERE, "solver.prototxt")
    config = TrainConfig(read_solver(solver), solver_path=solver, max_iter=iterations,
                         snapshot_prefix=os.path.join(out, "shapes_ssd"),
                         train_data=urls["train"], test_data=urls["test"], handle_signals=False)
    metrics = os.path.join(out, "metrics.csv")
    started = time.perf_counter()
    if num_proc > 1:  # what `hovcaffe train -num-proc N -backend B` runs (each rank: batch 16)
        from hovcaffe.distributed.runner import run_distributed
        from hovcaffe.options import DistributedOptions

        result = run_distributed(config, DistributedOptions(num_proc=num_proc, backend=backend),
                                 metrics_csv=metrics, tensorboard=False)
    else:
        result = Trainer(config, callbacks=[MetricsCallback(metrics)]).solve()
    seconds = time.perf_counter() - started
    curve = [(it, scores["test/detection_eval"]) for it, scores in sorted(result.test_scores.items())]
    return result.last_snapshot["model"], curve, seconds


def compare_export(out: str, weights: str, test_url: str, images: int = 20) -> float:
    """Largest difference between DetectionOutput rows and ONNX heads + post-process."""
    import onnxruntime as ort
    import torch

    from hovcaffe.caffe import caffe_pb2
    from hovcaffe.caffe.io import read_net
    from hovcaffe.data.annotated import read_samples
    from hovcaffe.data.codecs import decode_image
    from hovcaffe.layers.detection import detect
    from hovcaffe.net import CaffeNet
    from hovcaffe.weights import load_weights

    deploy = os.path.join(HERE, "deploy.prototxt")
    onnx_path = os.path.join(out, "deploy_heads.onnx")
    subprocess.run([sys.executable, "-m", "hovcaffe.cli", "export", deploy, "-weights", weights,
                    "-format", "onnx", "-outputs", "mbox_loc,mbox_conf_flatten,mbox_priorbox",
                    "-o", onnx_path], check=True)
    net = CaffeNet(read_net(deploy), caffe_pb2.TEST)
    load_weights([net], [weights])
    layer = net.layers["detection_out"]
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    worst = 0.0
    for sample in read_samples(test_url, HERE, 0, 1)[:images]:
        img = decode_image(sample.image, "color").astype(np.float32)
        x = ((img - 127.5) * np.float32(0.007843))[None]
        with torch.no_grad():
            ours = net(data=torch.from_numpy(x))["detection_out"].numpy()
        loc, conf, prior = session.run(["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"],
                                       {"data": x})
        theirs = detect(torch.from_numpy(loc), torch.from_numpy(conf), torch.from_numpy(prior),
                        **layer.options).numpy()
        if ours.shape != theirs.shape:
            return float("inf")
        worst = max(worst, float(np.abs(ours - theirs).max()))
    return worst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="detection-output")
    p.add_argument("--iterations", type=int, default=None, help="override the solver's max_iter")
    p.add_argument("--num-proc", type=int, default=1, help="ranks (each with the solver's batch)")
    p.add_argument("--backend", default="auto", help="launcher of the ranks: auto, local, torch, "
                   "horovod (see `hovcaffe train --help`)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.makedirs(args.out, exist_ok=True)
    urls = make_data(args.out)
    weights, curve, seconds = train(args.out, urls, args.iterations, args.num_proc, args.backend)
    for it, m in curve:
        print(f"iteration {it:5d}: test mAP (11point) = {m:.4f}")
    print(f"training took {seconds:.0f} s; final mAP {curve[-1][1]:.4f}; weights {weights}")
    subprocess.run([sys.executable, "-m", "hovcaffe.cli", "plot", os.path.join(args.out, "metrics.csv"),
                    "-o", os.path.join(args.out, "curve.png")], check=True)
    diff = compare_export(args.out, weights, urls["test"])
    print(f"ONNX heads + post-process vs hovcaffe forward: largest difference {diff:.3g}")
    return 0 if curve[-1][1] >= 0.5 and diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
