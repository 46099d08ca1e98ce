"""The one storage resolver: URL in, (pyarrow filesystem, path) out.

Local paths (and ``file://``) map to pyarrow's LocalFileSystem; ``s3://bucket/prefix`` to
its S3FileSystem against AWS or any S3-compatible endpoint. The scheme decides, never a
guess. Nothing else in sqz parses storage URLs or builds S3 clients.

S3 settings come from explicit arguments or the usual AWS variables. pyarrow reads the
credentials and region itself, but ignores ``AWS_ENDPOINT_URL``, so the resolver passes
the endpoint on (``AWS_ENDPOINT_URL_S3`` wins over ``AWS_ENDPOINT_URL``, as in boto3).
"""

from __future__ import annotations

import functools
import os
import posixpath
import uuid
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

__all__ = ["SUPPORTED_SCHEMES", "check_url", "absolute", "resolve", "join", "write_bytes", "read_bytes", "exists", "size_of", "is_local"]

SUPPORTED_SCHEMES = ("", "file", "s3")


def _scheme(url: str) -> str:
    if "://" not in url:
        return ""
    return url.split("://", 1)[0].lower()


def check_url(url: str, option: str = "--storage") -> None:
    """One-line ValueError naming ``option`` if ``url`` is not a location sqz can use."""
    if not url:
        raise ValueError(f"{option}: must not be empty")
    scheme = _scheme(url)
    if scheme not in SUPPORTED_SCHEMES:
        raise ValueError(f"{option}: unsupported scheme {scheme!r} in {url!r}; use a local path, file:// or s3://")
    if scheme == "s3" and not urlparse(url).netloc:
        raise ValueError(f"{option}: {url!r} names no bucket (expected s3://bucket/prefix)")


def is_local(url: str) -> bool:
    return _scheme(url) in ("", "file")


@functools.lru_cache(maxsize=16)
def _s3_filesystem(endpoint_url: str | None, region: str | None) -> pafs.S3FileSystem:
    options: dict[str, Any] = {}
    if endpoint_url:
        parsed = urlparse(endpoint_url if "://" in endpoint_url else f"https://{endpoint_url}")
        options["endpoint_override"] = parsed.netloc
        options["scheme"] = parsed.scheme or "https"
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options)


def resolve(url: str, *, endpoint_url: str | None = None, region: str | None = None) -> tuple[pafs.FileSystem, str]:
    """Map ``url`` to a pyarrow filesystem and the path inside it."""
    check_url(url, option="storage url")
    scheme = _scheme(url)
    if scheme == "s3":
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        path = url.split("://", 1)[1].rstrip("/")
        return _s3_filesystem(endpoint, region), path
    path = url.removeprefix("file://")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def absolute(url: str) -> str:
    """Local paths made absolute (Ray workers run in other directories); URLs unchanged."""
    return url if not is_local(url) else os.path.abspath(os.path.expanduser(url.removeprefix("file://")))


def join(url: str, *parts: str) -> str:
    """Append path parts to a URL or path (forward slashes, as both S3 and POSIX use)."""
    return posixpath.join(url.rstrip("/"), *parts)


def write_bytes(url: str, data: bytes, **options: Any) -> None:
    """Write ``data`` so that a reader sees either nothing or the whole object.

    Locally: write a temporary sibling, then rename over the final name (atomic on POSIX).
    On S3 an object becomes visible only when its upload completes, so one PUT suffices.
    """
    fs, path = resolve(url, **options)
    parent = posixpath.dirname(path)
    if is_local(url):
        fs.create_dir(parent, recursive=True)
        # A dot prefix keeps the temporary out of dataset listings (pyarrow skips "." files).
        temporary = posixpath.join(parent, f".{posixpath.basename(path)}.tmp-{uuid.uuid4().hex}")
        with fs.open_output_stream(temporary) as out:
            out.write(data)
        fs.move(temporary, path)
    else:
        with fs.open_output_stream(path) as out:
            out.write(data)


def read_bytes(url: str, **options: Any) -> bytes:
    fs, path = resolve(url, **options)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such object: {url}") from None


def exists(url: str, **options: Any) -> bool:
    fs, path = resolve(url, **options)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def size_of(url: str, **options: Any) -> int:
    fs, path = resolve(url, **options)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"no such object: {url}")
    return int(info.size)
