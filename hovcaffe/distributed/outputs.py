"""Where rank 0 writes: snapshots and the final model, on a local disk or any storage URL.

The training loop writes snapshots to local files (atomically). When `-model` names a remote
URL (hdfs://, s3://, ...), rank 0 writes into a local staging folder and copies every complete
snapshot - caffemodel and sidecar first, solverstate last, like the local writer - to the folder of
`-model`; the final model goes to `-model` itself. Plain paths and file:// URLs are written in place.
"""
from __future__ import annotations

import logging
import os
import shutil

from hovcaffe.data import storage
from hovcaffe.errors import DataSourceError, UserInputError
from hovcaffe.utils.fileio import atomic_open
# The URL rules live in utils/paths; distributed/ uses them under these names.
from hovcaffe.utils.paths import is_local, local_path, url_dirname  # noqa: F401
from hovcaffe.utils.paths import url_join as join  # noqa: F401

log = logging.getLogger(__name__)


def upload(local_file: str, url: str) -> None:
    """Copy a local file to `url` (a temporary name first, then a rename where the store has one)."""
    if is_local(url):
        dest = local_path(url)
        if os.path.abspath(local_file) != dest:
            with open(local_file, "rb") as src, atomic_open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
        return
    loc = storage.resolve(url)
    tmp = storage.Location(loc.fs, loc.path + ".tmp-upload", url + ".tmp-upload")
    with open(local_file, "rb") as fh:
        data = fh.read()
    tmp.write_bytes(data)
    try:
        loc.fs.move(tmp.path, loc.path)
    except (OSError, NotImplementedError):  # stores without rename: write in place
        loc.write_bytes(data)
        loc.fs.delete_file(tmp.path)


def download(url: str, local_file: str) -> str:
    """Copy `url` to `local_file` (plain paths are returned as they are)."""
    if is_local(url):
        return local_path(url)
    data = storage.require(url, what="snapshot file").read_bytes()
    os.makedirs(os.path.dirname(local_file) or ".", exist_ok=True)
    with open(local_file, "wb") as fh:
        fh.write(data)
    return local_file


def check_writable(folder_url: str) -> None:
    """Create `folder_url` if needed and prove a file can be written there (and removed).

    Raises:
        UserInputError: the folder cannot be created or written; the message names it and why.
    """
    probe_name = f".hovcaffe-write-probe-{os.getpid()}"
    try:
        if is_local(folder_url):
            folder = local_path(folder_url)
            os.makedirs(folder, exist_ok=True)
            probe = os.path.join(folder, probe_name)
            with open(probe, "wb") as fh:
                fh.write(b"ok")
            os.unlink(probe)
            return
        loc = storage.resolve(folder_url)
        if not loc.is_dir():  # some stores (FTP) refuse to create a folder that exists
            loc.fs.create_dir(loc.path, recursive=True)
        child = loc.child(probe_name)
        child.write_bytes(b"ok")
        loc.fs.delete_file(child.path)
    except (OSError, DataSourceError) as exc:
        raise UserInputError(f"model output {folder_url!r} is not writable: {exc}") from exc
