"""Scaling of distributed training: hovcaffe's launchers on 1 and 2 ranks vs Spark's TorchDistributor.

For LeNet (batch 64 per rank) and CIFAR-10 quick (batch 100 per rank) - the Input-layer versions
in tests/oracle/perf, fed from an in-memory .npz so that data reading is not what is measured.

Every contender starts cold: its own fresh interpreter (`--child`), its own local[2] Spark
session, one run. Nobody inherits a warmed JVM, Python workers or imports from another, and
with `--repeats R` the contenders are interleaved so that a load burst hits them alike.

* hovcaffe: `run_distributed` (the code behind `hovcaffe train -num-proc N`) with 1 rank, and
  with 2 ranks on each launcher and transport: the torch backend (one Spark barrier stage,
  torch.distributed over Gloo) and Horovod over MPI and over Gloo (left out when Horovod is not
  installed). 1 torch thread per rank. Reported: steady-state ms per iteration and samples/s
  (rank 0's per-iteration clock after a warm-up), the Spark session start, the time from the
  call to the first finished iteration (preflight, launch, rank start, net build included), and
  the share of step time ranks spend blocked on the gradient allreduce. Scaling efficiency =
  samples/s with 2 ranks / (2 x samples/s with 1 rank).
* peer: the same CaffeNet module and batches in a plain DDP loop (torch SGD with momentum and
  weight decay, Gloo) under `pyspark.ml.torch.distributor.TorchDistributor(num_processes=2,
  local_mode=True)` - what a Spark user would otherwise pick. For each 2-rank hovcaffe launcher
  the ratios to the peer are printed: step time (target <= 1.05) and call-to-first-iteration
  (target <= 1).

Both clocks start after the contender's Spark session exists (its start is reported on its own):
hovcaffe's at the call of `run_distributed`, stopped when rank 0's first-iteration event reaches
the driver; the peer's at the call of `TorchDistributor.run`, stopped at rank 0's own time stamp
after its first step (a few ms in the peer's favour). `--startup` also prints rank 0's start-up
steps (`DistributedResult.startup`: worker process forked, rank code entered, process group up,
trainer ready, first iteration) for each hovcaffe run.

    python benchmarks/scaling.py [--nets lenet,cifar10_quick] [--iterations 60] [--repeats 3]
        [--contenders "torch backend,TorchDistributor"] [--startup]
    python benchmarks/scaling.py --tune            # Horovod settings, 2-rank LeNet
    python benchmarks/scaling.py --gpu [--iterations 20]     # 1 rank on a GPU, no Spark

`--gpu` trains CaffeNet and GoogLeNet (data layers replaced by an Input layer, random images) at
batch 32 and 64 on one GPU with hovcaffe's Trainer and prints images/s.

`--tune` runs 2-rank LeNet under several Horovod settings (cycle time, fusion threshold,
response cache) in one session and prints their step times.

Figures of an earlier version of this benchmark (warm session shared by hovcaffe's runs, the
peer cold; kept for the Horovod tuning discussion in docs/distributed.md):

Measured on the 2-core development machine (idle otherwise), 100 iterations, medians after 10
warm-up iterations, Horovod over its default transport (MPI here) and over Gloo:

    net              run                      ms/it  samples/s  call->first it  allreduce wait
    LeNet b64        hovcaffe 1 rank           25.1      2552        5.4 s            -
                     hovcaffe 2 ranks (MPI)    27.9      4586        3.5 s           7%
                     hovcaffe 2 ranks (Gloo)   35.5      3610        2.5 s          18%
                     TorchDistributor 2        30.3-32.0 4223        4.1 s            -
    CIFAR-10 q b100  hovcaffe 1 rank           96.8      1033        3.8 s            -
                     hovcaffe 2 ranks (MPI)   101.8      1965        4.1 s           3%
                     hovcaffe 2 ranks (Gloo)  117.9      1696        2.6 s           9%
                     TorchDistributor 2       120.5-126.5 1581       4.1-4.6 s        -

hovcaffe/peer with the default transport: step time 0.92 (LeNet) / 0.80 (CIFAR-10 quick), call
to first iteration 0.86 / 0.88; with Gloo 1.11 / 0.98 and 0.62 / 0.64. Scaling efficiency 1 -> 2
ranks: 90% / 95% (MPI), 71% / 80% (Gloo). Gloo's extra step time is Horovod's controller: one
coordination round per cycle (1 ms) that wakes two threads per rank over TCP even between
allreduces - on two cores busy with compute that is the difference (docs/distributed.md,
"Tuning", has the table `--tune` prints). GPU variant (`--gpu`, one NVIDIA H200, torch 2.11, fp32
with cuDNN's default TF32 convolutions, 20 iterations, measured in an earlier session): CaffeNet
2567 images/s at batch 32, 2188 at 64; GoogLeNet 741 at batch 32, 1002 at 64.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PERF = REPO / "tests" / "oracle" / "perf"
NETS = {"lenet": ("lenet_b64.prototxt", 64), "cifar10_quick": ("cifar10_quick_b100.prototxt", 100)}
WARMUP = 10
SOLVER = """net: "{net}"
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "fixed"
display: 0
max_iter: {iters}
snapshot: 0
snapshot_after_train: false
random_seed: 1
"""


def make_inputs(net_path: Path, folder: Path, ranks: int = 2, batches: int = 4) -> Path:
    """Random data and labels for the net's Input blobs: `batches` batches per rank."""
    from hovcaffe.caffe.io import read_net

    net = read_net(str(net_path))
    layer = next(l for l in net.layer if l.type == "Input")
    shapes = [tuple(s.dim) for s in layer.input_param.shape]
    rows = shapes[0][0] * ranks * batches
    rng = np.random.default_rng(0)
    arrays = {layer.top[0]: rng.standard_normal((rows,) + shapes[0][1:]).astype(np.float32),
              layer.top[1]: rng.integers(0, 10, size=(rows,) + shapes[1][1:]).astype(np.float32)}
    path = folder / f"{net_path.stem}_inputs.npz"
    np.savez(path, **arrays)
    return path


