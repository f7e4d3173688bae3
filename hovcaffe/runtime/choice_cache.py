"""Where `--fast auto` remembers what it measured: one JSON file of records keyed by what decides
the outcome - the net, its input shapes, the thread count, the device and the torch version.

The folder is ``$HOVCAFFE_CACHE`` when set, else ``~/.cache/hovcaffe``. A cache that cannot be
read or written is not an error: the choice is measured again (and logged).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Mapping

import torch

from hovcaffe.utils.fileio import atomic_open

log = logging.getLogger(__name__)

CACHE_FILE = "fast_path.json"


@dataclasses.dataclass
class FastRecord:
    """One measured choice: the winning path and the timings that chose it (ms per pass,
    compile seconds paid once at start-up)."""

    path: str
    eager_ms: float
    fast_ms: float
    compile_s: float


def cache_dir() -> Path:
    """``$HOVCAFFE_CACHE``, else ``~/.cache/hovcaffe``."""
    env = os.environ.get("HOVCAFFE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "hovcaffe"


def device_name(device: torch.device) -> str:
    """The device as the choice depends on it: the GPU model for CUDA, else the device type."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def choice_key(net, inputs: Mapping[str, torch.Tensor], *, training: bool,
               candidates: tuple[str, ...]) -> str:
    """A hex digest of everything the measured winner depends on.

    Args:
        net: the built CaffeNet (its filtered NetParameter identifies the net).
        inputs: the sample batch (names, shapes and dtypes).
        training: forward+backward (True) or inference only.
        candidates: the fast paths that were compared.
    """
    first = next(iter(inputs.values()), None)
    device = first.device if first is not None else torch.device("cpu")
    facts = {
        "net": hashlib.sha256(net.net_param.SerializeToString(deterministic=True)).hexdigest(),
        "phase": int(net.phase),
        "inputs": sorted((name, list(t.shape), str(t.dtype)) for name, t in inputs.items()),
        "threads": torch.get_num_threads(),
        "device": device_name(device),
        "torch": torch.__version__,
        "training": training,
        "candidates": sorted(candidates),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


class ChoiceCache:
    """The records file in `folder` (default `cache_dir()`)."""

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        self.path = Path(folder) / CACHE_FILE if folder else cache_dir() / CACHE_FILE

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("fast-path cache %s unreadable (%s); measuring again", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> FastRecord | None:
        entry = self._read().get(key)
        try:
            return FastRecord(**entry) if isinstance(entry, dict) else None
        except TypeError:  # written by another version of this record
            return None

    def put(self, key: str, record: FastRecord) -> None:
        data = self._read()
        data[key] = dataclasses.asdict(record)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(self.path, "w") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
        except OSError as exc:
            log.warning("fast-path cache %s not written (%s)", self.path, exc)
