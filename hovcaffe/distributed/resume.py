"""Finding the last complete snapshot of a run (`-resume`).

Snapshot names follow `hovcaffe.training.checkpoints.SnapshotFiles`. The trainer writes the
solverstate last and every file atomically, so a solverstate with its caffemodel beside it is a complete snapshot; a crash
mid-snapshot leaves at most the model of an incomplete one, which is skipped.
"""
from __future__ import annotations

import posixpath

from hovcaffe.data import storage
from hovcaffe.training.checkpoints import find_snapshots


def list_snapshots(prefix: str) -> list[tuple[int, str, str]]:
    """(iteration, solverstate URL, caffemodel URL) of the complete snapshots of `prefix`, newest first.

    Args:
        prefix: the snapshot prefix (a plain path or a URL), as `snapshot_prefix` means it.
    """
    folder_url, stem = posixpath.split(prefix.rstrip("/"))
    folder = storage.resolve(folder_url or ".")
    if not folder.is_dir():
        return []
    names = [info.base_name for info in folder.list_files()]
    return [(it, folder.child(snap.state).url, folder.child(snap.model).url)
            for it, snap in find_snapshots(names, stem)]


def latest_snapshot(prefix: str) -> tuple[int, str, str] | None:
    """The newest complete snapshot of `prefix`, or None when there is none."""
    snaps = list_snapshots(prefix)
    return snaps[0] if snaps else None