def steady_step(seconds: list[float]) -> float:
    """Median seconds per iteration after the warm-up (robust to load bursts)."""
    steps = np.diff(np.asarray(seconds[WARMUP - 1:], dtype=np.float64))
    return float(statistics.median(steps)) if len(steps) else float("nan")


def run_hovcaffe(spark, net_path: Path, npz: Path, ranks: int, iters: int, folder: Path, tuning=None,
                 threads: int = 1, connection: str | None = None, backend: str | None = None) -> dict:
    from hovcaffe.caffe.io import parse_solver
    from hovcaffe.distributed.runner import run_distributed
    from hovcaffe.options import DistributedOptions
    from hovcaffe.training.loop import TrainConfig

    solver_path = folder / f"{net_path.stem}_solver.prototxt"
    solver_path.write_text(SOLVER.format(net=net_path, iters=iters))
    config = TrainConfig(solver=parse_solver(solver_path.read_text()), solver_path=str(solver_path),
                         input_data=str(npz), snapshot_prefix=str(folder / f"{net_path.stem}_{ranks}"))
    options = DistributedOptions.resolve(
        {"num_proc": ranks, "threads_per_rank": threads, "connection": connection, "backend": backend},
        build_check=False, tuning=tuning)
    res = run_distributed(config, options, tensorboard=False, spark=spark)
    root = next(r for r in res.ranks if r.rank == 0)
    step = steady_step(root.iter_seconds)
    total_train = root.iter_seconds[-1]
    wait = statistics.mean(r.allreduce_wait_s for r in res.ranks) if ranks > 1 else 0.0
    return {"step_s": step, "first_s": res.seconds_to_first_iteration, "wall_s": res.wall_seconds,
            "allreduce_share": wait / total_train if total_train else 0.0, "startup": res.startup}


