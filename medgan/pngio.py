"""A small deterministic PNG writer: 8/16-bit grayscale or RGB, with tEXt provenance chunks.

PIL cannot write 16-bit RGB and its text API varies by mode, so this module encodes PNG
directly (zlib + per-row 'Up' filter, vectorised in numpy). Output bytes depend only on the
pixels and the text, which is what makes generated shards reproducible byte for byte.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

_SIG = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def to_uint(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float image in [0, 1] -> uint8 or big-endian-ready uint16, rounded to nearest."""
    top = (1 << bit_depth) - 1
    q = np.round(np.clip(image, 0.0, 1.0) * top)
    return q.astype(np.uint8 if bit_depth == 8 else np.uint16)


def encode_png(pixels: np.ndarray, text: dict[str, str] | None = None, level: int = 6) -> bytes:
    """PNG bytes for `pixels` [H, W] or [H, W, 3] of dtype uint8 or uint16.

    `text` becomes tEXt chunks (keywords 1-79 Latin-1 chars; values are Latin-1 with
    unencodable characters replaced).
    """
    if pixels.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"PNG pixels must be uint8 or uint16, not {pixels.dtype}")
    if pixels.ndim == 2:
        color_type, channels = 0, 1
    elif pixels.ndim == 3 and pixels.shape[2] == 3:
        color_type, channels = 2, 3
    else:
        raise ValueError(f"PNG pixels must be [H, W] or [H, W, 3], got {pixels.shape}")
    h, w = pixels.shape[:2]
    depth = 8 if pixels.dtype == np.uint8 else 16
    raw = np.ascontiguousarray(pixels.astype(">u2") if depth == 16 else pixels)
    rows = raw.view(np.uint8).reshape(h, w * channels * depth // 8)  # [H, row bytes]
    # 'Up' filter: byte minus the byte above (mod 256); the first row is unchanged
    up = rows.copy()
    up[1:] = rows[1:] - rows[:-1]
    data = np.concatenate([np.full((h, 1), 2, np.uint8), up], axis=1).tobytes()
    out = [_SIG, _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0))]
    for key, value in (text or {}).items():
        k = str(key).encode("latin-1", "replace")[:79]
        out.append(_chunk(b"tEXt", k + b"\x00" + str(value).encode("latin-1", "replace")))
    out.append(_chunk(b"IDAT", zlib.compress(data, level)))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


def write_png(path: Path, image: np.ndarray, bit_depth: int = 8, text: dict[str, str] | None = None) -> bytes:
    """Write a float image [H, W] / [H, W, 3] / [C, H, W] in [0, 1] as PNG; returns the bytes."""
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[2] not in (1, 3):
        image = np.moveaxis(image, 0, -1)  # [C, H, W] -> [H, W, C]
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    blob = encode_png(to_uint(image, bit_depth), text)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(blob)
    return blob


def read_png_text(path: Path) -> dict[str, str]:
    """The tEXt chunks of a PNG file, as a dict (parsed directly, no PIL)."""
    data = Path(path).read_bytes()
    if data[:8] != _SIG:
        raise ValueError(f"{path} is not a PNG file")
    pos, out = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"tEXt":
            k, _, v = body.partition(b"\x00")
            out[k.decode("latin-1")] = v.decode("latin-1")
        pos += 12 + n
    return out
