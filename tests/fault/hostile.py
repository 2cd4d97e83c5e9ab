"""Hostile inputs generated as classes: every image format x every way to break it, every folder shape,
every label source x every way to get labels wrong. Nothing here is a fixed file but pydicom's real
DICOM samples, which are the base that the DICOM cases break.

Each case says what a careful reader must do with it: `refuse` (one clear line naming the file),
`handle` (read it, correctly) or `either` (a flipped bit may or may not be detectable, but must
never crash, hang or be read as something it is not).
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMATS = ("png", "jpeg", "tiff", "bmp", "dicom", "nifti", "npz")
BREAKAGES = ("empty", "truncated", "bit-flipped", "wrong extension", "huge declared size", "degenerate shape",
             "non-finite", "multi-page")
EXT = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "bmp": ".bmp", "dicom": ".dcm", "nifti": ".nii.gz",
       "npz": ".npz"}
WRONG = {"png": ".dcm", "jpeg": ".png", "tiff": ".jpg", "bmp": ".tif", "dicom": ".png", "nifti": ".png",
         "npz": ".nii"}


@dataclass
class Case:
    group: str  # "format x breakage" | "folder shape" | "label source"
    name: str
    files: dict[str, bytes | str]  # relative path -> bytes, or "symlink:<target>", "fifo", "dir"
    expect: str  # refuse | handle | either
    needle: str  # what the reason must name (the file at fault)
    kinds: tuple[str, ...] = ("train", "enhance")
    config: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.group}: {self.name}"


def _image(seed: int = 0, size: int = 64, rgb: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    base = (128 + 100 * np.sin(xx / 7.0) * np.cos(yy / 5.0) + rng.normal(0, 8, (size, size))).clip(0, 255)
    img = base.astype(np.uint8)
    return np.stack([img, img[::-1], img[:, ::-1]], -1) if rgb else img


def good(fmt: str, size: int = 64) -> bytes:
    """A valid file of `fmt` (64 x 64 unless said otherwise)."""
    import cv2

    if fmt in ("png", "jpeg", "bmp"):
        ok, buf = cv2.imencode(EXT[fmt], _image(size=size))
        return buf.tobytes()
    if fmt == "tiff":
        import tifffile

        b = io.BytesIO()
        tifffile.imwrite(b, _image(size=size).astype(np.uint16) * 200)
        return b.getvalue()
    if fmt == "dicom":
        from pydicom.data import get_testdata_file

        return Path(get_testdata_file("MR_small.dcm")).read_bytes()
    if fmt == "nifti":
        return _nifti(np.stack([_image(k, size) for k in range(4)], -1).astype(np.float32))
    return _npz(train_images=np.stack([_image(k, size) for k in range(4)]), train_labels=np.array([0, 1, 0, 1]))


def _nifti(vol: np.ndarray) -> bytes:
    import gzip

    import nibabel as nib

    return gzip.compress(nib.Nifti1Image(vol, np.eye(4)).to_bytes(), mtime=0)


def _npz(**arrays) -> bytes:
    b = io.BytesIO()
    np.savez(b, **arrays)
    return b.getvalue()


def flip_bits(data: bytes, seed: int, n: int = 12, keep: int = 16) -> bytes:
    """`n` seeded single-bit flips anywhere after the first `keep` bytes (the magic stays)."""
    rng = np.random.default_rng(seed)
    b = bytearray(data)
    for pos in rng.integers(keep, len(b), n):
        b[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def png_bomb(side: int = 30000) -> bytes:
    """A real 1-bit PNG declaring side x side pixels (about 110 KB for 30000): decoding it costs gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp, row, parts = zlib.compressobj(9), b"\x00" * (1 + (side + 7) // 8), []
    for _ in range(side):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def huge(fmt: str) -> bytes:
    """A file whose header declares far more pixels than any limit (the body stays small)."""
    if fmt == "png":
        return png_bomb(30000)
    if fmt == "jpeg":
        data = bytearray(good("jpeg"))
        i = data.index(b"\xff\xc0")
        data[i + 5:i + 9] = struct.pack(">HH", 60000, 60000)
        return bytes(data)
    if fmt == "bmp":
        data = bytearray(good("bmp"))
        data[18:26] = struct.pack("<ii", 50000, 50000)
        return bytes(data)
    if fmt == "tiff":  # one IFD declaring 100000 x 100000, with a 64-byte strip
        tags = [(256, 4, 100000), (257, 4, 100000), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8 + 2 + 12 * 8 + 4),
                (278, 4, 100000), (279, 4, 64)]
        ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, ty, 1, v) for t, ty, v in tags)
        return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 4 + b"\x00" * 64
    if fmt == "dicom":
        return _dicom_edit(Rows=65535, Columns=65535, NumberOfFrames=1000)
    if fmt == "nifti":
        import gzip

        raw = bytearray(gzip.decompress(good("nifti")))
        raw[40:56] = struct.pack("<8h", 3, 32767, 32767, 32767, 1, 1, 1, 1)
        return gzip.compress(bytes(raw), mtime=0)
    header = {"descr": "<u1", "fortran_order": False, "shape": (100000, 30000, 30000)}
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, header)
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        z.writestr("train_images.npy", npy.getvalue() + b"\x00" * 64)
    return b.getvalue()