def peer_train(net_text: str, npz_path: str, iters: int, warmup: int) -> dict:
    """Plain DDP training of the same CaffeNet (runs in each TorchDistributor process).

    The reference, not hovcaffe: what a Spark user writes without hovcaffe (torch's SGD under
    DDP, its own process group). It therefore does not go through hovcaffe's Trainer or its
    launcher seam on purpose; hovcaffe's backends are measured by `run_hovcaffe`.
    """
    import time as _time

    import numpy as _np
    import torch
    import torch.distributed as dist

    from hovcaffe.caffe import caffe_pb2
    from hovcaffe.caffe.io import parse_net
    from hovcaffe.net import CaffeNet

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(1)
    net = CaffeNet(parse_net(net_text), caffe_pb2.TRAIN)
    groups: dict = {}
    for item in net.learnable_params():
        groups.setdefault((item.lr_mult, item.decay_mult), []).append(item.param)
    opt = torch.optim.SGD([{"params": ps, "lr": 0.01 * lr, "weight_decay": 5e-4 * dm}
                           for (lr, dm), ps in groups.items()], lr=0.01, momentum=0.9)
    model = torch.nn.parallel.DistributedDataParallel(net)
    with _np.load(npz_path) as data:
        arrays = {k: torch.from_numpy(data[k][rank::size]) for k in data.files}
    batch = next(iter(net.blob_shapes.values()))[0]
    count = next(iter(arrays.values())).shape[0] // batch
    stamps = []
    for i in range(iters):
        j = i % count
        inputs = {k: v[j * batch:(j + 1) * batch] for k, v in arrays.items()}
        opt.zero_grad()
        loss = net.objective(model(**inputs))
        loss.backward()
        opt.step()
        stamps.append(_time.time())
    dist.barrier()
    dist.destroy_process_group()
    return {"first_t": stamps[0], "stamps": stamps}


def run_peer(net_path: Path, npz: Path, iters: int) -> dict:
    from pyspark.ml.torch.distributor import TorchDistributor

    t0 = time.time()
    out = TorchDistributor(num_processes=2, local_mode=True, use_gpu=False).run(
        peer_train, net_path.read_text(), str(npz), iters, WARMUP)
    stamps = out["stamps"]
    steps = np.diff(np.asarray(stamps[WARMUP - 1:]))
    return {"step_s": float(statistics.median(steps)), "first_s": out["first_t"] - t0,
            "wall_s": time.time() - t0}


def tune(spark, folder: Path, iters: int) -> None:
    from hovcaffe.distributed.horovod_launcher import HorovodTuning

    net_path = PERF / NETS["lenet"][0]
    npz = make_inputs(net_path, folder)
    settings = [  # (label, connection, tuning, torch threads per rank, extra driver environment)
        ("hovcaffe defaults (auto = MPI here)", None, HorovodTuning(), 1, {}),
        ("MPI without yielding (busy polling)", "mpi", HorovodTuning(), 1,
         {"OMPI_MCA_mpi_yield_when_idle": "0"}),
        ("Gloo, hovcaffe's tuning", "gloo", HorovodTuning(), 1, {}),
        ("Gloo, per-parameter allreduce (groups 0)", "gloo", HorovodTuning(gradient_groups=0), 1, {}),
        ("Gloo, Horovod's own defaults", "gloo", HorovodTuning(cycle_time_ms=None, gradient_groups=0), 1, {}),
        ("Gloo, cycle 5 ms", "gloo", HorovodTuning(cycle_time_ms=5), 1, {}),
        ("Gloo, no tensor fusion", "gloo", HorovodTuning(fusion_threshold_mb=0), 1, {}),
        ("Gloo, no response cache", "gloo", HorovodTuning(cache_capacity=0), 1, {}),
        ("freed memory returned to the OS each iteration", None, HorovodTuning(), 1,
         {"HOVCAFFE_MALLOC_TUNING": "0"}),
        ("2 torch threads per rank", None, HorovodTuning(), 2, {}),
    ]
    print("\nHorovod settings, LeNet b64, 2 ranks:")
    for name, connection, tuning, threads, extra in settings:
        saved = {k: os.environ.get(k) for k in extra}
        os.environ.update(extra)
        try:
            r = run_hovcaffe(spark, net_path, npz, 2, iters, folder, tuning, threads=threads,
                             connection=connection)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        print(f"  {name:<42} {1000 * r['step_s']:7.1f} ms/it   allreduce wait {100 * r['allreduce_share']:4.1f}%"
              f"   first iteration {r['first_s']:.1f} s", flush=True)


GPU_NETS = {"caffenet": (PERF / "caffenet_b8.prototxt", (3, 227, 227)),
            "googlenet": (REPO / "tests" / "zoo" / "bvlc" / "bvlc_googlenet" / "train_val.prototxt", (3, 224, 224))}


