"""Reading and writing 16-bit-per-channel PNGs, which Pillow cannot do for RGB.

SYNTHIA's label files are 16-bit RGB PNGs. `read_png16` uses OpenCV when it is installed and
otherwise decodes the file itself (zlib + the five PNG row filters, non-interlaced files only);
`write_png16` writes such files (filter 0), e.g. for test fixtures.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from shiftbench.errors import ShiftbenchError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png16(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write uint16 `[H, W]` (grey) or `[H, W, 3]` (RGB) as a 16-bit PNG."""
    a = np.asarray(array, dtype=np.uint16)
    colour = {2: 0, 3: 2}[a.ndim]
    height, width = a.shape[:2]
    rows = a.astype(">u2").reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw))
                + _chunk(b"IEND", b""))


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a.astype(np.int16) + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _unfilter(data: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    buf = np.frombuffer(data, np.uint8)
    if len(buf) < height * (stride + 1):
        raise ValueError("truncated image data")
    rows = buf[: height * (stride + 1)].reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 2:
            cur = line + prev
        elif kind == 1:  # Sub: a running sum per byte position within a pixel
            cur = np.cumsum(line.reshape(-1, bpp).astype(np.uint64), axis=0).astype(np.uint8).ravel()
        elif kind in (3, 4):
            cur = np.zeros(stride, np.uint8)
            for x in range(0, stride, bpp):
                left = cur[x - bpp:x] if x else np.zeros(bpp, np.uint8)
                up = prev[x:x + bpp]
                if kind == 3:
                    pred = ((left.astype(np.uint16) + up) // 2).astype(np.uint8)
                else:
                    upleft = prev[x - bpp:x] if x else np.zeros(bpp, np.uint8)
                    pred = _paeth(left, up, upleft).astype(np.uint8)
                cur[x:x + bpp] = line[x:x + bpp] + pred
        else:
            raise ValueError(f"unknown row filter {kind}")
        out[y] = cur
        prev = cur
    return out


def read_png16(path: str | os.PathLike) -> np.ndarray:
    """A PNG as `[H, W]` or `[H, W, C]` in its stored depth (uint16 for 16-bit files), channels
    in RGB order."""
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        cv2 = None
    if cv2 is not None:
        a = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
        if a is None:
            raise ShiftbenchError(f"{path}: not a readable image")
        return a[..., 2::-1] if a.ndim == 3 and a.shape[2] >= 3 else a
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(SIGNATURE):
        raise ShiftbenchError(f"{path}: not a PNG file")
    pos, idat, header = len(SIGNATURE), [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise ShiftbenchError(f"{path}: PNG without a header chunk")
    width, height, depth, colour, _, _, interlace = header
    if colour not in CHANNELS or depth not in (8, 16) or interlace:
        raise ShiftbenchError(f"{path}: unsupported PNG (bit depth {depth}, colour type {colour}, "
                              f"interlace {interlace}); install opencv-python to read it")
    channels, size = CHANNELS[colour], depth // 8
    try:
        rows = _unfilter(zlib.decompress(b"".join(idat)), height, width * channels * size,
                         channels * size)
    except (zlib.error, ValueError) as e:
        raise ShiftbenchError(f"{path}: corrupt PNG data ({e})") from None
    a = rows.view(">u2") if size == 2 else rows
    a = a.reshape(height, width, channels).astype(np.uint16 if size == 2 else np.uint8)
    return a[..., 0] if channels == 1 else a