def _dicom_edit(base: str = "MR_small.dcm", **fields) -> bytes:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file(base))
    for k, v in fields.items():
        setattr(ds, k, v)
    b = io.BytesIO()
    ds.save_as(b)
    return b.getvalue()


def degenerate(fmt: str) -> bytes:
    if fmt in ("png", "jpeg", "bmp", "tiff"):
        import cv2

        if fmt == "tiff":
            import tifffile

            b = io.BytesIO()
            tifffile.imwrite(b, np.zeros((1, 1), np.uint8))
            return b.getvalue()
        return cv2.imencode(EXT[fmt], np.zeros((1, 1), np.uint8))[1].tobytes()
    if fmt == "dicom":
        return _dicom_edit(Rows=1, Columns=1)
    if fmt == "nifti":
        return _nifti(np.zeros((1, 1, 1), np.float32))
    return _npz(train_images=np.zeros((4, 1, 1), np.uint8))


def non_finite(fmt: str) -> bytes | None:
    vol = np.stack([_image(k) for k in range(4)], -1).astype(np.float32) / 255
    vol[10:20, 10:20] = np.nan
    vol[0, 0] = np.inf
    if fmt == "tiff":
        import tifffile

        b = io.BytesIO()
        tifffile.imwrite(b, vol[..., 0])
        return b.getvalue()
    if fmt == "dicom":
        return _dicom_edit("CT_small.dcm", RescaleSlope="inf")
    if fmt == "nifti":
        return _nifti(vol)
    if fmt == "npz":
        return _npz(train_images=np.moveaxis(vol, -1, 0))
    return None  # PNG, JPEG and BMP store integers only: they cannot hold a NaN


def multi_page(fmt: str) -> bytes | None:
    from PIL import Image as PILImage

    frames = [PILImage.fromarray(_image(k)) for k in range(3)]
    if fmt == "png":
        b = io.BytesIO()
        frames[0].save(b, "PNG", save_all=True, append_images=frames[1:])
        return b.getvalue()
    if fmt == "jpeg":
        b = io.BytesIO()
        rgb = [f.convert("RGB") for f in frames]
        rgb[0].save(b, "MPO", save_all=True, append_images=rgb[1:])
        return b.getvalue()
    if fmt == "tiff":
        import tifffile

        b = io.BytesIO()
        with tifffile.TiffWriter(b) as w:
            for k in range(3):
                w.write(_image(k))
        return b.getvalue()
    if fmt == "dicom":
        from pydicom.data import get_testdata_file

        return Path(get_testdata_file("emri_small.dcm")).read_bytes()  # 10 frames
    if fmt == "nifti":
        return _nifti(np.stack([np.stack([_image(k + t) for k in range(4)], -1) for t in range(3)], -1)
                      .astype(np.float32))
    if fmt == "npz":
        return _npz(train_images=np.zeros((4, 64, 64, 3, 2), np.uint8))  # a 5-D stack is no image collection
    return None  # BMP holds one picture by definition


