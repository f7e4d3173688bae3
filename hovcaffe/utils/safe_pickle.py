"""Unpickling bytes from a user's storage without running what they name.

``pickle.loads`` imports and calls every global a pickle names (``os.system`` included), so a pickle
found in a user's folder is as dangerous as a script from it. :func:`restricted_loads` resolves each
global through an allow-list the caller gives; any other name stops the load before anything is
called, with a :class:`~hovcaffe.errors.DataSourceError` that names the file and the refused global.
"""
from __future__ import annotations

import io
import pickle
from typing import Any, Callable, Mapping

from hovcaffe.errors import DataSourceError

# "module.name" as written in the pickle -> a function returning the object to use for it (lazy,
# so that allowing a name costs no import until a pickle uses it).
AllowList = Mapping[str, Callable[[], Any]]


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, allowed: AllowList):
        super().__init__(io.BytesIO(data))
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        resolve = self._allowed.get(f"{module}.{name}")
        if resolve is None:
            raise RefusedGlobal(f"{module}.{name}")
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedGlobal(f"persistent id {pid!r}")


def restricted_loads(data: bytes, allowed: AllowList, *, where: str, what: str) -> Any:
    """Unpickle `data`, resolving globals only through `allowed`.

    Args:
        data: the pickle bytes.
        allowed: the names the pickle may use (see :data:`AllowList`).
        where: the file (URL) the bytes came from, for the error message.
        what: what the pickle should hold (``"Petastorm Unischema"``), for the error message.

    Raises:
        DataSourceError: a refused global (nothing was called), or bytes that are not such a pickle.
    """
    try:
        return _AllowListUnpickler(data, allowed).load()
    except RefusedGlobal as exc:
        raise DataSourceError(f"{where}: refused to load its {what}: the pickle names {exc.name}, "
                              f"which a {what} never holds (nothing was run)") from None
    except Exception as exc:  # noqa: BLE001 - any failure of allowed constructors on bad bytes
        raise DataSourceError(f"{where}: its {what} is not readable: {type(exc).__name__}: {exc}"
                              ) from None
