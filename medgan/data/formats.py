"""Format by content, and each format's header read without decoding a pixel.

`probe(path)` returns a `Header`: the format the bytes say (magic numbers, the DICOM preamble,
the NIfTI header inside a gzip stream), the declared size, frames, samples and bits. The
extension is only a hint: a mismatch is noted, never trusted. Limits are checked on the
header, so a 110 KB PNG declaring 30000 x 30000 pixels costs microseconds, not 8 GB.
"""

from __future__ import annotations

import gzip
import os
import stat
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgan.data.report import ReadError

EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff", ".bmp": "bmp",
              ".dcm": "dicom", ".dicom": "dicom", ".nii": "nifti", ".nii.gz": "nifti", ".npz": "npz"}
NAMES = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP", "dicom": "DICOM", "nifti": "NIfTI", "npz": "npz"}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass
class Header:
    """What a file declares. `frames`: frames/pages/time points; `slices`: depth of a volume;
    `items`: images of a collection (npz). `bits`: significant bits when declared, else None."""

    format: str
    height: int
    width: int
    frames: int = 1
    slices: int = 1
    items: int = 1
    samples: int = 1
    bits: int | None = None
    container_bits: int = 8
    photometric: str = "MONOCHROME2"
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def voxels(self) -> int:
        return self.height * self.width * self.frames * self.slices * self.items


