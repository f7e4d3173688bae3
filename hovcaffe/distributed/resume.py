"""Finding the last complete snapshot of a run (`-resume`).

A snapshot is `<prefix>_iter_<N>.caffemodel[.h5]` + `<prefix>_iter_<N>.solverstate[.h5]`
(+ hovcaffe's `.hovcaffe.json` sidecar). The trainer writes the solverstate last and every file
atomically, so a solverstate with its caffemodel beside it is a complete snapshot; a crash
mid-snapshot leaves at most the model of an incomplete one, which is skipped.
"""
from __future__ import annotations

import logging
import posixpath
import re

from hovcaffe.data import storage

log = logging.getLogger(__name__)


def list_snapshots(prefix: str) -> list[tuple[int, str, str]]:
    """(iteration, solverstate URL, caffemodel URL) of the complete snapshots of `prefix`, newest first.

    Args:
        prefix: the snapshot prefix (a plain path or a URL), as `snapshot_prefix` means it.
    """
    folder_url, stem = posixpath.split(prefix.rstrip("/"))
    folder = storage.resolve(folder_url or ".")
    if not folder.is_dir():
        return []
    pattern = re.compile(re.escape(stem) + r"_iter_(\d+)\.solverstate(\.h5)?$")
    names = {info.base_name for info in folder.list_files()}
    found = []
    for name in names:
        m = pattern.match(name)
        if not m:
            continue
        model = f"{stem}_iter_{m.group(1)}.caffemodel{m.group(2) or ''}"
        if model not in names:
            log.warning("skipping %s: its %s is missing", name, model)
            continue
        found.append((int(m.group(1)), folder.child(name).url, folder.child(model).url))
    return sorted(found, reverse=True)


def latest_snapshot(prefix: str) -> tuple[int, str, str] | None:
    """The newest complete snapshot of `prefix`, or None when there is none."""
    snaps = list_snapshots(prefix)
    return snaps[0] if snaps else None
