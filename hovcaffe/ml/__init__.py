"""Spark ML stages for Caffe nets: :class:`CaffeEstimator` (fit) and :class:`CaffeModel` (transform).

Both behave like any ``pyspark.ml`` stage: Params with defaults and docs (``explainParams()``),
``ParamGridBuilder`` / ``CrossValidator`` tuning, ``Pipeline`` membership, and ``save`` / ``load``
(a model's weights and prototxts are stored as files next to the stage metadata).

Imports are lazy: Spark tasks import ``hovcaffe.ml.materialize`` / ``hovcaffe.ml.inference`` by
reference, and should not pay for the estimator's training stack (torch, solvers) on every worker.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "CaffeEstimator": "hovcaffe.ml.estimator",
    "CaffeModel": "hovcaffe.ml.model",
    "TrainingHistory": "hovcaffe.ml.history",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hovcaffe.ml' has no attribute {name!r}")
