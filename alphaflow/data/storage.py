"""Where the bytes live: local paths and s3://bucket/key URLs behind one small API.

S3 settings come from the standard AWS chain (environment, AWS_PROFILE, ~/.aws, AWS_ENDPOINT_URL); nothing here
ever writes or logs a credential. One boto3 client per process (clients hold sockets, so they are not fork-safe),
all made from one boto3 session: a forked DataLoader worker reuses the session's parsed service model (a client
then costs ~4 ms instead of ~60 ms). Large objects are read as ranged GETs of S3_PART_BYTES, several at once (one
S3 connection streams at a fraction of what the service gives in parallel; the AWS CLI and s5cmd do the same).
Transient errors (connection resets, timeouts, 5xx, throttling) are retried with exponential backoff, per part;
everything else becomes a one-line DataError naming the URL.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import mmap
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import boto3
import numpy as np
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError
from botocore.exceptions import ConnectionError as BotoConnectionError
from urllib3.exceptions import HTTPError as Urllib3Error

from alphaflow.data.errors import DataError, DataInputError
from alphaflow.retry import retry_transient

RETRIES = int(os.environ.get("AFSWEEP_S3_RETRIES", "6"))
BACKOFF_S = float(os.environ.get("AFSWEEP_S3_BACKOFF_S", "0.25"))
# a transient error is retried at least RETRIES times and for at least OUTAGE_S seconds: a storage server that is
# restarted (tens of seconds) pauses the reader instead of failing the trial
OUTAGE_S = float(os.environ.get("AFSWEEP_S3_OUTAGE_S", "120"))
MULTIPART_CHUNK = 64 * 1024 * 1024   # part size of multipart uploads; also used to predict their ETag
S3_PART_BYTES = int(float(os.environ.get("AFSWEEP_S3_PART_MB", "16")) * (1 << 20))  # ranged GET size
S3_CONCURRENCY = int(os.environ.get("AFSWEEP_S3_CONCURRENCY", "4"))                 # ranged GETs at once

_session = None                       # the boto3 session every client is made from (kept across fork)
_clients: dict[int, object] = {}      # pid -> boto3 client
_part_pools: dict[int, ThreadPoolExecutor] = {}   # pid -> threads for ranged GETs (threads do not survive fork)
_lock = threading.Lock()


# --- URLs ---------------------------------------------------------------------------------------------------------


def is_s3(url: str) -> bool:
    return str(url).startswith("s3://")


def split_s3(url: str) -> tuple[str, str]:
    p = urlparse(url)
    if p.scheme != "s3" or not p.netloc:
        raise DataError(f"{url}: not an s3://bucket/key URL")
    return p.netloc, p.path.lstrip("/")


def join(base: str, name: str) -> str:
    """base/name for a local folder or an s3:// prefix; an absolute name or URL is returned as is."""
    if is_s3(name) or os.path.isabs(name):
        return name
    if is_s3(base):
        return base.rstrip("/") + "/" + name
    return str(Path(base) / name)


def parent(url: str) -> str:
    if is_s3(url):
        return url.rsplit("/", 1)[0]
    return str(Path(url).resolve().parent)


# --- S3 client and errors -----------------------------------------------------------------------------------------


def reset_clients() -> None:
    """Forget this process's session and client (after changing AWS_* settings in the environment)."""
    global _session
    with _lock:
        _session = None
        _clients.clear()


def _this_process(cache: dict, make):
    """cache[pid], made on first use in this process: a forked child makes its own (sockets and threads do not
    survive fork)."""
    pid = os.getpid()
    value = cache.get(pid)
    if value is None:
        with _lock:
            value = cache.get(pid)
            if value is None:
                cache.clear()
                value = cache[pid] = make()
    return value


def s3_client():
    """This process's boto3 S3 client (created on first use; a forked child makes its own from the same session)."""
    return _this_process(_clients, _new_client)