def format_cases(bitflip_seeds: tuple[int, ...] = (1,)) -> list[Case]:
    """Every image format x every breakage (not-applicable pairs left out, and said so by their absence)."""
    out = []
    for fmt in FORMATS:
        name = f"scan{EXT[fmt]}"
        base = good(fmt)
        out.append(Case("format x breakage", f"{fmt} / empty", {name: b""}, "refuse", name))
        out.append(Case("format x breakage", f"{fmt} / truncated", {name: base[: len(base) // 2]}, "refuse", name))
        for seed in bitflip_seeds:
            out.append(Case("format x breakage", f"{fmt} / bit-flipped (seed {seed})",
                            {name: flip_bits(base, seed)}, "either", name))
        wrong = f"scan{WRONG[fmt]}"
        out.append(Case("format x breakage", f"{fmt} / wrong extension ({WRONG[fmt]})", {wrong: base}, "handle", wrong))
        out.append(Case("format x breakage", f"{fmt} / huge declared size", {name: huge(fmt)}, "refuse", name))
        out.append(Case("format x breakage", f"{fmt} / degenerate shape", {name: degenerate(fmt)}, "refuse", name))
        nf = non_finite(fmt)
        if nf is not None:
            out.append(Case("format x breakage", f"{fmt} / non-finite", {name: nf}, "refuse", name))
        mp = multi_page(fmt)
        if mp is not None:
            out.append(Case("format x breakage", f"{fmt} / multi-page", {name: mp}, "refuse", name))
    return out


def folder_cases() -> list[Case]:
    png = good("png")
    return [
        Case("folder shape", "empty", {"dir:.": "dir"}, "refuse", "holds no files"),
        Case("folder shape", "hidden files only", {".DS_Store": b"\0\0\0\1Bud1", ".a.png": png}, "refuse",
             "holds no files"),
        Case("folder shape", "empty class folder", {"tumor/a.png": png, "dir:healthy": "dir"}, "refuse", "healthy"),
        Case("folder shape", "mixed formats (PNG, JPEG, TIFF, BMP, DICOM, NIfTI, npz)",
             {f"m{EXT[f]}": good(f) for f in FORMATS}, "handle", "-"),
        Case("folder shape", "symlink escaping the folder", {"a.png": png, "b.png": "symlink:../outside.png"},
             "refuse", "b.png"),
        Case("folder shape", "dangling symlink", {"a.png": png, "b.png": "symlink:gone.png"}, "refuse", "b.png"),
        Case("folder shape", "looping symlinks", {"a.png": png, "l1.png": "symlink:l2.png",
                                                  "l2.png": "symlink:l1.png"}, "refuse", "loops"),
        Case("folder shape", "FIFO named like an image", {"a.png": png, "p.png": "fifo"}, "refuse", "p.png"),
        Case("folder shape", "odd names (-x, $(...), spaces, unicode)",
             {"-rf.png": png, "$(touch PWNED).png": png, "a b.png": png, "ünï 画像.png": png}, "handle", "-"),
    ]


def label_cases() -> list[Case]:
    png, other = good("png"), good("jpeg")
    csv = lambda text: text.encode()  # noqa: E731
    imgs = {"a.png": png, "b.jpg": other}
    sub = lambda n: _npz(train_images=np.stack([_image(k) for k in range(4)]), train_labels=np.arange(n) % 2)  # noqa
    dup_zip = io.BytesIO()
    with zipfile.ZipFile(dup_zip, "w") as z:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate name we write on purpose
            for labels in (np.array([0, 1, 0, 1]), np.array([1, 1, 1, 1])):
                b = io.BytesIO()
                np.save(b, labels)
                z.writestr("train_labels.npy", b.getvalue())
            b = io.BytesIO()
            np.save(b, np.stack([_image(k) for k in range(4)]))
            z.writestr("train_images.npy", b.getvalue())
    bytes_labels = _npz(train_images=np.stack([_image(k) for k in range(4)]),
                        train_labels=np.array([b"tum\xe9", b"ok", b"ok", b"ok"]))
    t = ("train",)
    return [
        Case("label source", "labels.csv / names missing files", {**imgs, "labels.csv": csv(
            "file,label\na.png,0\nb.jpg,1\nc.png,1\n")}, "refuse", "labels.csv line 4", t),
        Case("label source", "labels.csv / path escapes", {**imgs, "labels.csv": csv(
            "file,label\na.png,0\n../../etc/passwd,1\n")}, "refuse", "labels.csv line 3", t),
        Case("label source", "labels.csv / Windows-1252 encoding", {**imgs, "labels.csv": "file,label\na.png,tumeur\n"
             "b.jpg,l\u00e9sion\n".encode("cp1252")}, "refuse", "labels.csv line 3", t),
        Case("label source", "labels.csv / conflicting duplicate rows", {**imgs, "labels.csv": csv(
            "file,label\na.png,0\nb.jpg,1\na.png,1\n")}, "refuse", "labels.csv lines 2 and 4", t),
        Case("label source", "labels.csv / identical duplicate rows", {**imgs, "labels.csv": csv(
            "file,label\na.png,0\nb.jpg,1\na.png,0\n")}, "handle", "-", t),
        Case("label source", "sub-folders / missing files (empty class)", {"c0/a.png": png, "dir:c1": "dir"},
             "refuse", "c1", t),
        Case("label source", "sub-folders / path escapes (class folder links outside)",
             {"c0/a.png": png, "c1": "symlink:../outside-dir"}, "refuse", "c1", t),
        Case("label source", "sub-folders / bad encoding (folder name not UTF-8)",
             {"c0/a.png": png, os.fsdecode(b"c\xe91") + "/b.png": png}, "refuse", "UTF-8", t),
        Case("label source", "sub-folders / duplicate rows (same file in two classes)",
             {"c0/a.png": png, "c1/a.png": png}, "handle", "-", t),
        Case("label source", "npz / missing rows (labels shorter than images)", {"set.npz": sub(3)}, "refuse",
             "set.npz", t),
        Case("label source", "npz / path escapes (a member named ../train_images.npy)",
             {"set.npz": _zip_member("../train_images.npy")}, "refuse", "set.npz", t),
        Case("label source", "npz / bad encoding (byte-string labels)", {"set.npz": bytes_labels}, "refuse",
             "set.npz", t),
        Case("label source", "npz / duplicate rows (two train_labels members)", {"set.npz": dup_zip.getvalue()},
             "refuse", "set.npz", t),
    ]


def _zip_member(name: str) -> bytes:
    b, arr = io.BytesIO(), io.BytesIO()
    np.save(arr, np.stack([_image(k) for k in range(4)]))
    with zipfile.ZipFile(b, "w") as z:
        z.writestr(name, arr.getvalue())
    return b.getvalue()


def materialise(case: Case, root: Path) -> Path:
    """Write the case's folder under `root` (links, FIFOs and empty folders included); returns it."""
    d = root
    d.mkdir(parents=True, exist_ok=True)
    (root.parent / "outside.png").write_bytes(good("png"))
    (root.parent / "outside-dir").mkdir(exist_ok=True)
    (root.parent / "outside-dir" / "secret.png").write_bytes(good("png"))
    for rel, content in case.files.items():
        if rel.startswith("dir:"):
            (d / rel[4:]).mkdir(parents=True, exist_ok=True)
            continue
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str) and content.startswith("symlink:"):
            os.symlink(content[len("symlink:"):], p)
        elif content == "fifo":
            os.mkfifo(p)
        else:
            p.write_bytes(content)
    return d


def all_cases(bitflip_seeds: tuple[int, ...] = (1,)) -> list[Case]:
    return format_cases(bitflip_seeds) + folder_cases() + label_cases()
