"""How files are read: one frozen policy shared by every job kind (train, enhance, evaluate).

The policy travels inside each job's config (`TrainConfig.read`, `EnhanceConfig.read`,
`EvaluateConfig.read`), so a job's reading is part of what reproduces it. Pure pydantic:
importing this module imports neither torch nor any decoder.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

Format = Literal["png", "jpeg", "tiff", "bmp", "dicom", "nifti", "npz"]
ALL_FORMATS: tuple[str, ...] = ("png", "jpeg", "tiff", "bmp", "dicom", "nifti", "npz")
FrameChoice = Union[Literal["refuse", "all", "first", "middle", "last"], int]
SliceChoice = Union[Literal["all", "middle"], int]

# Defaults of the limits: the service settings (MEDGAN_MAX_IMAGE_PIXELS, ...) default to the same.
DEFAULT_MAX_PIXELS = 100_000_000  # one 2-D frame: 100 MP (10000 x 10000)
DEFAULT_MAX_VOXELS = 512 * 1024 * 1024  # a whole file, every frame/slice/item: 2 GiB as float32
DEFAULT_MAX_FILE_BYTES = 2 * 1024 ** 3  # 2 GiB on disk


class ReadPolicy(BaseModel):
    """What the reader accepts and how it turns pixels into floats in [0, 1].

    Every limit is checked from the file's header before any pixel is decoded.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    formats: tuple[Format, ...] = Field(ALL_FORMATS, description="formats accepted, detected by content")
    color: Literal["keep", "gray", "rgb"] = Field(
        "keep", description="keep: as stored; gray: RGB -> ITU-R BT.601 luma; rgb: gray replicated")
    bit_depths: tuple[int, ...] | None = Field(
        None, description="stored bits per sample accepted (e.g. [8, 16]); None: any")
    scaling: Literal["auto", "dtype", "minmax"] = Field(
        "auto", description="auto: integers by the true range the file declares (DICOM modality + VOI "
        "LUT, PNG sBIT, TIFF BitsPerSample/MaxSampleValue; else the container's), floats in [0, 1] as "
        "they are, other floats by the volume's percentiles; dtype: the container's range (/255, "
        "/65535); minmax: each file's min..max")
    percentiles: tuple[float, float] = Field(
        (1.0, 99.0), description="robust range of float volumes (NIfTI, float TIFF/npz) under scaling=auto")
    frames: FrameChoice = Field(
        "refuse", description="multi-frame DICOM, multi-page TIFF, APNG/MPO, 4-D NIfTI time points: "
        "refuse (with the count), all, first, middle, last, or a 0-based index")
    slices: SliceChoice = Field("all", description="slices of a 3-D volume (NIfTI): all, middle, or an index")
    slice_axis: int = Field(2, ge=0, le=2, description="NIfTI axis the slices are taken along")
    drop_empty_slices: bool = Field(
        True, description="skip near-constant volume slices (background); they are counted in the report")
    dicom_window: int | None = Field(
        0, ge=0, description="which VOI window/LUT of a DICOM file to apply; None: ignore them and use "
        "the min..max of the modality values (the default of files without a VOI)")
    non_finite: Literal["refuse", "zero"] = Field(
        "refuse", description="NaN/inf pixels: refuse the file, or set them to the volume's minimum (zero)")
    npz_split: str = Field("train", pattern=r"^[A-Za-z0-9_]{1,32}$", description="npz arrays <split>_images ...")
    on_error: Literal["fail", "skip"] = Field(
        "fail", description="fail: the first unreadable file fails the job, naming it; skip: it is "
        "skipped and counted by reason in the job's summary")
    min_side: int = Field(8, ge=1, le=4096, description="smallest accepted image side in pixels")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="largest accepted 2-D frame (H x W)")
    max_voxels: int = Field(DEFAULT_MAX_VOXELS, ge=1, description="largest accepted file, all frames together")
    max_file_bytes: int = Field(DEFAULT_MAX_FILE_BYTES, ge=1, description="largest accepted file on disk")

    @field_validator("formats")
    @classmethod
    def _some_format(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("formats must name at least one format")
        return tuple(dict.fromkeys(v))

    @field_validator("frames", "slices")
    @classmethod
    def _index(cls, v):  # noqa: ANN001, ANN206 - a str choice or an int
        if isinstance(v, int) and v < 0:
            raise ValueError("a frame/slice index is 0-based and not negative")
        return v

    @field_validator("percentiles")
    @classmethod
    def _pct(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0.0 <= v[0] < v[1] <= 100.0):
            raise ValueError("percentiles must be (low, high) with 0 <= low < high <= 100")
        return v

    def capped(self, *, max_pixels: int | None = None, max_voxels: int | None = None,
               max_file_bytes: int | None = None) -> "ReadPolicy":
        """This policy with its limits lowered to a deployment's ceilings (never raised)."""
        update = {}
        for name, ceiling in (("max_pixels", max_pixels), ("max_voxels", max_voxels),
                              ("max_file_bytes", max_file_bytes)):
            if ceiling is not None and getattr(self, name) > ceiling:
                update[name] = ceiling
        return self.model_copy(update=update) if update else self

    def for_channels(self, channels: int) -> "ReadPolicy":
        """The policy a C-channel consumer reads with (1: gray, 3: RGB)."""
        return self.model_copy(update={"color": "gray" if channels == 1 else "rgb"})
