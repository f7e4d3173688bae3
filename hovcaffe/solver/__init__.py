"""Caffe's solvers as torch optimizers, its lr policies, and .solverstate snapshots.

- `registry`: the SolverInfo table and `build_optimizer(solver_param, net.learnable_params())`;
- `base`, `sgd`, `adagrad`, `rmsprop`, `adadelta`, `adam`: the update rules
  (docs/caffe-semantics.md#update-rules);
- `lr_policy`: Caffe's learning-rate policies, float32-exact;
- `state`: .solverstate (Caffe's binary/HDF5 format).

The training loop, its nets, feeds, test passes, signals and checkpoints are in
`hovcaffe.training`.
"""
from hovcaffe.solver.base import CaffeOptimizer
from hovcaffe.solver.lr_policy import LrConfig, LrPolicy
from hovcaffe.solver.registry import SOLVERS, SolverInfo, build_optimizer, list_solvers, solver_info

__all__ = ["CaffeOptimizer", "LrConfig", "LrPolicy", "SOLVERS", "SolverInfo", "build_optimizer",
           "list_solvers", "solver_info"]