def extension_format(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return "nifti"
    return EXTENSIONS.get(Path(name).suffix)


def sniff(head: bytes, path: Path) -> str | None:
    """The format the first bytes say, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    # DICOM first: its 128-byte preamble may itself hold a TIFF header (dual-personality files)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    if head[:2] == b"BM" and len(head) >= 26 and struct.unpack("<I", head[14:18])[0] in (12, 40, 52, 56, 64, 108, 124):
        return "bmp"
    if head[:4] == b"PK\x03\x04":
        return "npz"
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as fh:
                inner = fh.read(552)
        except Exception:  # a damaged gzip stream (zlib.error, EOFError, BadGzipFile): not a NIfTI we can read
            return None
        return "nifti" if _nifti_magic(inner) else None
    if _nifti_magic(head):
        return "nifti"
    # DICOM written without its 128-byte preamble (old files): trusted only with a .dcm name.
    if extension_format(path) == "dicom" and head[:2] in (b"\x02\x00", b"\x08\x00"):
        return "dicom"
    return None


def _nifti_magic(b: bytes) -> bool:
    if len(b) >= 348 and b[344:348] in (b"n+1\x00", b"ni1\x00"):
        return struct.unpack("<i", b[:4])[0] == 348 or struct.unpack(">i", b[:4])[0] == 348
    return len(b) >= 8 and b[4:8] == b"n+2\x00"


def open_checked(path: Path, name: str, max_file_bytes: int) -> tuple[int, bytes]:
    """(size, first 1 KB) of a regular, non-empty file within the size limit."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ReadError(name, "corrupt", f"cannot open: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ReadError(name, "unknown_format", "not a regular file")
    if st.st_size == 0:
        raise ReadError(name, "empty", "empty file (0 bytes)")
    if st.st_size > max_file_bytes:
        raise ReadError(name, "too_large", f"file is {st.st_size:,} bytes, over the limit of {max_file_bytes:,}")
    with open(path, "rb") as fh:
        return st.st_size, fh.read(1024)


def probe(path: Path, name: str, size: int, head: bytes, npz_split: str = "train") -> Header:
    """The header of `path` (already sniffed as readable); ReadError when it is truncated or corrupt."""
    fmt = sniff(head, path)
    if fmt is None:
        hint = extension_format(path)
        what = f"named as {NAMES[hint]} but its content is not" if hint else "content matches no image format"
        raise ReadError(name, "unknown_format", f"not an image: {what} (first bytes {head[:8].hex()})")
    try:
        header = npz_header(path, name, npz_split) if fmt == "npz" else _PROBES[fmt](path, name, size, head)
    except ReadError:
        raise
    except (EOFError, struct.error) as exc:
        raise ReadError(name, "truncated", f"{NAMES[fmt]} header is truncated ({type(exc).__name__})") from None
    except Exception as exc:  # any parser failure is this file's problem, never the reader's
        raise ReadError(name, "corrupt", f"{NAMES[fmt]} header is corrupt: {_first_line(exc)}") from None
    hint = extension_format(path)
    if hint is not None and hint != fmt:
        header.notes.append(f"extension says {NAMES[hint]}, content is {NAMES[fmt]}")
    return header


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


# -- PNG: chunks up to the first IDAT ------------------------------------------------------
def _png(path: Path, name: str, size: int, head: bytes) -> Header:
    with open(path, "rb") as fh:
        fh.seek(8)
        ihdr, sbit, frames = None, None, 1
        while True:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ReadError(name, "truncated", "PNG ends before its image data (no IDAT chunk)")
            length, kind = struct.unpack(">I4s", raw)
            if not kind.isalpha() or not kind.isascii():
                raise ReadError(name, "corrupt", f"PNG chunk type {kind!r} is not a chunk name (damaged file)")
            if length > 0x7FFFFFFF:
                raise ReadError(name, "corrupt", f"PNG chunk {kind!r} declares {length} bytes")
            if kind == b"IDAT":
                break
            body = fh.read(length)
            fh.seek(4, 1)  # crc: libpng checks it when decoding
            if len(body) < length:
                raise ReadError(name, "truncated", f"PNG ends inside its {kind.decode('latin-1')} chunk")
            if kind == b"IHDR":
                ihdr = struct.unpack(">IIBBBBB", body[:13])
            elif kind == b"sBIT":
                sbit = max(body) if body else None
            elif kind == b"acTL":
                frames = max(1, struct.unpack(">I", body[:4])[0])
            elif kind == b"IEND":
                raise ReadError(name, "no_pixels", "PNG has no image data (IEND before IDAT)")
    if ihdr is None:
        raise ReadError(name, "corrupt", "PNG has no IHDR chunk")
    w, h, depth, ctype = ihdr[:4]
    samples = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(ctype)
    if samples is None or depth not in (1, 2, 4, 8, 16):
        raise ReadError(name, "corrupt", f"PNG has an invalid colour type {ctype} / bit depth {depth}")
    photometric = {0: "MONOCHROME2", 2: "RGB", 3: "PALETTE", 4: "MONOCHROME2+ALPHA", 6: "RGBA"}[ctype]
    container = 16 if depth == 16 else 8
    return Header("png", h, w, frames=frames, samples=samples, bits=sbit if depth == 16 else min(depth, 8) if
                  ctype != 3 else 8, container_bits=container, photometric=photometric)


# -- JPEG: markers up to the first start-of-frame ------------------------------------------
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(path: Path, name: str, size: int, head: bytes) -> Header:
    mpo = False
    with open(path, "rb") as fh:
        fh.seek(2)
        while True:
            b = fh.read(1)
            if not b:
                raise ReadError(name, "truncated", "JPEG ends before its frame header")
            if b != b"\xff":
                continue
            marker = fh.read(1)
            while marker == b"\xff":
                marker = fh.read(1)
            if not marker:
                raise ReadError(name, "truncated", "JPEG ends before its frame header")
            m = marker[0]
            if m in (0x01, 0xD8) or 0xD0 <= m <= 0xD7:
                continue
            if m in (0xD9, 0xDA):
                raise ReadError(name, "corrupt", "JPEG has no frame header before its scan")
            raw = fh.read(2)
            if len(raw) < 2:
                raise ReadError(name, "truncated", "JPEG ends inside a marker")
            (length,) = struct.unpack(">H", raw)
            body = fh.read(max(0, length - 2))
            if len(body) < length - 2:
                raise ReadError(name, "truncated", "JPEG ends inside a marker")
            if m == 0xE2 and body[:4] == b"MPF\x00":
                mpo = True
            if m in _SOF:
                precision, h, w, comps = struct.unpack(">BHHB", body[:6])
                break
    frames = _pil_frames(path) if mpo else 1
    photometric = {1: "MONOCHROME2", 3: "RGB", 4: "CMYK"}.get(comps, f"{comps} components")
    return Header("jpeg", h, w, frames=frames, samples=min(comps, 3), bits=precision, container_bits=8 if
                  precision <= 8 else 16, photometric=photometric)


def _pil_frames(path: Path) -> int:
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as im:  # header only; sizes were checked above
            return int(getattr(im, "n_frames", 1))


# -- BMP -----------------------------------------------------------------------------------------
def _bmp(path: Path, name: str, size: int, head: bytes) -> Header:
    dib = struct.unpack("<I", head[14:18])[0]
    if dib == 12:
        w, h, _, bpp = struct.unpack("<HHHH", head[18:26])
    else:
        w, h, _, bpp = struct.unpack("<iiHH", head[18:30])
    w, h = abs(w), abs(h)  # negative height: rows stored top-down
    samples = 1 if bpp <= 8 else 3
    return Header("bmp", h, w, samples=samples, bits=8, photometric="RGB" if samples == 3 else "PALETTE")


# -- TIFF (tifffile parses the IFDs, never the strips) -------------------------------------------
def _tiff(path: Path, name: str, size: int, head: bytes) -> Header:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pages = [p for p in tif.pages if not getattr(p, "is_reduced", False)]  # thumbnails are no frames
        if not pages:
            raise ReadError(name, "no_pixels", "TIFF has no image page")
        p = pages[0]
        axes = p.axes
        shape = dict(zip(axes, p.shape))
        h, w = int(shape.get("Y", 0)), int(shape.get("X", 0))
        samples = int(p.samplesperpixel)
        depth = int(shape.get("Z", 1))  # a volume inside one page (rare)
        ends = [o + c for o, c in zip(p.dataoffsets, p.databytecounts)]
        if ends and max(ends) > size:
            raise ReadError(name, "truncated", f"TIFF ends at byte {size:,}; its pixel data runs to {max(ends):,}")
        maxval = p.tags.get("MaxSampleValue")
        bits = int(p.bitspersample)
        if maxval is not None and p.dtype is not None and p.dtype.kind == "u":
            mv = maxval.value if not isinstance(maxval.value, tuple) else max(maxval.value)
            if 0 < int(mv) < (1 << bits) - 1:
                bits = int(mv).bit_length()
        return Header("tiff", h, w, frames=len(pages), slices=depth, samples=samples, bits=bits,
                      container_bits=p.dtype.itemsize * 8 if p.dtype is not None else bits,
                      photometric=p.photometric.name, extra={"dtype": str(p.dtype), "compression": p.compression.name})


# -- DICOM (pydicom reads the data set; the pixel data is deferred) --------------------------------
def _dicom(path: Path, name: str, size: int, head: bytes) -> Header:
    import pydicom

    ds = pydicom.dcmread(path, defer_size=1024, force=head[128:132] != b"DICM")
    tag = next((t for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if t in ds), None)
    if tag is None:
        sop = ds.get("SOPClassUID", None)
        kind = getattr(sop, "name", None) or str(sop or "unknown SOP class")
        raise ReadError(name, "no_pixels", f"DICOM file holds no image (no Pixel Data; {kind})")
    for key in ("Rows", "Columns", "BitsAllocated"):
        if key not in ds:
            raise ReadError(name, "corrupt", f"DICOM image has no {key}")
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    alloc = int(ds.BitsAllocated)
    bits = int(ds.get("BitsStored", alloc) or alloc)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    elem = ds.get_item(tag)
    notes = []
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        # Old files without a meta header: the encoding pydicom read the data set with says the syntax.
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = ds.original_encoding
        ds.file_meta = meta if meta is not None else FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        notes.append("DICOM without a transfer syntax: read as its data set's encoding")
    syntax = ds.file_meta.TransferSyntaxUID
    compressed = bool(getattr(syntax, "is_compressed", False))
    length = getattr(elem, "length", None)
    tell = getattr(elem, "value_tell", None)
    defect = None  # raised by the reader after the size limits, so a bomb is named as one
    if length not in (None, 0xFFFFFFFF) and tell is not None and tell + length > size:
        defect = ReadError(name, "truncated", f"DICOM ends at byte {size:,}; its pixel data runs to {tell + length:,}")
    elif not compressed and length not in (None, 0xFFFFFFFF) and rows * cols * frames * spp > 0:
        need = (rows * cols * frames * spp * alloc + 7) // 8
        if length < need:
            defect = ReadError(name, "truncated", f"DICOM pixel data holds {length:,} bytes; {cols} x {rows} x "
                               f"{frames} frame(s) x {alloc} bits need {need:,}")
    if compressed:
        from pydicom.pixels import get_decoder

        try:
            ok = get_decoder(syntax).is_available
        except (NotImplementedError, ValueError):
            ok = False
        if not ok:
            raise ReadError(name, "unsupported", f"DICOM transfer syntax {getattr(syntax, 'name', syntax)} needs "
                            "a decoder that is not installed (e.g. pylibjpeg)")
    return Header("dicom", rows, cols, frames=frames, samples=spp, bits=bits, container_bits=alloc,
                  photometric=photometric, notes=notes, extra={"ds": ds, "defect": defect})


# -- NIfTI (nibabel reads the header; the data stays behind a proxy) -----------------------------
def nifti_image(path: Path):  # noqa: ANN201 - a nibabel image
    """The nibabel image of a NIfTI-1/2 file, plain or gzipped, whatever its name."""
    import nibabel as nib

    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    with opener(path, "rb") as fh:
        first = fh.read(8)
    klass = nib.Nifti2Image if first[4:8] == b"n+2\x00" else nib.Nifti1Image
    return klass.from_stream(opener(path, "rb"))


def _nifti(path: Path, name: str, size: int, head: bytes) -> Header:
    img = nifti_image(path)
    shape = list(img.header.get_data_shape())
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    if len(shape) > 4 or not shape:
        raise ReadError(name, "unsupported", f"NIfTI volume of shape {tuple(shape)}: 2-D, 3-D or 4-D only")
    shape += [1] * (4 - len(shape))
    dtype = img.header.get_data_dtype()
    if dtype.names is not None:  # RGB24 and other structured voxels
        raise ReadError(name, "unsupported", f"NIfTI voxels of structured type {dtype}")
    return Header("nifti", int(shape[0]), int(shape[1]), frames=int(shape[3]), slices=int(shape[2]),
                  bits=None, container_bits=dtype.itemsize * 8, extra={"img": img, "shape": tuple(shape)})


# -- npz (MedMNIST-style: <split>_images, _labels, _masks) -----------------------------------------
def npy_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], Any]:
    import numpy as np

    with zf.open(member) as fh:
        version = np.lib.format.read_magic(fh)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(fh)
    return tuple(int(s) for s in shape), dtype


