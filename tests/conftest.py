"""Shared test fixtures and paths.

Oracle data (reference numbers from real BVLC Caffe) lives in tests/oracle (a copy of the small
cases). The two big cases (forward/caffenet, forward/googlenet) are only read from ../shared/oracle
next to the repo, when it exists.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ORACLE = REPO / "tests" / "oracle"
SHARED_ORACLE = REPO.parent / "shared" / "oracle"
ZOO = REPO / "tests" / "zoo"
BIG_FORWARD_CASES = ("caffenet", "googlenet")

# Keep every test on loopback (Spark binds to the external interface otherwise).
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def forward_case_dir(case: str) -> Path:
    """Folder of oracle forward case `case`; skips the test when a big case is unavailable."""
    if case in BIG_FORWARD_CASES:
        path = SHARED_ORACLE / "forward" / case
        if not path.is_dir():
            pytest.skip(f"oracle case {case!r} is not copied into the repo (too big); it is read from "
                        f"{SHARED_ORACLE}, which does not exist on this machine")
        return path
    return ORACLE / "forward" / case


def forward_cases(include_big: bool = True) -> list[str]:
    names = sorted(p.name for p in (ORACLE / "forward").iterdir() if p.is_dir())
    return names + (list(BIG_FORWARD_CASES) if include_big else [])


def train_cases() -> list[str]:
    return sorted(p.name for p in (ORACLE / "train").iterdir() if p.is_dir() and not p.name.startswith("_"))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def load_json(path: Path):
    return json.loads(Path(path).read_text())
