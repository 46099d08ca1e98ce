"""The one storage resolver: URL in, (pyarrow filesystem, path) out.

Local paths (and ``file://``) map to pyarrow's LocalFileSystem; ``s3://bucket/prefix`` to
its S3FileSystem against AWS or any S3-compatible endpoint. The scheme decides, never a
guess. Nothing else in sqz parses storage URLs or builds S3 clients.

S3 settings come from explicit arguments or the usual AWS variables. pyarrow reads the
credentials and region itself, but ignores ``AWS_ENDPOINT_URL``, so the resolver passes
the endpoint on (``AWS_ENDPOINT_URL_S3`` wins over ``AWS_ENDPOINT_URL``, as in boto3).
Credentials are never passed as arguments, so they never appear in a URL, a pickled
filesystem (Ray ships the filesystem to its workers) or an error message.

Transient S3 failures (connection refused or reset, HTTP 5xx, throttling) are retried
at two levels:

1. every S3 request, by pyarrow's S3 client (the AWS SDK's exponential backoff from
   25 ms, ``S3_REQUEST_ATTEMPTS`` attempts, about 25 s in all). This level also covers
   Ray Train's checkpoints and Ray Tune's experiment files, which use the same
   filesystem object (it keeps its retry strategy when pickled to Ray workers);
2. every sqz operation here (write, read, exists, size, list, delete) as a whole, with
   exponential backoff and jitter for up to ``RETRY_DEADLINE_S``, when the error is
   still transient after pyarrow's attempts: an endpoint that restarts or throttles for
   longer than one request's budget does not fail the run.
"""

from __future__ import annotations

import functools
import logging
import os
import posixpath
import random
import re
import time
import uuid
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

__all__ = [
    "SUPPORTED_SCHEMES", "S3_REQUEST_ATTEMPTS", "RETRY_DEADLINE_S", "check_url", "check_writable_folder", "absolute", "resolve", "join",
    "write_bytes", "read_bytes", "exists", "size_of", "is_local", "is_transient", "with_retries", "list_dir",
    "walk", "delete_tree", "local_path", "S3_SETTINGS_ENV", "s3_settings_env", "set_s3_endpoint", "s3_endpoint", "presigned_url",
    "PRESIGN_MAX_S",
]  # fmt: skip

SUPPORTED_SCHEMES = ("", "file", "s3")

# pyarrow's per-request retries (AwsDefaultS3RetryStrategy waits 25 ms x 2^n between
# attempts and, unlike the "standard" strategy, has no retry quota that an outage could
# drain): 10 attempts span about 25 s.
S3_REQUEST_ATTEMPTS = 10
# sqz's own retries of a whole operation on top of that: bounded in time, not attempts,
# so a slow endpoint cannot stretch it; the first wait is short, the longest 8 s.
RETRY_DEADLINE_S = 120.0
_FIRST_DELAY_S = 0.5
_MAX_DELAY_S = 8.0

# Where S3 is, never who may use it: the variables the resolver reads besides the
# credentials (which pyarrow reads itself). The endpoint pair in boto3's order of precedence.
S3_SETTINGS_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# pyarrow raises every S3 failure as OSError and exposes no error code, only the text,
# which carries the AWS SDK's error name and the HTTP status. These mean "try later".
_TRANSIENT_S3_ERROR = re.compile(
    r"AWS Error (NETWORK_CONNECTION|SLOW_DOWN|THROTTLING|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|REQUEST_TIMEOUT)"
    r"|HTTP status (429|5\d\d)"
)


class _IncompleteUpload(OSError):
    """The temporary object is not the size we wrote: upload again, never publish it."""


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


def check_writable_folder(url: str, option: str = "--storage") -> None:
    """One-line ValueError naming ``option`` if the local folder ``url`` (existing or to
    be created) cannot be written: a file in its path, a read-only or virtual file
    system, no permission. Probed by creating and removing a temporary folder in its
    nearest existing ancestor, so nothing stays behind (root passes permission checks,
    so asking is not enough). An s3:// location is not probed: that is a request, with
    credentials, and its errors are clear where they happen; only whether its endpoint
    answers at all is asked, once (else every write of the run retried for minutes)."""
    check_url(url, option)
    if not is_local(url):
        _check_s3_answers(url, option)
        return
    import tempfile

    path = local_path(url)
    ancestor = path
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f"{option}: {ancestor} is a file, so {path} cannot be a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sqz-probe-", dir=ancestor))
    except OSError as exc:
        raise ValueError(f"{option}: cannot write under {ancestor} ({exc.strerror or exc})") from None


# One quick attempt: enough to tell an endpoint that answers from one that does not.
_PROBE_TIMEOUT_S = 5.0