def npz_header(path: Path, name: str, split: str) -> Header:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ReadError(name, "corrupt", f"npz holds two members named {dup[0]!r}")
        arrays = {n[:-4]: n for n in names if n.endswith(".npy")}
        key = f"{split}_images"
        if not arrays:
            raise ReadError(name, "unknown_format", "zip archive holds no .npy arrays (not an npz)")
        if key not in arrays:
            raise ReadError(name, "no_pixels", f"npz has no {key!r} array (arrays: {sorted(arrays)})")
        shapes = {}
        for part in ("images", "labels", "masks"):
            member = arrays.get(f"{split}_{part}")
            if member is None:
                continue
            shape, dtype = npy_header(zf, member)
            if dtype.hasobject:
                raise ReadError(name, "unsupported", f"{split}_{part} is an object array (pickles are refused)")
            shapes[part] = (shape, dtype)
    shape, dtype = shapes["images"]
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3, 4)):
        raise ReadError(name, "degenerate", f"{key} has shape {shape}, expected [N, H, W] or [N, H, W, 3]")
    n = shape[0]
    if "labels" in shapes:
        ls = shapes["labels"][0]
        if not ls or ls[0] != n:
            raise ReadError(name, "corrupt", f"{split}_labels has {ls[0] if ls else 0} rows but {key} has {n}")
        if shapes["labels"][1].kind not in "iubf":
            raise ReadError(name, "corrupt", f"{split}_labels holds {shapes['labels'][1]} values, not integer labels")
        if len(ls) > 2 or (len(ls) == 2 and ls[1] != 1):
            raise ReadError(name, "unsupported", f"{split}_labels has shape {ls}: one label per image expected "
                            "(multi-label arrays are not read)")
    if "masks" in shapes and tuple(shapes["masks"][0][:3]) != tuple(shape[:3]):
        raise ReadError(name, "bad_mask", f"{split}_masks has shape {shapes['masks'][0]} but {key} has {shape}")
    samples = shape[3] if len(shape) == 4 else 1
    return Header("npz", shape[1], shape[2], items=n, samples=samples, bits=None,
                  container_bits=dtype.itemsize * 8, photometric="RGB" if samples >= 3 else "MONOCHROME2",
                  extra={"split": split, "dtype": str(dtype), "has": sorted(shapes)})


_PROBES = {"png": _png, "jpeg": _jpeg, "bmp": _bmp, "tiff": _tiff, "dicom": _dicom, "nifti": _nifti}
