"""WebDataset tar shards of latents: writing them (rolling at a target size) and decoding a whole shard at once.

A sample is two tar members, `<key>.npy` (the latent, float16 or float32, shape (C, H, W)) and `<key>.cls` (the
class label as ASCII digits): the standard WebDataset layout, so `webdataset.WebDataset(url)` reads them too.
Decoding parses the tar headers directly from the shard's bytes (see _tar_members for why not tarfile), and reuses
the parsed .npy header, which is identical for every sample of a shard.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import webdataset as wds

from alphaflow.data import storage
from alphaflow.data.errors import DataError

log = logging.getLogger("alphaflow.data")

SHARD_PATTERN = "shard-{:06d}.tar"
TAR_PARSERS = ("hand", "tarfile")
# Who parses the tar headers: "hand", the loop in _tar_members and, for shards laid out as ours are, numpy over
# every header of a run at once; or "tarfile", the standard library's TarFile, one TarInfo a member. Both give the
# same members. The hand parser stays the default: see the ratios in the comment above _tar_members.
TAR_PARSER = os.environ.get("AFSWEEP_TAR_PARSER", "hand")


@dataclass
class ShardRecord:
    """One row of the manifest."""
    url: str                 # relative to the manifest's folder when written by us
    num_samples: int
    bytes: int
    sha256: str
    class_counts: list[int]


def npy_header(dtype, shape) -> bytes:
    """The .npy header (format 1.0) of a C-order array, computed once per data set."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                               "shape": tuple(int(s) for s in shape)})
    return buf.getvalue()


class ShardSink:
    """Writes samples into tar shards of about `shard_bytes` each under `dest` (a folder or s3:// prefix).

    Shards are always written to a local file first; for S3 each finished shard is uploaded (and verified), then
    deleted locally, so a partly written shard is never visible at the destination.
    """

    def __init__(self, dest: str, shard_bytes: int, num_classes: int, progress=None):
        self._wds = wds
        self.dest = dest
        self.shard_bytes = max(int(shard_bytes), 1)
        self.num_classes = num_classes
        self.records: list[ShardRecord] = []
        self.progress = progress
        self._tmpdir = tempfile.mkdtemp(prefix="afsweep-shards-") if storage.is_s3(dest) else None
        if not storage.is_s3(dest):
            Path(dest).mkdir(parents=True, exist_ok=True)
        self._writer = None
        self._file = None
        self._count = 0
        self._classes = np.zeros(num_classes, np.int64)
        self._header_cache: dict = {}

    def _local_path(self, index: int) -> Path:
        return Path(self._tmpdir or self.dest) / SHARD_PATTERN.format(index)

    def _open(self) -> None:
        self._path = self._local_path(len(self.records))
        self._file = open(self._path, "wb")
        # a fixed mtime makes the shards, and so their sha256, reproducible
        self._writer = self._wds.TarWriter(self._file, encoder=False, mtime=0)
        self._count = 0
        self._classes[:] = 0

    def write(self, latents: np.ndarray, labels: np.ndarray, keys: list[str]) -> None:
        """A batch of samples: latents (n, C, H, W) in their stored dtype, labels (n,), keys (n,)."""
        hkey = (latents.dtype.str, latents.shape[1:])
        header = self._header_cache.get(hkey) or self._header_cache.setdefault(hkey, npy_header(*hkey))
        for lat, lab, key in zip(latents, labels, keys):
            if self._writer is None:
                self._open()
            self._writer.write({"__key__": key, "npy": header + np.ascontiguousarray(lat).tobytes(),
                                "cls": str(int(lab)).encode()})
            self._count += 1
            self._classes[int(lab)] += 1
            if self._file.tell() >= self.shard_bytes:
                self._finish_shard()

    def _finish_shard(self) -> None:
        self._writer.close()
        self._file.close()
        self._writer = None
        name = self._path.name
        size = self._path.stat().st_size
        sha = storage.file_sha256(self._path)
        if self._tmpdir:
            storage.upload_file(self._path, storage.join(self.dest, name))
            self._path.unlink()
        self.records.append(ShardRecord(name, self._count, size, sha, self._classes.tolist()))
        if self.progress:
            self.progress("shards", len(self.records), 0)

    def close(self) -> list[ShardRecord]:
        if self._writer is not None and self._count:
            self._finish_shard()
        elif self._writer is not None:
            self._writer.close()
            self._file.close()
            self._path.unlink()
        if self._tmpdir:
            os.rmdir(self._tmpdir)
        return self.records