def _check_s3_answers(url: str, option: str) -> None:
    """A one-line ValueError if the S3 endpoint of ``url`` does not answer (a wrong
    --s3-endpoint, no network); whatever else S3 says is left to the work itself."""
    endpoint = s3_endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    probe = pafs.S3FileSystem(retry_strategy=pafs.AwsDefaultS3RetryStrategy(max_attempts=1), connect_timeout=_PROBE_TIMEOUT_S,
                              request_timeout=_PROBE_TIMEOUT_S, **_s3_options(endpoint, region))  # fmt: skip
    try:
        probe.get_file_info(url.split("://", 1)[1].rstrip("/"))
    except OSError as error:
        if "NETWORK_CONNECTION" in str(error) or "REQUEST_TIMEOUT" in str(error):
            where = f"the S3 endpoint {endpoint}" if endpoint else "AWS S3"
            text = str(error)
            reason = text[text.find("AWS Error"):].split(";")[0] if "AWS Error" in text else text.splitlines()[0]
            raise ValueError(f"{option}: {where} does not answer ({reason}); check --s3-endpoint / AWS_ENDPOINT_URL "
                             "and the network") from None  # fmt: skip


def is_local(url: str) -> bool:
    return _scheme(url) in ("", "file")


def local_path(url: str) -> str:
    """The absolute filesystem path of a local URL (a plain path or ``file://``)."""
    if not is_local(url):
        raise ValueError(f"{url!r} is not a local path")
    return os.path.abspath(os.path.expanduser(url.removeprefix("file://")))


def set_s3_endpoint(endpoint_url: str | None) -> None:
    """Use ``endpoint_url`` (an ``--s3-endpoint`` option) for every s3:// URL from now on;
    None keeps the environment's. It goes into the environment, so Ray workers started
    from this process inherit it."""
    if endpoint_url:
        os.environ["AWS_ENDPOINT_URL_S3"] = endpoint_url


def s3_endpoint() -> str | None:
    """The S3 endpoint from the environment: ``AWS_ENDPOINT_URL_S3`` wins over ``AWS_ENDPOINT_URL``."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_settings_env() -> dict[str, str]:
    """This process's S3 location settings (:data:`S3_SETTINGS_ENV`), for processes on
    other machines (Ray workers); credentials are never included, each machine brings its own."""
    return {name: os.environ[name] for name in S3_SETTINGS_ENV if name in os.environ}


class _RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3FileSystem with sqz's request retry strategy, also after pickling:
    pyarrow's own pickle drops the retry strategy, and Ray pickles the filesystem into
    every Train worker and Tune trial."""

    def __init__(self, *, max_attempts: int, **options: Any) -> None:
        super().__init__(retry_strategy=pafs.AwsDefaultS3RetryStrategy(max_attempts=max_attempts), **options)
        self._max_attempts = max_attempts

    def __reduce__(self):
        _, (options,) = super().__reduce__()  # the resolved options, credentials excluded
        return _rebuild_s3_filesystem, (options, self._max_attempts)


def _rebuild_s3_filesystem(options: dict[str, Any], max_attempts: int) -> _RetryingS3FileSystem:
    return _RetryingS3FileSystem(max_attempts=max_attempts, **options)


