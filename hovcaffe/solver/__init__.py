"""Caffe's solvers as torch optimizers, its lr policies, and .solverstate snapshots.

- `registry`: the SolverInfo table and `build_optimizer(solver_param, net.learnable_params())`;
- `base`, `sgd`, `adagrad`, `rmsprop`, `adadelta`, `adam`: the update rules (caffe-semantics §14.3/14.5);
- `lr_policy`: Caffe's learning-rate policies, float32-exact;
- `nets`: the train/test NetParameters and NetStates a SolverParameter describes;
- `inputs`: data feeds for a net (data layers, source overrides, .npz for Input blobs);
- `scoring`: Caffe's test pass (mean of each output);
- `state`: .solverstate (Caffe's binary/HDF5 format) plus hovcaffe's resume sidecar;
- `snapshot`: snapshot file names and the crash-safe write of a snapshot set;
- `restore`: writing a trainer's snapshot and resuming from one;
- `signals`: SIGINT/SIGTERM/SIGHUP as requests polled by the loop;
- `paths`: the rule for relative paths inside solver/net/list files.

The loop itself is `hovcaffe.train`.
"""
from hovcaffe.solver.base import CaffeOptimizer
from hovcaffe.solver.lr_policy import LrConfig, LrPolicy
from hovcaffe.solver.registry import SOLVERS, SolverInfo, build_optimizer, list_solvers, solver_info

__all__ = ["CaffeOptimizer", "LrConfig", "LrPolicy", "SOLVERS", "SolverInfo", "build_optimizer",
           "list_solvers", "solver_info"]