def input_version(path: Path, batch: int, chw: tuple[int, ...]):
    """The net with its data layers replaced by one Input layer of `batch` images and labels."""
    from hovcaffe.caffe import caffe_pb2
    from hovcaffe.caffe.io import read_net

    net = read_net(str(path))
    kept = [l for l in net.layer if l.type not in ("Data", "Input", "ImageData", "HDF5Data")]
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    inp = out.layer.add(name="input", type="Input", top=["data", "label"])
    inp.input_param.shape.add(dim=[batch, *chw])
    inp.input_param.shape.add(dim=[batch])
    out.layer.extend(kept)
    return out


def run_gpu(iters: int, batches=(32, 64), device: str = "cuda") -> None:
    """1 rank on the GPU: CaffeNet and GoogLeNet training images/s (hovcaffe's Trainer, fp32)."""
    import torch

    from hovcaffe.caffe.io import parse_solver, write_prototxt
    from hovcaffe.training.hooks import TrainCallback
    from hovcaffe.training.loop import TrainConfig, Trainer

    class Clock(TrainCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_iteration(self, record):
            if record.lr is not None:
                self.seconds.append(record.seconds)

    folder = Path(tempfile.mkdtemp(prefix="hovcaffe-gpu-"))
    if device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, cudnn "
              f"{torch.backends.cudnn.version()}, TF32 convolutions {torch.backends.cudnn.allow_tf32}")
    for name, (path, chw) in GPU_NETS.items():
        for batch in batches:
            net_path = folder / f"{name}_b{batch}.prototxt"
            write_prototxt(input_version(path, batch, chw), str(net_path))
            rng = np.random.default_rng(0)
            npz = folder / f"{name}_b{batch}.npz"
            np.savez(npz, data=rng.standard_normal((2 * batch, *chw), dtype=np.float32),
                     label=rng.integers(0, 1000, size=2 * batch).astype(np.float32))
            solver = SOLVER.format(net=net_path, iters=WARMUP + iters).replace("base_lr: 0.01", "base_lr: 0.0001")
            config = TrainConfig(solver=parse_solver(solver), solver_path=str(folder / "solver.prototxt"),
                                 input_data=str(npz), device=device, snapshot_prefix=str(folder / name))
            clock = Clock()
            Trainer(config, callbacks=[clock]).solve()
            step = steady_step(clock.seconds)
            print(f"  {name:<10} batch {batch:3d}: {1000 * step:7.1f} ms/it  {batch / step:8.0f} images/s",
                  flush=True)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()


#: contender -> (launcher backend or "peer", transport, ranks); each runs cold in its own process
CONTENDERS: dict[str, tuple[str, str | None, int]] = {
    "hovcaffe 1 rank": ("torch", None, 1),
    "torch backend 2 (Gloo)": ("torch", None, 2),
    "Horovod 2 (MPI)": ("horovod", "mpi", 2),
    "Horovod 2 (Gloo)": ("horovod", "gloo", 2),
    "TorchDistributor 2 (Gloo)": ("peer", None, 2),
}


def _installed(backend: str) -> bool:
    """Whether hovcaffe's launcher `backend` can run here (its own `missing()` check)."""
    from hovcaffe.distributed.backend import registered_backends

    return registered_backends()[backend].missing() is None


def run_contender(name: str, net: str, iters: int) -> dict:
    """One contender, cold: this process starts its own Spark session and runs it once."""
    backend, connection, ranks = CONTENDERS[name]
    from hovcaffe.utils.spark import get_spark

    folder = Path(tempfile.mkdtemp(prefix="hovcaffe-scaling-"))
    net_path = PERF / NETS[net][0]
    npz = make_inputs(net_path, folder)
    t0 = time.time()
    spark = get_spark("local[2]", app_name="hovcaffe-scaling")
    session_s = time.time() - t0
    if backend == "peer":
        result = run_peer(net_path, npz, iters)
    else:
        result = run_hovcaffe(spark, net_path, npz, ranks, iters, folder, connection=connection,
                              backend=backend)
    spark.stop()
    keep = ("step_s", "first_s", "wall_s", "allreduce_share", "startup")
    return {"session_s": session_s, **{k: result[k] for k in keep if k in result}}