def _s3_options(endpoint_url: str | None, region: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if endpoint_url:
        parsed = urlparse(endpoint_url if "://" in endpoint_url else f"https://{endpoint_url}")
        options["endpoint_override"] = parsed.netloc
        options["scheme"] = parsed.scheme or "https"
    if region:
        options["region"] = region
    return options


@functools.lru_cache(maxsize=16)
def _s3_filesystem(endpoint_url: str | None, region: str | None) -> pafs.S3FileSystem:
    # A small object then goes up in one PutObject when the stream closes, instead of a
    # multipart upload opened up front (three requests, each one more chance to fail).
    return _RetryingS3FileSystem(max_attempts=S3_REQUEST_ATTEMPTS, allow_delayed_open=True,
                                 **_s3_options(endpoint_url, region))  # fmt: skip


def resolve(url: str, *, endpoint_url: str | None = None, region: str | None = None) -> tuple[pafs.FileSystem, str]:
    """Map ``url`` to a pyarrow filesystem and the path inside it."""
    check_url(url, option="storage url")
    scheme = _scheme(url)
    if scheme == "s3":
        endpoint = endpoint_url or s3_endpoint()
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        path = url.split("://", 1)[1].rstrip("/")
        return _s3_filesystem(endpoint, region), path
    return pafs.LocalFileSystem(), local_path(url)


def absolute(url: str) -> str:
    """Local paths made absolute (Ray workers run in other directories); URLs unchanged."""
    return local_path(url) if is_local(url) else url


def join(url: str, *parts: str) -> str:
    """Append path parts to a URL or path (forward slashes, as both S3 and POSIX use)."""
    return posixpath.join(url.rstrip("/"), *parts)


def is_transient(error: BaseException) -> bool:
    """Whether an S3 error may succeed if tried again (network, 5xx, throttling)."""
    if isinstance(error, _IncompleteUpload):
        return True
    if not isinstance(error, OSError) or isinstance(error, (FileNotFoundError, PermissionError)):
        return False
    return bool(_TRANSIENT_S3_ERROR.search(str(error)))


def with_retries(url: str, what: str, operation: Callable[[], _T]) -> _T:
    """Run ``operation`` (which touches ``url``), again after transient S3 errors, with
    exponential backoff and jitter, until ``RETRY_DEADLINE_S``. Local paths: one try."""
    if is_local(url):
        return operation()
    deadline = time.monotonic() + RETRY_DEADLINE_S
    delay, attempt = _FIRST_DELAY_S, 1
    while True:
        try:
            return operation()
        except OSError as error:
            wait = delay * random.uniform(0.5, 1.0)  # jitter: concurrent trials do not retry in step
            if not is_transient(error) or time.monotonic() + wait > deadline:
                if attempt > 1:
                    error.add_note(f"sqz storage: gave up on {what} {url} after {attempt} attempts")
                raise
            _log.warning("sqz storage: %s %s failed (%s); retry %d in %.1f s",
                         what, url, str(error).splitlines()[0], attempt, wait)  # fmt: skip
            time.sleep(wait)
            delay, attempt = min(delay * 2, _MAX_DELAY_S), attempt + 1


def write_bytes(url: str, data: bytes, **options: Any) -> None:
    """Write ``data`` so that a reader sees either nothing or the whole object.

    Both on disk and on S3: write a temporary sibling (a dot name, which dataset
    listings skip), check its size, then move it to the final name. Locally the move is
    a rename, atomic on POSIX. On S3 a single PUT is already all-or-nothing; the
    temporary key is kept there anyway because retries make the upload a sequence of
    attempts, and the size check before the server-side copy guarantees that only a
    complete upload ever appears under the final key (a stream cut short, a retried
    part). The cost is one server-side copy per object (fine up to S3's 5 GB copy limit).
    """
    fs, path = resolve(url, **options)
    parent = posixpath.dirname(path)
    # One temporary name per call: a retried attempt overwrites it, not a second orphan.
    temporary = posixpath.join(parent, f".{posixpath.basename(path)}.tmp-{uuid.uuid4().hex}")

    def attempt() -> None:
        if is_local(url):
            fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(temporary) as out:
            out.write(data)
        written = fs.get_file_info(temporary).size
        if written != len(data):
            raise _IncompleteUpload(f"{url}: the temporary object holds {written} of {len(data)} bytes")
        fs.move(temporary, path)

    with_retries(url, "write", attempt)


def read_bytes(url: str, **options: Any) -> bytes:
    fs, path = resolve(url, **options)

    def attempt() -> bytes:
        with fs.open_input_stream(path) as stream:
            return stream.read()

    try:
        return with_retries(url, "read", attempt)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such object: {url}") from None


def exists(url: str, **options: Any) -> bool:
    fs, path = resolve(url, **options)
    return with_retries(url, "stat", lambda: fs.get_file_info(path).type != pafs.FileType.NotFound)


def size_of(url: str, **options: Any) -> int:
    fs, path = resolve(url, **options)
    info = with_retries(url, "stat", lambda: fs.get_file_info(path))
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"no such object: {url}")
    return int(info.size)


def list_dir(url: str, **options: Any) -> list[tuple[str, bool]]:
    """(name, is_folder) of the entries directly under ``url``, sorted; [] if none."""
    fs, path = resolve(url, **options)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=False)
    infos = with_retries(url, "list", lambda: fs.get_file_info(selector))
    return sorted((info.base_name, info.type == pafs.FileType.Directory) for info in infos)


def walk(url: str, **options: Any) -> list[tuple[str, int]]:
    """(path relative to ``url``, size) of every file under ``url``, sorted."""
    fs, path = resolve(url, **options)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=True)
    infos = with_retries(url, "list", lambda: fs.get_file_info(selector))
    prefix = path.rstrip("/") + "/"
    return sorted((info.path.removeprefix(prefix), int(info.size)) for info in infos if info.type == pafs.FileType.File)


def delete_tree(url: str, **options: Any) -> None:
    """Delete ``url`` and everything under it (no error if it does not exist)."""
    fs, path = resolve(url, **options)

    def attempt() -> None:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_dir(path)

    with_retries(url, "delete", attempt)


# SigV4 presigned URLs live at most 7 days; that is also the default expiry of the links
# sqz shows in the Prefect UI.
PRESIGN_MAX_S = 7 * 24 * 3600


def presigned_url(url: str, *, expires_s: int = PRESIGN_MAX_S) -> str:
    """A link a browser can open: for an ``s3://`` object, an HTTPS GET URL presigned with
    boto3 (it carries the access key id and a signature, as presigning requires, never the
    secret); for a local file, its ``file://`` URL."""
    if not 1 <= int(expires_s) <= PRESIGN_MAX_S:
        raise ValueError(f"link expiry: must be 1..{PRESIGN_MAX_S} seconds (SigV4's 7 days), got {expires_s}")
    if is_local(url):
        return "file://" + absolute(url)
    import boto3  # only here: reading and writing go through pyarrow
    from botocore.config import Config

    bucket, _, key = url[len("s3://"):].partition("/")
    client = boto3.client("s3", endpoint_url=s3_endpoint(), config=Config(signature_version="s3v4"))
    return client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=int(expires_s))
