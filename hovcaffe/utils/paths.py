"""The one rule for relative paths found inside solver, net and list files.

Caffe opens every relative path (`net:`, data `source:`, the .h5 files of a list, `mean_file`)
against the *current directory*, so Caffe users run `caffe train` from a fixed folder (usually the
Caffe root). hovcaffe does the same first and, when nothing exists there, tries the folder of the
file that names the path - so a solver folder can be run from anywhere. URLs (`scheme://...`) and
absolute paths are used as they are.
"""
from __future__ import annotations

import os
import re
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
    tried = candidates(path, base_dir)
    for cand in tried:
        if cand.exists():
            return str(cand)
    where = f" (named in {named_in})" if named_in else ""
    raise DataSourceError(
        f"{what} {str(path)!r}{where} not found; looked at "
        f"{', '.join(repr(str(c)) for c in tried)}. {PATH_RULE_HELP}")
