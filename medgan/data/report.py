"""Why a file was not read, and the count of every such reason over a dataset.

A `ReadError` names the file and carries a short reason code; a `ReadReport` counts skipped
files by reason (and notes, e.g. an extension that did not match the content) so that every
job kind can show them in its summary and in `medgan jobs show`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgan.errors import DataError

# reason code -> what it means (the codes are stable: they name metric rows and summary keys)
REASONS: dict[str, str] = {
    "empty": "empty file",
    "too_large": "file larger than max_file_bytes",
    "unknown_format": "content is no image format the reader knows",
    "format_not_allowed": "format not in the policy's formats",
    "too_many_pixels": "declared size over max_pixels / max_voxels",
    "degenerate": "degenerate shape (a side under min_side, or no pixels)",
    "multi_frame": "several frames/pages/time points, and the policy refuses them",
    "bit_depth": "bit depth not in the policy's bit_depths",
    "truncated": "file ends before its pixel data does",
    "corrupt": "undecodable pixel data or header",
    "unsupported": "a variant the installed decoders cannot read (e.g. a compression)",
    "non_finite": "NaN or infinite pixels",
    "no_pixels": "a file of a known format holding no image",
    "unlabelled": "image not named in labels.csv",
    "bad_mask": "mask that cannot be read or does not match its image",
    "empty_slice": "near-constant volume slice (background)",
}


REPORT_ENV = "MEDGAN_READ_REPORT"


class ReadError(DataError):
    """One file could not be read: `file` (relative name), `reason` (a REASONS code), `detail`."""

    def __init__(self, file: str, reason: str, detail: str):
        assert reason in REASONS, reason
        self.file, self.reason, self.detail = file, reason, " ".join(str(detail).split())
        super().__init__(f"{file}: {self.detail}")


@dataclass
class ReadReport:
    """Counts over one dataset read: files read, images produced, files skipped by reason, notes."""

    files_read: int = 0
    images: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first few "file: detail"
    notes: dict[str, int] = field(default_factory=dict)  # e.g. "extension .png but content dicom" -> 3
    formats: dict[str, int] = field(default_factory=dict)

    def skip(self, err: ReadError, keep: int = 5) -> None:
        self.skipped[err.reason] = self.skipped.get(err.reason, 0) + 1
        ex = self.examples.setdefault(err.reason, [])
        if len(ex) < keep:
            ex.append(str(err))

    def note(self, text: str, n: int = 1) -> None:
        self.notes[text] = self.notes.get(text, 0) + n

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def merge(self, other: "ReadReport") -> None:
        self.files_read += other.files_read
        self.images += other.images
        for k, v in other.skipped.items():
            self.skipped[k] = self.skipped.get(k, 0) + v
        for k, v in other.examples.items():
            self.examples.setdefault(k, []).extend(v[: max(0, 5 - len(self.examples.get(k, [])))])
        for k, v in other.notes.items():
            self.note(k, v)
        for k, v in other.formats.items():
            self.formats[k] = self.formats.get(k, 0) + v

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as in a job's summary under "read"."""
        return {"files_read": self.files_read, "images": self.images, "skipped": dict(sorted(self.skipped.items())),
                "skipped_total": self.skipped_total, "examples": self.examples,
                "notes": dict(sorted(self.notes.items())), "formats": dict(sorted(self.formats.items()))}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReadReport":
        return cls(files_read=int(d.get("files_read", 0)), images=int(d.get("images", 0)),
                   skipped=dict(d.get("skipped", {})), examples=dict(d.get("examples", {})),
                   notes=dict(d.get("notes", {})), formats=dict(d.get("formats", {})))

    def publish(self) -> None:
        """Add this report to the file named by MEDGAN_READ_REPORT, if set (the worker sets it for
        every job's science process and records the result in the job). Rank 0 only: every rank of a
        distributed run reads the same files."""
        target = os.environ.get(REPORT_ENV)
        if not target or os.environ.get("RANK", "0") != "0":
            return
        path = Path(target)
        total = ReadReport()
        if path.exists():
            try:
                total = ReadReport.from_dict(json.loads(path.read_text()))
            except ValueError:
                pass
        total.merge(self)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(total.to_dict(), indent=1, sort_keys=True))
        os.replace(tmp, path)

    def line(self) -> str:
        """One line for logs and `jobs show`: 'read 98 files -> 98 images; skipped 2 (truncated 1, ...)'."""
        text = f"read {self.files_read} files -> {self.images} images"
        if self.skipped:
            text += f"; skipped {self.skipped_total} (" + ", ".join(
                f"{k} {v}" for k, v in sorted(self.skipped.items())) + ")"
        return text