# --- decoding -----------------------------------------------------------------------------------------------------


@dataclass
class DecodedShard:
    keys: np.ndarray         # (n,) str
    latents: np.ndarray      # (n, C, H, W) stored dtype (may be a read-only view of the shard's bytes)
    labels: np.ndarray       # (n,) int64
    valid: np.ndarray        # (n,) bool: False for a corrupt sample
    corrupt: list[str] = field(default_factory=list)   # "key: why" for each corrupt sample

    def part(self, lo: int, hi: int) -> DecodedShard:
        """Samples [lo, hi) (views, no copy)."""
        if (lo, hi) == (0, len(self.keys)):
            return self
        keys = self.keys[lo:hi]
        inside = set(keys[~self.valid[lo:hi]].tolist()) if self.corrupt else set()
        return DecodedShard(keys, self.latents[lo:hi], self.labels[lo:hi], self.valid[lo:hi],
                            [c for c in self.corrupt if c.rsplit(": ", 1)[0] in inside])


def _checksum_ok(header: bytes) -> bool:
    try:
        return sum(header[:148]) + 256 + sum(header[156:]) == int(header[148:156].strip(b" \0") or b"-1", 8)
    except ValueError:
        return False


# Why a hand parser: the standard library's tarfile (_tarfile_members, TAR_PARSER = "tarfile") builds a TarInfo a
# member, ~20-50 us each, two members a sample. benchmarks/data_throughput.py --synthetic-gb 1 --repeat 3
# --parsers hand tarfile (2 CPUs, both in the same rounds), reader/raw: tarfile 0.02-0.03 (Fashion-MNIST, local),
# 0.11-0.12 (synthetic 4x32x32, local), 0.07-0.21 (S3); the hand parser 0.72-2.58 on the same rows. webdataset
# 1.0.2's reader is tarfile in stream mode plus a copy of every member, so no faster. tarfile stays as the
# cross-check the tests hold the hand parser to.
def _tar_members(data: bytes, url: str):
    """(name, offset, size) of each regular file in a tar held in memory; a damaged tar is an error naming url."""
    n = len(data)
    off = 0
    while off + 512 <= n:
        header = bytes(data[off:off + 512])
        if header[0] == 0 and header.count(0) == 512:
            return  # end-of-archive blocks
        name = header[:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
        if prefix:
            name = prefix + b"/" + name
        if off == 0 and not _checksum_ok(header):  # per-header checksums cost more than the rest of the loop
            raise DataError(f"{url}: not a tar file (bad header checksum)")
        try:
            size = int(header[124:136].strip(b" \0") or b"0", 8)
        except ValueError:
            raise DataError(f"{url}: corrupt tar header at byte {off}") from None
        start = off + 512
        if start + size > n:
            raise DataError(f"{url}: truncated tar member {name.decode(errors='replace')} "
                            f"({n - start} of {size} bytes)")
        if header[156:157] in (b"0", b"\0"):   # a regular file
            yield name.decode("utf-8", errors="replace"), start, size
        off = start + (size + 511) // 512 * 512
    raise DataError(f"{url}: truncated tar (no end-of-archive marker after byte {min(off, n)})")


class _BufferFile(io.RawIOBase):
    """A read-only, seekable file over a buffer (bytes, mmap, memoryview) for tarfile: it reads each 512-byte
    header and seeks over the member's data, so only the headers are copied."""

    def __init__(self, data):
        self._view = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(self._pos + size, len(self._view))
        chunk = bytes(self._view[self._pos:end])
        self._pos = max(self._pos, end)
        return chunk

    def readinto(self, b) -> int:
        chunk = self.read(len(b))
        b[:len(chunk)] = chunk
        return len(chunk)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def _tarfile_members(data, url: str, archive_end: bool = True):
    """_tar_members by the standard library's tarfile (which checks every header's checksum): the same
    (name, offset, size) triples and the same kinds of DataError. archive_end=False: `data` is a run of members cut
    out of a tar, which simply ends."""
    n = len(data)
    try:
        tar = tarfile.open(fileobj=_BufferFile(data), mode="r:")
    except tarfile.ReadError as e:
        raise DataError(f"{url}: not a tar file ({e})") from None
    with tar:
        while True:
            try:
                info = tar.next()
            except tarfile.ReadError as e:
                raise DataError(f"{url}: corrupt tar ({e})") from None
            if info is None:
                break
            if info.offset_data + info.size > n:
                raise DataError(f"{url}: truncated tar member {info.name} "
                                f"({n - info.offset_data} of {info.size} bytes)")
            if info.isreg():
                yield info.name, info.offset_data, info.size
        # tarfile stops quietly at a zero block, at the end of the data and at a damaged header: only the first
        # is the end of a whole archive
        end = tar.offset
    if archive_end and (end + 512 > n or any(bytes(data[end:end + 512]))):
        raise DataError(f"{url}: truncated tar (no end-of-archive marker after byte {min(end, n)})")


def _members(data, url: str, archive_end: bool = True):
    """The members of a tar in memory, by the parser TAR_PARSER names."""
    if TAR_PARSER == "tarfile":
        return _tarfile_members(data, url, archive_end)
    return _tar_members(data, url)


_NPY_MAGIC = b"\x93NUMPY"


def _npy_layout(data: bytes, start: int, size: int, cache: dict):
    """(dtype, shape, data offset) of an .npy member; None if it is not a valid C-order .npy."""
    if size < 10 or bytes(data[start:start + 6]) != _NPY_MAGIC:
        return None
    major = data[start + 6]
    if major == 1:
        hlen, first = struct.unpack_from("<H", data, start + 8)[0], start + 10
    elif major in (2, 3):
        hlen, first = struct.unpack_from("<I", data, start + 8)[0], start + 12
    else:
        return None
    header = bytes(data[start:first + hlen])
    parsed = cache.get(header)
    if parsed is None:
        try:
            f = io.BytesIO(header)
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version[0] == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
        except Exception:
            return None
        if fortran or dtype.hasobject:
            return None
        parsed = cache[header] = (dtype, tuple(shape))
    dtype, shape = parsed
    if size - (first + hlen - start) != dtype.itemsize * int(np.prod(shape)):
        return None
    return dtype, shape, first + hlen


def _octal(fields: np.ndarray) -> np.ndarray:
    """Tar's octal size fields, (n, 12) ASCII bytes (digits, then NUL or space), as int64; -1 where malformed."""
    digits = fields[:, :11].astype(np.int64) - 48
    if not ((digits >= 0) & (digits <= 7)).all():
        return np.full(len(fields), -1, np.int64)
    return digits @ (8 ** np.arange(10, -1, -1, dtype=np.int64))


def sample_period(sample_shape, dtype) -> int:
    """Bytes per sample in the shards ShardSink writes (a 512-byte tar header and block for the label, a header and
    the .npy padded to 512 bytes): sample i of such a shard starts at i * period, so the reader can fetch just a
    run of samples. Nothing is assumed: decode_samples checks every header of the run."""
    npy = len(npy_header(dtype, sample_shape)) + np.dtype(dtype).itemsize * int(np.prod(sample_shape))
    return 3 * 512 + (npy + 511) // 512 * 512


def is_regular_size(num_samples: int, size: int, period: int) -> bool:
    """A tar of num_samples samples of `period` bytes: then two zero blocks, padded to tar's 10240-byte records."""
    end = num_samples * period + 1024
    return end <= size < end + 10240


def decode_samples(data, url: str, sample_shape, dtype, count: int) -> DecodedShard | None:
    """`count` consecutive samples cut out of a shard at multiples of sample_period; None when they are not all
    laid out as ours are (the caller then reads and decodes the whole shard)."""
    return _decode_regular(data, url, tuple(sample_shape), np.dtype(dtype), count, archive_end=False)


def _decode_regular(data, url: str, sample_shape, dtype, expected: int,
                    archive_end: bool = True) -> DecodedShard | None:
    """The fast path for shards laid out as ours are (each sample `<key>.cls` then `<key>.npy`, every sample the
    same size): every header is checked (by numpy over all of them at once, or by tarfile), and the latents stay
    a strided view of `data`. Returns None when the layout differs in any way; the general parser then decides.
    archive_end: `data` is a whole shard (the end-of-archive blocks follow the samples), not a run of samples cut
    out of one."""
    members = _members(data, url, archive_end)
    try:
        (n1, s1, z1), (n2, s2, z2) = next(members), next(members)
    except (StopIteration, DataError):
        return None
    key_len = n1.find(".")
    if key_len <= 0 or n1[key_len:] != ".cls" or n2 != n1[:key_len] + ".npy" or (s1, s2) != (512, 1536) or z1 > 512:
        return None
    layout = _npy_layout(data, s2, z2, {})
    if layout is None or layout[1] != tuple(sample_shape):
        return None
    period = s2 + (z2 + 511) // 512 * 512
    n = expected
    buf = np.frombuffer(data, np.uint8)
    if archive_end:
        if len(buf) < n * period + 1024 or buf[n * period:n * period + 1024].any():
            return None  # not exactly n samples then the end-of-archive blocks
    elif len(buf) != n * period:
        return None
    rows = lambda at, width: np.lib.stride_tricks.as_strided(  # noqa: E731  (n, width) view, one row a sample
        buf[at:], shape=(n, width), strides=(period, 1), writeable=False)
    if TAR_PARSER == "tarfile":
        try:
            listed = _regular_by_tarfile(data, url, n, period, key_len, z2, archive_end)
        except DataError:
            return None   # the general parser says what is wrong
    else:
        listed = _regular_by_numpy(rows, key_len)
    if listed is None:
        return None
    keys, sizes = listed
    hdr_len = layout[2] - s2
    heads = rows(1536, hdr_len)
    if not (heads == heads[0]).all():
        return None
    if (sizes < 1).any() or (sizes > 18).any():
        return None
    text = rows(512, int(sizes.max())).astype(np.int64) - 48
    inside = np.arange(text.shape[1]) < sizes[:, None]
    if not ((text >= 0) & (text <= 9) | ~inside).all():
        return None
    power = np.where(inside, 10 ** np.clip(sizes[:, None] - 1 - np.arange(text.shape[1]), 0, None), 0)
    labels = (np.where(inside, text, 0) * power).sum(1)
    item = layout[0].itemsize * int(np.prod(sample_shape))
    first = layout[2]
    latents = rows(first, item).view(layout[0]).reshape(n, *sample_shape)
    if latents.dtype != dtype:
        latents = latents.astype(dtype)
    return DecodedShard(keys, latents, labels, np.ones(n, bool), [])


def _regular_by_numpy(rows, key_len: int):
    """(keys, .cls sizes) when every sample's two tar headers are laid out as ours are, checked at once with numpy
    over the (n, 512) views of the headers; None when any differs."""
    hc, hn = rows(0, 512), rows(1024, 512)   # every .cls header and every .npy header, without copying
    first_c, first_n = hc[0], hn[0]
    same = lambda h, ref, a, b: (h[:, a:b] == ref[a:b]).all()  # noqa: E731
    if not (same(hc, first_c, 257, 263) and same(hn, first_n, 257, 263)       # ustar magic
            and same(hc, first_c, 156, 157) and same(hn, first_n, 156, 157)   # regular files
            and same(hn, first_n, 124, 136)                                   # every .npy the same size
            and same(hc, first_c, key_len, 100) and same(hn, first_n, key_len, 100)   # .cls / .npy, NUL padded
            and (hc[:, :key_len] == hn[:, :key_len]).all()):                   # one key per pair
        return None
    keys = np.ascontiguousarray(hc[:, :key_len]).view(f"S{key_len}").ravel().astype(str)
    return keys, _octal(hc[:, 124:136])


def _regular_by_tarfile(data, url: str, n: int, period: int, key_len: int, npy_size: int, archive_end: bool):
    """_regular_by_numpy from tarfile's listing of every member: (keys, .cls sizes) when sample i is
    `<key>.cls` at i * period then `<key>.npy` of npy_size bytes, keys of key_len characters; None otherwise."""
    names, offsets, sizes = [], [], []
    for name, offset, size in _tarfile_members(data, url, archive_end):
        if len(names) == 2 * n:
            return None
        names.append(name)
        offsets.append(offset)
        sizes.append(size)
    if len(names) != 2 * n:
        return None
    offsets, sizes = np.asarray(offsets), np.asarray(sizes)
    starts = np.arange(n) * period
    if not ((offsets[0::2] == starts + 512).all() and (offsets[1::2] == starts + 1536).all()
            and (sizes[1::2] == npy_size).all()):
        return None
    keys = [c[:key_len] for c in names[0::2]]
    if not all(c == k + ".cls" and p == k + ".npy" for k, c, p in zip(keys, names[0::2], names[1::2])):
        return None
    return np.asarray(keys, dtype=str), sizes[0::2]


def decode_shard(data: bytes, url: str, sample_shape: tuple[int, ...], dtype,
                 expected: int | None = None) -> DecodedShard:
    """All samples of one shard. A damaged tar or a sample count other than `expected` raises DataError; a sample
    whose .npy or .cls is missing or unreadable, or has another shape, is marked invalid (the caller decides)."""
    dtype = np.dtype(dtype)
    if expected:
        fast = _decode_regular(data, url, tuple(sample_shape), dtype, expected)
        if fast is not None:
            return fast
    sample_bytes = dtype.itemsize * int(np.prod(sample_shape)) + 1024
    cap = expected if expected is not None else max(1, len(data) // sample_bytes)
    latents = np.zeros((cap, *sample_shape), dtype)
    labels = np.zeros(cap, np.int64)
    valid = np.zeros(cap, bool)
    keys: list[str] = []
    corrupt: list[str] = []
    cache: dict = {}
    flat = latents.reshape(cap, -1)
    count = int(np.prod(sample_shape))
    cur_key, have_npy, have_cls, ok = None, False, False, True

    def close_sample():
        i = len(keys) - 1
        if have_npy and have_cls and ok:
            valid[i] = True
        else:
            why = "unreadable member" if not ok else ("no .npy" if not have_npy else "no .cls")
            corrupt.append(f"{cur_key}: {why}")

    for name, start, size in _members(data, url):
        base = name.rsplit("/", 1)[-1]
        dot = base.find(".")
        key = name[: len(name) - len(base) + dot] if dot >= 0 else name
        ext = base[dot + 1:] if dot >= 0 else ""
        if key != cur_key:
            if cur_key is not None:
                close_sample()
            keys.append(key)
            if len(keys) > cap:
                raise DataError(f"{url}: more samples than the manifest's {expected}")
            cur_key, have_npy, have_cls, ok = key, False, False, True
        i = len(keys) - 1
        if ext == "npy":
            layout = _npy_layout(data, start, size, cache)
            if layout is None or layout[1] != tuple(sample_shape):
                ok = False
                continue
            flat[i] = np.frombuffer(data, layout[0], count, layout[2])  # casts to the stored dtype if needed
            have_npy = True
        elif ext == "cls":
            try:
                labels[i] = int(bytes(data[start:start + size]))
                have_cls = True
            except ValueError:
                ok = False
    if cur_key is not None:
        close_sample()
    n = len(keys)
    if expected is not None and n != expected:
        raise DataError(f"{url}: {n} samples, the manifest says {expected}")
    return DecodedShard(np.asarray(keys, dtype=str), latents[:n], labels[:n], valid[:n], corrupt)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
