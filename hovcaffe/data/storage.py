"""Data addressed by URL: plain paths, ``file://``, ``hdfs://``, ``s3://`` (and any fsspec scheme).

Every reader and converter in the data room goes through :func:`resolve`, which returns a pyarrow
``FileSystem`` and the path inside it, so Parquet, image and list files are read the same way from
a laptop folder or a cluster store.

HDFS uses ``pyarrow.fs.HadoopFileSystem``, which loads ``libhdfs.so`` through JNI at run time: the
machine needs a Hadoop client (``HADOOP_HOME``), Java, ``CLASSPATH=$(hadoop classpath --glob)`` and,
when libhdfs is not under ``$HADOOP_HOME/lib/native``, ``ARROW_LIBHDFS_DIR``. ``s3://`` goes through
s3fs when it is installed (credentials from the usual AWS variables/files), else pyarrow's own S3.
"""
from __future__ import annotations

import os
import posixpath
import urllib.parse
from dataclasses import dataclass

import pyarrow.fs as pafs

from hovcaffe.errors import DataSourceError
from hovcaffe.utils import paths
from hovcaffe.utils.paths import is_url  # noqa: F401  (storage.is_url is used across the data room)

HDFS_HELP = ("hdfs:// needs a Hadoop client on this machine: libhdfs.so (set ARROW_LIBHDFS_DIR or "
             "HADOOP_HOME), Java, and CLASSPATH=$(hadoop classpath --glob)")


@dataclass(frozen=True)
class Location:
    """A resolved URL: the filesystem, the path inside it, and the URL as given (for messages)."""

    fs: pafs.FileSystem
    path: str
    url: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, name: str) -> "Location":
        """The location of `name` inside this folder."""
        return Location(self.fs, posixpath.join(self.path, name), self.url.rstrip("/") + "/" + name)

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as fh:
                return fh.read()
        except (OSError, FileNotFoundError) as exc:
            raise DataSourceError(f"{self.url}: cannot read: {exc}") from exc

    def write_bytes(self, data: bytes) -> None:
        with self.fs.open_output_stream(self.path) as fh:
            fh.write(data)

    def list_files(self) -> list[pafs.FileInfo]:
        """Files directly inside this folder, sorted by name."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=False))
        return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.base_name)



def resolve(url: str, base_dir: str | None = None) -> Location:
    """Filesystem and path for `url`.

    Args:
        url: a plain path, ``file:///abs``, ``file:/abs``, ``hdfs://host:port/path``, ``hdfs:///path``
            (the configured default namenode), ``s3://bucket/key``, or another fsspec URL.
        base_dir: for a relative plain path that does not exist relative to the current directory,
            the folder to try next (the folder of the prototxt that named it).

    Raises:
        DataSourceError: the scheme's filesystem cannot be created (the reason is in the message).
    """
    if not url:
        raise DataSourceError("empty data source URL")
    if not is_url(url):
        # The shared rule for relative paths: the current directory first, then `base_dir`.
        found = paths.find_path(url, base_dir or None)
        return Location(pafs.LocalFileSystem(), os.path.abspath(found) if found else paths.local_path(url), url)
    local = paths.local_path(url)
    if local is not None:  # a file: URL
        return Location(pafs.LocalFileSystem(), local, url)
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    factory = _FILESYSTEMS.get(scheme, _fsspec_filesystem)
    try:
        fs, path = factory(parts)
    except DataSourceError:
        raise
    except Exception as exc:  # pyarrow raises OSError / ImportError / ArrowException variants
        hint = f" ({HDFS_HELP})" if scheme in ("hdfs", "viewfs") else ""
        raise DataSourceError(f"{url}: cannot open the {scheme}:// filesystem: {exc}{hint}") from exc
    return Location(fs, path, url)


def _hdfs(parts: urllib.parse.SplitResult) -> tuple[pafs.FileSystem, str]:
    host = parts.hostname or "default"
    port = parts.port or 0
    return pafs.HadoopFileSystem(host, port, user=parts.username), parts.path or "/"


def _s3(parts: urllib.parse.SplitResult) -> tuple[pafs.FileSystem, str]:
    path = f"{parts.netloc}{parts.path}"
    try:
        import s3fs  # optional: picks up the same credentials chain as boto
    except ImportError:
        # botocore (s3fs) reads $AWS_ENDPOINT_URL itself; pyarrow's S3 client does not.
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return pafs.S3FileSystem(**({"endpoint_override": endpoint} if endpoint else {})), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(s3fs.S3FileSystem())), path


def _fsspec_filesystem(parts: urllib.parse.SplitResult) -> tuple[pafs.FileSystem, str]:
    import fsspec

    url = urllib.parse.urlunsplit(parts)
    try:
        fsspec.get_filesystem_class(parts.scheme)
    except (ImportError, ValueError) as exc:
        raise DataSourceError(f"{url}: unsupported URL scheme {parts.scheme!r} ({exc})") from exc
    # The filesystem's own URL parsing: host, port and user of ftp://, sftp://, ... come from it.
    fs, path = fsspec.core.url_to_fs(url)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


_FILESYSTEMS = {"hdfs": _hdfs, "viewfs": _hdfs, "s3": _s3, "s3a": _s3}


def require(url: str, base_dir: str | None = None, *, what: str = "data source") -> Location:
    """Like :func:`resolve`, but raise a DataSourceError naming `url` when nothing is there."""
    loc = resolve(url, base_dir)
    if not loc.exists():
        where = f" (looked for {loc.path})" if loc.path != url else ""
        raise DataSourceError(f"{what} {url!r} does not exist{where}")
    return loc


def newest_mtime_ns(loc: Location) -> int:
    """Newest modification time (ns) of `loc`, or of the files directly inside it for a folder."""
    info = loc.info()
    if info.type != pafs.FileType.Directory:
        return info.mtime_ns or 0
    return max([i.mtime_ns or 0 for i in loc.list_files()] + [info.mtime_ns or 0])
