"""The chunk container (docs/FORMAT.md): every compressed chunk is self-describing.

Layout (all integers little endian)::

    magic      4   b"NCDA"
    version    u8  FORMAT_VERSION
    mode       u8  mode id (modes.MODE_IDS)
    dtype      u8  dtype code (dtypes.DTYPE_CODES)
    ndim       u8  1..8
    shape      u32 * ndim
    plen       u16 length of the parameter block
    params     plen bytes, UTF-8 JSON object (what the mode needs to decode)
    mlen       u8  length of the model id
    model      mlen bytes, ASCII (content-addressed model id, empty if none)
    paylen     u64 payload length
    crc32      u32 zlib.crc32 of every byte above it followed by the payload
    payload    paylen bytes
"""
from __future__ import annotations

import json
import logging
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from .constants import FORMAT_VERSION
from .dtypes import code_of, dtype_of

MAGIC = b"NCDA"
MAX_NDIM = 8
#: refuse headers that claim more than this many decoded bytes (no allocation from unchecked lengths)
MAX_CHUNK_BYTES = 1 << 34

log = logging.getLogger("necoda_filter")


class CorruptChunk(ValueError):
    """A necoda chunk failed validation (bad magic, version, length, checksum or payload)."""


@dataclass
class Header:
    version: int
    mode_id: int
    dtype: np.dtype
    shape: tuple
    params: dict = field(default_factory=dict)
    model_id: str = ""
    payload_len: int = 0
    header_len: int = 0

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for s in self.shape:  # Python ints: no overflow on hostile headers
            n *= int(s)
        return n


def pack(mode_id: int, dtype, shape, payload: bytes, params: dict | None = None, model_id: str = "",
         version: int = 1) -> bytes:
    """One container; ``version`` is the lowest format version that describes the chunk."""
    if not 1 <= version <= FORMAT_VERSION:
        raise ValueError(f"necoda chunk format version must be 1..{FORMAT_VERSION}, not {version}")
    shape = tuple(int(s) for s in shape)
    if not 1 <= len(shape) <= MAX_NDIM:
        raise ValueError(f"necoda chunks have 1..{MAX_NDIM} dimensions, got {len(shape)}")
    pblob = json.dumps(params or {}, separators=(",", ":"), sort_keys=True).encode()
    mblob = model_id.encode("ascii")
    if len(pblob) > 0xFFFF or len(mblob) > 0xFF:
        raise ValueError("necoda chunk parameters or model id too long")
    head = b"".join([
        MAGIC,
        struct.pack("<BBBB", version, mode_id, code_of(dtype), len(shape)),
        struct.pack(f"<{len(shape)}I", *shape),
        struct.pack("<H", len(pblob)), pblob,
        struct.pack("<B", len(mblob)), mblob,
        struct.pack("<Q", len(payload)),
    ])
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"".join([head, struct.pack("<I", crc), payload])


def parse_header(buf) -> Header:
    """Validate and parse a chunk header (checksum not yet verified)."""
    mv = memoryview(buf).cast("B")
    n = len(mv)

    def need(pos, k, what):
        if pos + k > n:
            raise CorruptChunk(f"necoda chunk truncated: {n} bytes, {what} needs {pos + k}")

    need(0, 8, "fixed header")
    if bytes(mv[:4]) != MAGIC:
        raise CorruptChunk(f"not a necoda chunk (magic {bytes(mv[:4])!r}, expected {MAGIC!r})")
    version, mode_id, dcode, ndim = struct.unpack_from("<BBBB", mv, 4)
    if not 1 <= version <= FORMAT_VERSION:
        raise CorruptChunk(
            f"necoda chunk format version {version} is not supported by this necoda-filter "
            f"(it reads versions 1 to {FORMAT_VERSION}); upgrade necoda-filter")
    if not 1 <= ndim <= MAX_NDIM:
        raise CorruptChunk(f"necoda chunk header has invalid rank {ndim}")
    try:
        dtype = dtype_of(dcode)
    except ValueError as e:
        raise CorruptChunk(str(e)) from None
    pos = 8
    need(pos, 4 * ndim, "shape")
    shape = struct.unpack_from(f"<{ndim}I", mv, pos)
    pos += 4 * ndim
    need(pos, 2, "parameter length")
    (plen,) = struct.unpack_from("<H", mv, pos)
    pos += 2
    need(pos, plen, "parameters")
    try:
        params = json.loads(bytes(mv[pos:pos + plen]).decode()) if plen else {}
        if not isinstance(params, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise CorruptChunk("necoda chunk parameter block is not valid JSON") from None
    pos += plen
    need(pos, 1, "model id length")
    mlen = mv[pos]
    pos += 1
    need(pos, mlen, "model id")
    try:
        model_id = bytes(mv[pos:pos + mlen]).decode("ascii")
    except UnicodeDecodeError:
        raise CorruptChunk("necoda chunk model id is not ASCII") from None
    pos += mlen
    need(pos, 12, "payload length and checksum")
    (paylen,) = struct.unpack_from("<Q", mv, pos)
    pos += 12
    h = Header(version, mode_id, dtype, tuple(shape), params, model_id, paylen, pos)
    if h.nbytes > MAX_CHUNK_BYTES:
        raise CorruptChunk(f"necoda chunk claims an absurd decoded size ({h.nbytes} bytes)")
    if paylen != n - pos:
        raise CorruptChunk(f"necoda chunk payload length {paylen} does not match the {n - pos} bytes present")
    return h


def unpack(buf) -> tuple[Header, memoryview]:
    """Parse, verify the checksum, and return (header, payload view)."""
    h = parse_header(buf)
    mv = memoryview(buf).cast("B")
    (crc,) = struct.unpack_from("<I", mv, h.header_len - 4)
    payload = mv[h.header_len:]
    if zlib.crc32(payload, zlib.crc32(mv[:h.header_len - 4])) != crc:
        raise CorruptChunk("necoda chunk checksum mismatch: the stored chunk is corrupted")
    return h, payload
