"""The one rule for paths and URLs: which strings are URLs, which name this machine's files, and
where a relative path found inside solver, net and list files is looked for.

Caffe opens every relative path (`net:`, data `source:`, the .h5 files of a list, `mean_file`)
against the *current directory*, so Caffe users run `caffe train` from a fixed folder (usually the
Caffe root). hovcaffe does the same first and, when nothing exists there, tries the folder of the
file that names the path - so a solver folder can be run from anywhere. URLs (`scheme://...`) and
absolute paths are used as they are; `file:` URLs name local files.

Pure string and `os.path` work: opening a URL's filesystem is `hovcaffe.data.storage`'s job.
"""
from __future__ import annotations

import os
import posixpath
import re
import urllib.parse
from pathlib import Path

from hovcaffe.errors import DataSourceError

PATH_RULE_HELP = ("Relative paths inside solver/net/list files (net:, source:, .h5 lists, "
                  "mean_file) are looked up in the current directory first, as Caffe does, then "
                  "in the folder of the file that names them.")

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: str) -> bool:
    """True for `scheme://...` strings (hdfs://, s3://, file://) and CaffeOnSpark's `file:/abs`;
    false for plain paths, also those with a colon in a file name."""
    text = str(path)
    return bool(_URL.match(text)) or text.lower().startswith("file:/")


def local_path(url: str) -> str | None:
    """The absolute local path that a plain path or a `file:` URL names; None for other URLs.

    `~` is expanded in plain paths; %-escapes are decoded in `file:` URLs. A relative plain path is
    taken against the current directory (use `find_path` for paths named inside a file).
    """
    text = str(url)
    if not is_url(text):
        return os.path.abspath(os.path.expanduser(text))
    parts = urllib.parse.urlsplit(text)
    if parts.scheme.lower() != "file":
        return None
    return os.path.abspath(urllib.parse.unquote(parts.path))


def is_local(url: str) -> bool:
    """Plain paths and `file:` URLs."""
    return local_path(url) is not None


def url_dirname(url: str) -> str:
    """The folder of `url`: a URL's parent URL, or a local path's absolute parent folder."""
    return posixpath.dirname(url.rstrip("/")) if is_url(url) else os.path.dirname(os.path.abspath(url))


def url_join(folder_url: str, name: str) -> str:
    """`name` inside `folder_url` (a URL or a local folder)."""
    return folder_url.rstrip("/") + "/" + name if is_url(folder_url) else os.path.join(folder_url, name)


def candidates(path: str | os.PathLike, base_dir: str | os.PathLike | None) -> list[Path]:
    """The places `path` is looked for, in order (see the module docstring)."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute() or base_dir is None:
        return [p]
    out = [p]
    alt = Path(base_dir) / p
    if alt != p:
        out.append(alt)
    return out


def find_path(path: str | os.PathLike, base_dir: str | os.PathLike | None) -> Path | None:
    """The first of `candidates(path, base_dir)` that exists; None when none does, or for a URL."""
    if is_url(str(path)):
        return None
    return next((cand for cand in candidates(path, base_dir) if cand.exists()), None)


def resolve_path(path: str | os.PathLike, base_dir: str | os.PathLike | None, *,
                 what: str = "file", named_in: str | None = None) -> str:
    """Resolve a relative path named inside a file: current directory first, then `base_dir`.

    Args:
        path: the path as written in the file (URLs are returned unchanged).
        base_dir: the folder of the file that names `path` (None: current directory only).
        what: what the path is, for the error message ("net", "HDF5 list", ...).
        named_in: the file that names it, for the error message.

    Returns:
        The first existing candidate, as a string.

    Raises:
        DataSourceError: nothing exists at any candidate; the message lists where it looked.
    """
    if is_url(str(path)):
        return str(path)
    found = find_path(path, base_dir)
    if found is not None:
        return str(found)
    tried = candidates(path, base_dir)
    where = f" (named in {named_in})" if named_in else ""
    raise DataSourceError(
        f"{what} {str(path)!r}{where} not found; looked at "
        f"{', '.join(repr(str(c)) for c in tried)}. {PATH_RULE_HELP}")