def _new_client():
    global _session
    if _session is None:
        _session = boto3.session.Session()
    custom_endpoint = bool(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    style = os.environ.get("AFSWEEP_S3_ADDRESSING", "path" if custom_endpoint else "auto")
    config = Config(region_name=_session.region_name or "us-east-1", s3={"addressing_style": style},
                    retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=120,
                    max_pool_connections=max(10, 2 * S3_CONCURRENCY))
    return _session.client("s3", config=config)


def _part_pool() -> ThreadPoolExecutor:
    return _this_process(_part_pools, lambda: ThreadPoolExecutor(S3_CONCURRENCY, thread_name_prefix="afsweep-s3"))


_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken",
               "ExpiredToken", "AuthorizationHeaderMalformed"}
_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
_TRANSIENT_CODES = {"500", "502", "503", "504", "InternalError", "SlowDown", "ServiceUnavailable", "Throttling",
                    "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed"}


def _cause(e: BaseException) -> BaseException:
    """boto3's transfer manager wraps the real error (S3UploadFailedError); look through it."""
    inner = e.__cause__ or e.__context__
    return inner if isinstance(e, S3UploadFailedError) and inner is not None else e


def _is_transient(e: BaseException) -> bool:
    e = _cause(e)
    if isinstance(e, ClientError):
        return str(e.response.get("Error", {}).get("Code", "")) in _TRANSIENT_CODES
    name = type(e).__name__
    return isinstance(e, (BotoConnectionError, ReadTimeoutError, Urllib3Error, ConnectionError, TimeoutError)) \
        or name in ("IncompleteReadError", "ResponseStreamingError", "IncompleteRead")


def _one_line(url: str, e: BaseException) -> DataError:
    """The DataError for a failed S3 call: what went wrong and where, never a credential."""
    e = _cause(e)
    if isinstance(e, NoCredentialsError):
        return DataError(f"{url}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                         f"AWS_PROFILE)")
    if isinstance(e, EndpointConnectionError):
        return DataError(f"{url}: cannot reach the S3 endpoint {e.kwargs.get('endpoint_url', '')} "
                         f"(check AWS_ENDPOINT_URL)")
    if isinstance(e, ClientError):
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            return DataError(f"{url}: bucket {split_s3(url)[0]!r} does not exist")
        if code in _MISSING_KEY:
            return DataInputError(f"{url}: not found")
        if code in _AUTH_CODES:
            return DataError(f"{url}: access denied by S3 ({code}; check the AWS credentials and the bucket policy)")
        return DataError(f"{url}: S3 error {code}")
    msg = str(e).splitlines()[0] if str(e) else ""
    return DataError(f"{url}: {type(e).__name__} {msg}".rstrip())


def _with_retries(url: str, fn):
    """fn() with exponential backoff on transient errors; other errors become one-line DataErrors."""
    try:
        return retry_transient(fn, is_transient=_is_transient, min_attempts=RETRIES, patience_s=OUTAGE_S,
                               first_delay_s=BACKOFF_S, jitter=True)
    except DataError:
        raise
    except Exception as e:
        raise _one_line(url, e) from None


def _check_bucket(url: str, client) -> None:
    """Tell a missing bucket from a missing key (some servers answer a bare 404 for both)."""
    bucket, _ = split_s3(url)
    try:
        client.head_bucket(Bucket=bucket)
    except Exception as e:
        if isinstance(e, ClientError) and str(e.response.get("Error", {}).get("Code", "")) in ("404", "NoSuchBucket"):
            raise DataError(f"{url}: bucket {bucket!r} does not exist") from None
        raise _one_line(url, e) from None


# --- reading ------------------------------------------------------------------------------------------------------


