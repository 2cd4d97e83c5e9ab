"""`read_image(path, policy) -> Image`: the one way any job kind turns a file into pixels.

Order of work for every file: size and type of the file; format by content; the header
(declared size, frames, bits) checked against the policy's limits; only then the decode,
of the selected frames only; then non-finite pixels, intensity scaling to [0, 1] and colour.
Every failure is a `ReadError` naming the file with one line; no decoder exception escapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medgan.data.formats import NAMES, Header, nifti_image, open_checked, probe
from medgan.data.policy import ReadPolicy
from medgan.data.report import ReadError

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601


@dataclass(frozen=True)
class Image:
    """Decoded pixels and what the file said about them.

    pixels: float32 [N, H, W] (gray) or [N, H, W, 3] (RGB) in [0, 1]; N > 1 for the selected
    frames of a multi-frame file, the slices of a volume or the items of an npz collection.
    """

    name: str
    pixels: np.ndarray
    format: str
    bit_depth: int  # significant bits per sample of the stored pixels
    photometric: str  # as stored: MONOCHROME1/2, RGB, PALETTE, ...
    frames_in_file: int  # frames / pages / time points the file holds
    indices: tuple[int, ...]  # which frames (or slices, or items) `pixels` holds
    scaling: str  # how stored values became [0, 1]
    notes: tuple[str, ...] = ()
    labels: np.ndarray | None = None  # [N] int64, npz only
    masks: np.ndarray | None = None  # [N, H, W] bool, npz only
    dropped_empty: int = 0  # near-constant volume slices left out

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def rgb(self) -> bool:
        return self.pixels.ndim == 4

    def frame(self, i: int = 0) -> np.ndarray:
        """[H, W] or [H, W, 3] float32 in [0, 1]."""
        return self.pixels[i]


@dataclass
class _Raw:
    """Decoded, not yet scaled: stored values [N, H, W(, C)] and how to map them."""

    values: np.ndarray
    indices: tuple[int, ...]
    scaled: bool = False  # already in [0, 1] (DICOM after its LUTs)
    scaling: str = ""
    invert: bool = False  # MONOCHROME1 / MinIsWhite: low values are bright
    notes: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    masks: np.ndarray | None = None
    dropped: int = 0


def read_image(path: Path | str, policy: ReadPolicy | None = None, name: str | None = None) -> Image:
    """Read one file under `policy` (default: ReadPolicy()). Raises ReadError (a DataError)."""
    policy = policy or ReadPolicy()
    path = Path(path)
    name = name or path.name
    header = read_header(path, policy, name)
    try:
        raw = _DECODERS[header.format](path, name, header, policy)
    except ReadError:
        raise
    except MemoryError:
        raise ReadError(name, "too_many_pixels", "out of memory while decoding") from None
    except Exception as exc:  # a decoder's own error: this file's problem, in one line
        raise _decode_error(name, header.format, exc) from None
    return _finish(name, header, raw, policy)


def read_header(path: Path, policy: ReadPolicy, name: str) -> Header:
    """File checks, format by content and the header's limits; no pixel decoded."""
    size, head = open_checked(path, name, policy.max_file_bytes)
    header = probe(path, name, size, head, npz_split=policy.npz_split)
    if header.format not in policy.formats:
        raise ReadError(name, "format_not_allowed", f"{NAMES[header.format]} is not among the accepted formats "
                        f"({', '.join(policy.formats)})")
    check_limits(name, header, policy)
    if header.extra.get("defect") is not None:
        raise header.extra["defect"]
    return header


def check_limits(name: str, h: Header, policy: ReadPolicy) -> None:
    fmt = NAMES[h.format]
    if h.height * h.width > policy.max_pixels:
        raise ReadError(name, "too_many_pixels", f"{fmt} declares {h.width} x {h.height} = "
                        f"{h.width * h.height / 1e6:,.1f} MP, over the limit of {policy.max_pixels / 1e6:,.1f} MP")
    if h.voxels > policy.max_voxels:
        raise ReadError(name, "too_many_pixels", f"{fmt} declares {h.voxels:,} pixels in all "
                        f"({h.width} x {h.height} x {h.voxels // max(1, h.width * h.height):,}), over the limit "
                        f"of {policy.max_voxels:,}")
    if min(h.height, h.width) < policy.min_side or h.items == 0 or h.frames == 0 or h.slices == 0:
        shape = f"{h.width} x {h.height}" + (f" x {h.items} items" if h.items != 1 else "")
        raise ReadError(name, "degenerate", f"{fmt} image is {shape} pixels; a side under {policy.min_side} "
                        "px (min_side) cannot be an image to learn from or enhance")
    if policy.bit_depths is not None and (h.bits or h.container_bits) not in policy.bit_depths:
        raise ReadError(name, "bit_depth", f"{fmt} stores {h.bits or h.container_bits}-bit samples; accepted: "
                        f"{', '.join(map(str, policy.bit_depths))}")


