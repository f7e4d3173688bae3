"""Where step inputs and outputs live: local paths, `file://` URLs, or any fsspec URL.

A URL that ends in `/` names a directory output. Outputs are first written to a *staged*
sibling (`.tmp-<stem>.<run_key>.<ending>`, a name no reader looks for) and published by renaming it
into place, so a reader sees the previous output or the complete new one, never half of one.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from hovcaffe.utils import paths
from hovcaffe.utils.fileio import fsync_dir

SUCCESS_MARKER = "_SUCCESS"


def _fsspec():
    import fsspec  # imported lazily: only remote outputs need it
    return fsspec


def known_scheme(scheme: str) -> bool:
    """Whether fsspec knows the URL scheme (a spec error otherwise)."""
    try:
        from fsspec.registry import known_implementations, registry
    except ImportError:
        return False
    return scheme in known_implementations or scheme in registry


@dataclass(frozen=True)
class StepPlace:
    """One input or output place.

    Attributes:
        url: as written (after templating), for messages and the summary.
        path: the local path when the place is on this machine's file system, else None.
        is_dir: the URL ended in `/` (a directory output, published with a `_SUCCESS` marker).
    """

    url: str
    path: Path | None
    is_dir: bool

    @classmethod
    def parse(cls, url: str, base_dir: Path) -> "StepPlace":
        """Read `url`; relative local paths are taken against `base_dir`."""
        is_dir = url.endswith("/")
        # The project's URL rule (utils/paths); only relative paths differ: they belong to the spec.
        local = paths.local_path(url) if paths.is_url(url) else os.path.expanduser(url)
        if local is None:
            return cls(url, None, is_dir)
        path = Path(local)
        return cls(url, (path if path.is_absolute() else base_dir / path), is_dir)

    @property
    def scheme(self) -> str:
        return "" if self.path is not None else urlparse(self.url).scheme

    @property
    def arg(self) -> str:
        """How to hand the place to a command: the local path, or the URL."""
        if self.path is not None:
            return str(self.path) + ("/" if self.is_dir else "")
        return self.url

    def staged(self, run_key: str) -> "StepPlace":
        """The hidden sibling a step writes to before publishing."""
        name = self.arg.rstrip("/").rsplit("/", 1)
        parent, base = (name[0], name[1]) if len(name) == 2 else ("", name[0])
        # The run key goes before the name's first dot: the staged file keeps its ending
        # (`.caffemodel`, `.caffemodel.h5`, `.onnx`), which is how the next step tells its format.
        stem, dot, ending = base.partition(".")
        staged = f"{parent}/.tmp-{stem}.{run_key}{dot}{ending}" + ("/" if self.is_dir else "")
        if self.path is not None:
            return StepPlace(staged, Path(staged.rstrip("/")), self.is_dir)
        return StepPlace(staged, None, self.is_dir)

    # ------------------------------------------------------------------ file-system operations
    def exists(self) -> bool:
        if self.path is not None:
            return self.path.exists()
        fs, p = _fsspec().core.url_to_fs(self.url)
        return fs.exists(p)

    def complete(self) -> bool:
        """Exists, and for a directory also carries its `_SUCCESS` marker."""
        if not self.is_dir:
            return self.exists()
        return self.child(SUCCESS_MARKER).exists()

    def child(self, name: str) -> "StepPlace":
        if self.path is not None:
            return StepPlace(str(self.path / name), self.path / name, False)
        return StepPlace(self.url.rstrip("/") + "/" + name, None, False)

    def remove(self) -> None:
        """Delete the file or directory if it is there."""
        if self.path is not None:
            if self.path.is_dir() and not self.path.is_symlink():
                shutil.rmtree(self.path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            return
        fs, p = _fsspec().core.url_to_fs(self.url)
        if fs.exists(p):
            fs.rm(p, recursive=True)

    def make_parent(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        else:
            fs, p = _fsspec().core.url_to_fs(self.url)
            fs.makedirs(p.rstrip("/").rsplit("/", 1)[0], exist_ok=True)

    def put_file(self, source: Path) -> None:
        """Copy a local file here (this location is a staged, hidden name)."""
        self.make_parent()
        if self.path is not None:
            shutil.copyfile(source, self.path)
        else:
            fs, p = _fsspec().core.url_to_fs(self.url)
            fs.put_file(str(source), p)


def publish(staged: StepPlace, dest: StepPlace) -> None:
    """Move a complete staged output to its final place.

    Local files: one `os.replace` (atomic). Local directories: `_SUCCESS` is written into the
    staged directory, then it is renamed into place (an older directory is moved aside first and
    deleted after, so there is a moment with no directory but never a half one). Remote URLs:
    moved with fsspec, and for directories `_SUCCESS` is written last, so readers that wait for
    the marker never read a partial directory.
    """
    if dest.path is not None and staged.path is not None:
        dest.path.parent.mkdir(parents=True, exist_ok=True)
        if not dest.is_dir:
            os.replace(staged.path, dest.path)
        else:
            (staged.path / SUCCESS_MARKER).touch()
            old = dest.path.with_name(f".old-{dest.path.name}.{os.getpid()}")
            if dest.path.exists():
                os.rename(dest.path, old)
            os.rename(staged.path, dest.path)
            shutil.rmtree(old, ignore_errors=True)
        fsync_dir(dest.path.parent)
        return
    fs, src = _fsspec().core.url_to_fs(staged.url)
    _, dst = _fsspec().core.url_to_fs(dest.url)
    src, dst = src.rstrip("/"), dst.rstrip("/")
    if dest.is_dir:
        if fs.exists(dst):
            fs.rm(dst, recursive=True)
        fs.mv(src, dst, recursive=True)
        fs.touch(dst + "/" + SUCCESS_MARKER)
    else:
        fs.mv(src, dst)