def read_bytes(url: str, expected_size: int | None = None) -> bytes | memoryview:
    """The whole object or file. A size that differs from expected_size is an error naming the URL. An S3 object
    of known size over S3_PART_BYTES comes as parallel ranged GETs (read_range)."""
    if is_s3(url):
        if expected_size is not None and expected_size > S3_PART_BYTES:
            return read_range(url, 0, expected_size, expected_size)
        bucket, key = split_s3(url)
        client = s3_client()

        def get() -> bytes:
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            try:
                data = body.read()
            finally:
                body.close()
            if expected_size is not None and len(data) != expected_size and len(data) < expected_size:
                raise ConnectionError(f"short read ({len(data)} of {expected_size} bytes)")  # retried
            return data

        data = _s3_call(url, get)
    else:
        try:
            with open(url, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise DataInputError(f"{url}: not found") from None
        except OSError as e:
            raise DataError(f"{url}: cannot read ({e.strerror})") from None
    if expected_size is not None and len(data) != expected_size:
        raise DataError(f"{url}: size {len(data)} bytes, the manifest says {expected_size} (truncated or replaced)")
    return data


def _s3_call(url: str, fn):
    """_with_retries for a read; a missing key is told apart from a missing bucket."""
    try:
        return _with_retries(url, fn)
    except DataError as e:
        if str(e).endswith(": not found"):
            _check_bucket(url, s3_client())
        raise


def read_range(url: str, start: int, end: int, total: int | None = None, out: memoryview | None = None):
    """Bytes [start, end) of a file or object, as a memoryview; `total` is the size the whole should have (checked:
    a shard truncated or replaced is an error naming the URL, not a short read). Local files: a view of a memory
    map. S3: ranged GETs of S3_PART_BYTES, up to S3_CONCURRENCY at once, each retried on its own and received
    straight into its slice of one buffer: `out` (at least end - start bytes, reused by the caller) or a new one."""
    if not is_s3(url):
        whole = memoryview(map_local(url, total))
        if end > len(whole):
            raise DataError(f"{url}: size {len(whole)} bytes, cannot read bytes {start}-{end}")
        return whole[start:end]

    n = max(end - start, 0)
    if out is None:
        out = memoryview(np.empty(n, np.uint8))   # not zero-filled: every byte is received into it
    out = out[:n]
    bucket, key = split_s3(url)
    client = s3_client()

    def part(lo: int, hi: int) -> None:
        def get() -> None:
            try:
                r = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={lo}-{hi - 1}")
            except Exception as e:
                if isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") == "InvalidRange":
                    raise DataError(f"{url}: shorter than {hi} bytes, the manifest says {total} "
                                    f"(truncated or replaced)") from None
                raise
            size = _object_size(r)
            if total is not None and size is not None and size != total:
                r["Body"].close()
                raise DataError(f"{url}: size {size} bytes, the manifest says {total} (truncated or replaced)")
            got = _receive(r["Body"], out[lo - start:hi - start])
            if got != hi - lo:
                raise ConnectionError(f"short read ({got} of {hi - lo} bytes)")   # retried

        _s3_call(url, get)

    bounds = [(lo, min(lo + S3_PART_BYTES, end)) for lo in range(start, end, S3_PART_BYTES)]
    if len(bounds) == 1:
        part(*bounds[0])
    elif bounds:
        for f in [_part_pool().submit(part, lo, hi) for lo, hi in bounds]:
            f.result()
    return out


RECEIVE_STEP = 1 << 20   # bytes per read: each piece is copied while it is still in the CPU's cache


def _receive(body, view: memoryview) -> int:
    """A GET's body into `view`, through botocore's public StreamingBody.read(amt); returns the bytes received.
    Every path botocore and urllib3 offer publicly reads into a new bytes object first (urllib3's readinto too),
    so the pieces are kept small: the copy then runs in the cache, and the temporary is one malloc'd block reused
    every call. Reading to the end lets urllib3 hand the connection back to its pool for the next GET."""
    n = 0
    try:
        while n < len(view):
            piece = body.read(min(RECEIVE_STEP, len(view) - n))
            if not piece:
                break
            view[n:n + len(piece)] = piece
            n += len(piece)
        return n
    finally:
        body.close()


def _object_size(response: dict) -> int | None:
    """The whole object's size from a ranged GET's Content-Range ("bytes 0-99/1234")."""
    rng = response.get("ContentRange") or ""
    tail = rng.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else None


def map_local(path: str, expected_size: int | None = None):
    """A read-only memory map of a local file: the page cache's bytes, not a copy of them (the reader's views into
    a shard keep the map alive). Same checks and errors as read_bytes."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if expected_size is not None and size != expected_size:
                raise DataError(f"{path}: size {size} bytes, the manifest says {expected_size} (truncated or replaced)")
            if size == 0:
                return b""
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise DataInputError(f"{path}: not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def exists(url: str) -> bool:
    if not is_s3(url):
        return Path(url).exists()
    bucket, key = split_s3(url)
    client = s3_client()
    try:
        _with_retries(url, lambda: client.head_object(Bucket=bucket, Key=key))
        return True
    except DataError as e:
        if str(e).endswith(": not found"):
            return False
        raise


def open_stream(url: str, mode: str = "rb", bufsize: int = 8192, **_):
    """A readable binary stream (the gopen handler for s3:// URLs: WebDataset pipelines can read our shards)."""
    if mode != "rb":
        raise DataError(f"{url}: writing s3:// streams is not supported (write locally, then upload_file)")
    if not is_s3(url):
        return open(url, "rb")
    return io.BytesIO(read_bytes(url))


def register_gopen() -> None:
    """Teach webdataset.gopen the s3:// scheme, in this process (WebDataset 1.0.2 has no handler for it)."""
    importlib.import_module("webdataset.gopen").gopen_schemes["s3"] = open_stream


# --- writing ------------------------------------------------------------------------------------------------------


def file_sha256(path: str | Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _expected_etag(path: str | Path, size: int) -> str:
    """S3's ETag of an unencrypted upload: md5 of a single part, or md5 of the part md5s + '-N' for multipart."""
    with open(path, "rb") as f:
        if size < MULTIPART_CHUNK:
            return hashlib.md5(f.read()).hexdigest()
        digests = []
        while block := f.read(MULTIPART_CHUNK):
            digests.append(hashlib.md5(block).digest())
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def upload_file(local_path: str | Path, url: str) -> None:
    """Copy a local file to url (a path or s3://). S3 uploads go multipart above MULTIPART_CHUNK and are verified
    afterwards by size and ETag; a mismatch is an error naming the URL."""
    local_path = Path(local_path)
    if not is_s3(url):
        dest = Path(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.resolve() != local_path.resolve():
            tmp = dest.with_name(f".{dest.name}.tmp")
            tmp.write_bytes(local_path.read_bytes())
            os.replace(tmp, dest)
        return

    bucket, key = split_s3(url)
    client = s3_client()
    size = local_path.stat().st_size
    config = TransferConfig(multipart_threshold=MULTIPART_CHUNK, multipart_chunksize=MULTIPART_CHUNK)
    _with_retries(url, lambda: client.upload_file(str(local_path), bucket, key, Config=config))
    head = _with_retries(url, lambda: client.head_object(Bucket=bucket, Key=key))
    if int(head["ContentLength"]) != size:
        raise DataError(f"{url}: uploaded {head['ContentLength']} bytes, the local file has {size}")
    etag = str(head.get("ETag", "")).strip('"')
    if etag and etag != _expected_etag(local_path, size):
        raise DataError(f"{url}: ETag {etag} does not match the local file's content (upload corrupted)")


def upload_bytes(data: bytes, url: str) -> None:
    with tempfile.TemporaryDirectory(prefix="afsweep-up-") as tmp:
        p = Path(tmp) / "blob"
        p.write_bytes(data)
        upload_file(p, url)


def check_destination(url: str) -> None:
    """Fail before any work if an s3:// destination's bucket is missing or the credentials are refused."""
    if is_s3(url):
        _check_bucket(url, s3_client())