def select_frames(name: str, n: int, choice, what: str) -> list[int]:  # noqa: ANN001 - FrameChoice
    """Indices of the frames (pages, time points, slices) the policy asks for out of `n`."""
    if n == 1:
        return [0]
    if choice == "refuse":
        raise ReadError(name, "multi_frame", f"holds {n} {what}; set read.frames to all, first, middle, last or "
                        "an index to say which to use")
    if choice == "all":
        return list(range(n))
    if isinstance(choice, int):
        if choice >= n:
            raise ReadError(name, "multi_frame", f"{what} index {choice} asked for, but the file holds {n}")
        return [choice]
    return [{"first": 0, "middle": n // 2, "last": n - 1}[choice]]


def _decode_error(name: str, fmt: str, exc: BaseException) -> ReadError:
    text = " ".join(str(exc).split())[:200]
    low = text.lower()
    if isinstance(exc, EOFError) or any(w in low for w in ("truncat", "end of file", "eof", "incomplete",
                                                           "unexpected end", "not enough data",
                                                           "less than expected")):
        return ReadError(name, "truncated", f"{NAMES[fmt]} pixel data is truncated ({type(exc).__name__}: {text})")
    if isinstance(exc, (NotImplementedError, ImportError)):
        return ReadError(name, "unsupported", f"{NAMES[fmt]} variant not supported ({type(exc).__name__}: {text})")
    return ReadError(name, "corrupt", f"{NAMES[fmt]} pixel data cannot be decoded ({type(exc).__name__}: {text})")


# -- decoders: stored values of the selected frames ---------------------------------------
def _cv2_decode(path: Path, name: str, fmt: str, flags: int) -> np.ndarray:
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # failures are ReadErrors, not stderr noise
    data = np.fromfile(path, dtype=np.uint8)
    arr = cv2.imdecode(data, flags)
    if arr is None:
        if _ends_early(fmt, data.tobytes()):
            raise ReadError(name, "truncated", f"{NAMES[fmt]} file ends before its image data does")
        raise ReadError(name, "corrupt", f"{NAMES[fmt]} pixel data cannot be decoded (damaged)")
    if arr.ndim == 3:
        arr = arr[..., [2, 1, 0, 3][: arr.shape[2]]] if arr.shape[2] in (3, 4) else arr  # BGR(A) -> RGB(A)
    return arr


def _ends_early(fmt: str, data: bytes) -> bool:
    """Whether a file that did not decode lacks its proper end (IEND, EOI, the declared BMP size)."""
    if fmt == "png":
        return b"IEND" not in data[-64:]
    if fmt == "jpeg":
        return b"\xff\xd9" not in data[-64:]
    if fmt == "bmp":
        return len(data) >= 6 and int.from_bytes(data[2:6], "little") > len(data)
    return False


def _png(path: Path, name: str, h: Header, policy: ReadPolicy) -> _Raw:
    import cv2

    idx = select_frames(name, h.frames, policy.frames, "APNG frames")
    if h.frames > 1 and idx != [0]:
        return _pil_frames(path, idx)
    return _Raw(_cv2_decode(path, name, "png", cv2.IMREAD_UNCHANGED)[None], tuple(idx))


def _jpeg(path: Path, name: str, h: Header, policy: ReadPolicy) -> _Raw:
    import cv2

    idx = select_frames(name, h.frames, policy.frames, "MPO pictures")
    if h.frames > 1 and idx != [0]:
        return _pil_frames(path, idx)
    # ANYDEPTH|ANYCOLOR keeps gray as gray and, unlike UNCHANGED, applies the EXIF orientation
    return _Raw(_cv2_decode(path, name, "jpeg", cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)[None], tuple(idx))


def _pil_frames(path: Path, idx: list[int]) -> _Raw:
    from PIL import Image as PILImage

    out = []
    with PILImage.open(path) as im:
        for i in idx:
            im.seek(i)
            frame = im.convert("RGB") if im.mode not in ("L", "I;16", "RGB") else im
            out.append(np.asarray(frame))
    return _Raw(np.stack(out), tuple(idx))


def _bmp(path: Path, name: str, h: Header, policy: ReadPolicy) -> _Raw:
    import cv2

    return _Raw(_cv2_decode(path, name, "bmp", cv2.IMREAD_UNCHANGED)[None], (0,))


def _tiff(path: Path, name: str, h: Header, policy: ReadPolicy) -> _Raw:
    import tifffile

    idx = select_frames(name, h.frames, policy.frames, "pages")
    with tifffile.TiffFile(path) as tif:
        pages = [p for p in tif.pages if not getattr(p, "is_reduced", False)]
        frames, photometric, cmap = [], pages[idx[0]].photometric.name, None
        for i in idx:
            p = pages[i]
            a = p.asarray()
            axes = p.axes
            if "S" in axes and axes.index("S") != len(axes) - 1:
                a = np.moveaxis(a, axes.index("S"), -1)  # planar -> interleaved samples
            a = a.reshape((int(p.imagelength), int(p.imagewidth)) + ((int(p.samplesperpixel),)
                                                                     if p.samplesperpixel > 1 else ()))
            if a.shape[:2] != (h.height, h.width) or (frames and a.shape != frames[0].shape):
                raise ReadError(name, "unsupported", "TIFF pages of different sizes")
            frames.append(a)
            cmap = p.colormap if photometric == "PALETTE" else None
    values = np.stack(frames)
    raw = _Raw(values, tuple(idx), invert=photometric == "MINISWHITE")
    if photometric == "PALETTE" and cmap is not None:
        raw.values = np.moveaxis(cmap[:, values], 0, -1)  # [N, H, W, 3] uint16 palette entries
        raw.scaled, raw.scaling = True, "TIFF palette /65535"
        raw.values = raw.values.astype(np.float32) / 65535.0
    elif photometric not in ("MINISBLACK", "MINISWHITE", "RGB"):
        raise ReadError(name, "unsupported", f"TIFF photometric interpretation {photometric} is not read")
    return raw


def _dicom(path: Path, name: str, h: Header, policy: ReadPolicy) -> _Raw:
    from medgan.data.dicom import dicom_frames

    idx = select_frames(name, h.frames, policy.frames, "frames")
    return dicom_frames(h.extra["ds"], name, idx, h, policy)


def _nifti(path: Path, name: str, h: Header, policy: ReadPolicy) -> _Raw:
    from medgan.data.volume import nifti_frames

    t_idx = select_frames(name, h.frames, policy.frames, "time points")
    return nifti_frames(h.extra["img"], name, t_idx, h, policy)


def _npz(path: Path, name: str, h: Header, policy: ReadPolicy) -> _Raw:
    split = h.extra["split"]
    with np.load(path, allow_pickle=False) as z:
        images = z[f"{split}_images"]
        labels = z[f"{split}_labels"].reshape(len(images)) if "labels" in h.extra["has"] else None
    if labels is not None and labels.dtype.kind == "f":
        if not (np.isfinite(labels).all() and np.array_equal(labels, np.round(labels))):
            raise ReadError(name, "corrupt", f"{split}_labels holds non-integer values")
    labels = labels.astype(np.int64) if labels is not None else None
    with np.load(path, allow_pickle=False) as z:
        masks = z[f"{split}_masks"] > 0 if "masks" in h.extra["has"] else None
    if masks is not None and masks.ndim == 4:
        masks = masks.any(axis=-1)
    return _Raw(images, tuple(range(len(images))), labels=labels, masks=masks)


_DECODERS = {"png": _png, "jpeg": _jpeg, "bmp": _bmp, "tiff": _tiff, "dicom": _dicom, "nifti": _nifti, "npz": _npz}


# -- from stored values to [0, 1] ---------------------------------------------------------------
def _finish(name: str, h: Header, raw: _Raw, policy: ReadPolicy) -> Image:
    v = raw.values
    notes = list(h.notes) + raw.notes
    if v.ndim == 4 and v.shape[-1] == 1:
        v = v[..., 0]
    if v.ndim == 4 and v.shape[-1] in (2, 4):
        v = v[..., :-1] if v.shape[-1] == 4 else v[..., 0]  # alpha is not part of the picture
        notes.append("alpha channel dropped")
    if v.ndim not in (3, 4) or (v.ndim == 4 and v.shape[-1] != 3):
        raise ReadError(name, "unsupported", f"decoded to shape {tuple(v.shape[1:])}, not gray or RGB")
    if raw.scaled:
        unit, how = v.astype(np.float32, copy=False), raw.scaling
    else:
        unit, how = to_unit(name, v, h, policy)
    if raw.invert:
        unit = 1.0 - unit
        how += ", inverted (MONOCHROME1/MinIsWhite)"
    unit = _color(unit, policy.color)
    if min(unit.shape[1:3]) < policy.min_side:
        raise ReadError(name, "degenerate", f"decoded image is {unit.shape[2]} x {unit.shape[1]} pixels")
    bits = h.bits or h.container_bits
    return Image(name=name, pixels=np.ascontiguousarray(unit, dtype=np.float32), format=h.format, bit_depth=bits,
                 photometric=h.photometric, frames_in_file=h.frames, indices=raw.indices, scaling=how,
                 notes=tuple(notes), labels=raw.labels, masks=raw.masks, dropped_empty=raw.dropped)


def check_finite(name: str, v: np.ndarray, policy: ReadPolicy) -> np.ndarray:
    """Refuse (or, with non_finite=zero, replace by the minimum) NaN/inf values."""
    finite = np.isfinite(v)
    if finite.all():
        return v
    bad = int(v.size - finite.sum())
    if policy.non_finite == "refuse" or bad == v.size:
        raise ReadError(name, "non_finite", f"{bad:,} of {v.size:,} pixel values are NaN or infinite "
                        "(read.non_finite=zero replaces them by the minimum)")
    return np.where(finite, v, v[finite].min())


def to_unit(name: str, v: np.ndarray, h: Header, policy: ReadPolicy) -> tuple[np.ndarray, str]:
    """Stored values [N, ...] -> float32 in [0, 1] under policy.scaling; also says how."""
    if v.dtype.kind == "f":
        v = check_finite(name, v.astype(np.float32, copy=False), policy)
    if v.dtype == np.bool_:
        return v.astype(np.float32), "binary"
    if policy.scaling == "minmax":
        return _span(v.astype(np.float32), float(v.min()), float(v.max())), "min-max of the file"
    if v.dtype.kind == "f":
        lo, hi = float(v.min()), float(v.max())
        if lo >= 0.0 and hi <= 1.0:
            return v, "float in [0, 1] as stored"
        if policy.scaling == "dtype":
            return np.clip(v, 0, 1), "float clipped to [0, 1] (scaling=dtype)"
        plo, phi = np.percentile(v, policy.percentiles)
        return _span(v, float(plo), float(phi)), f"float by percentiles {policy.percentiles} of the file"
    info = np.iinfo(v.dtype)
    if v.dtype.kind == "i" and policy.scaling == "dtype":
        return _span(v.astype(np.float32), info.min, info.max), f"{v.dtype} range"
    if v.dtype.kind == "i":  # signed integers carry no display range: the file's own min..max
        return _span(v.astype(np.float32), float(v.min()), float(v.max())), "signed: min-max of the file"
    if policy.scaling == "dtype" or v.dtype == np.uint8:
        return v.astype(np.float32) / info.max, f"/{info.max}"
    bits, how = significant_bits(v, h)
    return np.clip(v.astype(np.float32) / float((1 << bits) - 1), 0, 1), how


def significant_bits(v: np.ndarray, h: Header) -> tuple[int, str]:
    """The true range of unsigned integers: the bits the file declares (PNG sBIT, TIFF BitsPerSample /
    MaxSampleValue, DICOM BitsStored), else the container's. Never fitted to the pixels: a dark
    16-bit image must stay dark, and every file of a series must map alike."""
    container = v.dtype.itemsize * 8
    if h.bits is not None and 1 <= h.bits < container:
        return h.bits, f"{h.bits} significant bits (declared)"
    return container, f"/{(1 << container) - 1}"


def _span(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros_like(v, dtype=np.float32)
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _color(unit: np.ndarray, color: str) -> np.ndarray:
    if color == "gray" and unit.ndim == 4:
        return unit @ _LUMA
    if color == "rgb" and unit.ndim == 3:
        return np.repeat(unit[..., None], 3, axis=-1)
    return unit