def _run_cold(name: str, net: str, iters: int) -> dict | None:
    """`run_contender` in a fresh interpreter; None (and the reason printed) when it fails."""
    import json
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--nets", net,
           "--iterations", str(iters)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"  {name}: failed (exit {out.returncode}): {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default="lenet,cifar10_quick")
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--contenders", default=None,
                   help="comma-separated names (or unique prefixes) of CONTENDERS; default all")
    p.add_argument("--startup", action="store_true",
                   help="also print rank 0's start-up steps (seconds since the call) per contender")
    p.add_argument("--repeats", type=int, default=1,
                   help="cold runs per contender, interleaved; the median of each figure is shown")
    p.add_argument("--tune", action="store_true", help="only the Horovod settings table (LeNet)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--gpu", action="store_true", help="only the 1-rank GPU variant (no Spark)")
    p.add_argument("--gpu-batches", default="32,64")
    p.add_argument("--gpu-device", default="cuda")
    args = p.parse_args()
    if args.gpu:
        run_gpu(args.iterations, tuple(int(b) for b in args.gpu_batches.split(",")), args.gpu_device)
        return
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ["OMP_NUM_THREADS"] = "1"
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.child:
        import json

        print("RESULT " + json.dumps(run_contender(args.child, args.nets, args.iterations)), flush=True)
        return
    if args.tune:
        from hovcaffe.utils.spark import get_spark

        spark = get_spark("local[2]", app_name="hovcaffe-scaling")
        tune(spark, Path(tempfile.mkdtemp(prefix="hovcaffe-scaling-")), args.iterations)
        spark.stop()
        return
    wanted = [w.strip() for w in (args.contenders or "").split(",") if w.strip()]
    names = [n for n in CONTENDERS if CONTENDERS[n][0] == "peer" or _installed(CONTENDERS[n][0])]
    if wanted:
        names = [n for n in names if any(n.startswith(w) for w in wanted)]
    if len(names) < len(CONTENDERS):
        print("left out (not installed or not asked for): " + ", ".join(n for n in CONTENDERS if n not in names))
    for net in [n.strip() for n in args.nets.split(",") if n.strip() in NETS]:
        batch = NETS[net][1]
        runs: dict[str, list[dict]] = {n: [] for n in names}
        for _ in range(args.repeats):  # interleaved, so that a load burst hits every contender alike
            for name in names:
                r = _run_cold(name, net, args.iterations)
                if r is not None:
                    runs[name].append(r)
        med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "startup"}
               for n, rs in runs.items() if rs}
        print(f"\n{net} (batch {batch} per rank, 1 thread per rank, {args.iterations} iterations, "
              f"each contender cold in its own process, median of {args.repeats})")
        print(f"  {'':<28}{'ms/it':>8}{'samples/s':>11}{'session (s)':>13}{'first it (s)':>14}{'allreduce':>11}")
        for name, r in med.items():
            ranks = CONTENDERS[name][2]
            share = f"{100 * r['allreduce_share']:.1f}%" if ranks > 1 and "allreduce_share" in r else "-"
            print(f"  {name:<28}{1000 * r['step_s']:8.1f}{ranks * batch / r['step_s']:11.0f}"
                  f"{r['session_s']:13.1f}{r['first_s']:14.1f}{share:>11}")
        if args.startup:
            for name, rs in runs.items():
                for r in rs:
                    if r.get("startup"):
                        steps = ", ".join(f"{k} {v:.2f}" for k, v in r["startup"].items())
                        print(f"  {name} start-up (s since the call): {steps}")
        peer = med.get("TorchDistributor 2 (Gloo)")
        one = med.get("hovcaffe 1 rank")
        for name in ("torch backend 2 (Gloo)", "Horovod 2 (MPI)", "Horovod 2 (Gloo)"):
            if name not in med:
                continue
            r = med[name]
            line = f"  {name}:"
            if one:
                line += f" scaling efficiency {100 * one['step_s'] / r['step_s']:.0f}%,"
            if peer:
                line += (f" step time / peer {r['step_s'] / peer['step_s']:.2f} (target <= 1.05),"
                         f" first iteration / peer {r['first_s'] / peer['first_s']:.2f} (target <= 1)")
            print(line)


if __name__ == "__main__":
    main()
