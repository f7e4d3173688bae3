"""Every error hovcaffe raises on purpose.

One root (`HovcaffeError`) so callers can catch "our" failures apart from bugs.
Each class carries the CLI exit code that fits it: 2 for mistakes in what the user
gave us (files, flags, specs), 1 for failures while running. Messages say what,
where, why and - when there is one - the fix.
"""
from __future__ import annotations

EXIT_RUNTIME = 1
EXIT_USAGE = 2


class HovcaffeError(Exception):
    """Root of hovcaffe's own errors."""

    exit_code = EXIT_RUNTIME


class UserInputError(HovcaffeError, ValueError):
    """Something the user supplied (a file, a flag, a spec) is wrong."""

    exit_code = EXIT_USAGE


class PrototxtError(UserInputError):
    """A prototxt (or binary proto) file does not parse or does not fit the schema.

    Attributes:
        path: the file, or "<string>" for text given directly.
        line, column: 1-based position of the problem when known.
    """

    def __init__(self, message: str, path: str = "<string>", line: int | None = None,
                 column: int | None = None):
        self.path, self.line, self.column, self.reason = path, line, column, message
        where = path if line is None else f"{path}:{line}:{column or 1}"
        super().__init__(f"{where}: {message}")


class UnsupportedLayerError(UserInputError):
    """A layer type hovcaffe has no builder for (or refuses, like Python)."""


class NetDefinitionError(UserInputError):
    """The net is well-formed text but not a valid Caffe net (unknown bottom, bad params...)."""


class ShapeError(NetDefinitionError):
    """Blob shapes do not fit a layer; the message names the layer and both shapes."""


class WeightsError(UserInputError):
    """A .caffemodel / checkpoint cannot be read or does not fit the net."""


class SolverError(UserInputError):
    """A solver prototxt is inconsistent (missing lr_policy, bad momentum for AdaGrad...)."""


class DataSourceError(UserInputError):
    """A data URL or file cannot be read; the message names the URL and the reason."""


class TrainingDiverged(HovcaffeError):
    """The training loss became NaN or infinite."""


class SnapshotWriteError(HovcaffeError):
    """A snapshot file could not be written (disk full, quota, permissions): a runtime error.

    Attributes:
        path: the file being written when it failed.
    """

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


class DistributedError(HovcaffeError):
    """A rank failed, or the cluster cannot run the requested ranks."""


class JobSpecError(UserInputError):
    """A batch-job spec file is invalid; the message names the key and the file."""


class JobLockedError(HovcaffeError):
    """Another run of the same job holds its lock."""

    exit_code = 3
