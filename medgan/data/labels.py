"""labels.csv: which image has which label, read strictly (file and line named on every error).

Columns: a file column (`file`, `filename`, `path` or `image`) and a label column (`label`,
`class` or `target`); an optional `class` column beside a numeric `label` names the classes.
UTF-8 only (a BOM is fine): a Windows-1252 file is refused naming its line, never guessed.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from medgan.errors import DataError

FILE_COLUMNS = ("file", "filename", "path", "image")
LABEL_COLUMNS = ("label", "class", "target")


@dataclass
class LabelTable:
    rows: dict[str, tuple[str, int]] = field(default_factory=dict)  # normalised path -> (label, line)
    raw: dict[str, str] = field(default_factory=dict)  # normalised path -> the cell as written (a '\\' may be a name)
    class_names: dict[int, str] = field(default_factory=dict)  # numeric label -> name (optional column)
    duplicates: int = 0  # rows repeating another row exactly


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{name} line {line}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {col}); "
                        "save the file as UTF-8") from None


def normalise(value: str, where: str) -> str:
    """A dataset-relative posix path from a CSV cell; DataError when it leaves the dataset."""
    p = value.strip().replace("\\", "/")
    if not p:
        raise DataError(f"{where}: empty file name")
    if p.startswith("/") or (len(p) > 1 and p[1] == ":"):
        raise DataError(f"{where}: {value.strip()!r} is an absolute path; name files relative to the dataset")
    parts = [s for s in PurePosixPath(p).parts if s != "."]
    if ".." in parts:
        raise DataError(f"{where}: {value.strip()!r} leaves the dataset folder ('..')")
    return "/".join(parts)


def read_labels(path: Path, name: str = "labels.csv") -> LabelTable:
    """Parse a labels.csv; DataError (file and line) for encoding, columns, paths and conflicts."""
    text = _decode(Path(path).read_bytes(), name)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{name} is empty") from None
    except csv.Error as exc:
        raise DataError(f"{name} line 1: {exc}") from None
    fcol = next((header.index(c) for c in FILE_COLUMNS if c in header), None)
    lcol = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
    if fcol is None or lcol is None:
        raise DataError(f"{name} needs a file column ({'/'.join(FILE_COLUMNS)}) and a label column "
                        f"({'/'.join(LABEL_COLUMNS)}); its header is {header}")
    ncol = header.index("class") if "class" in header and header[lcol] != "class" else None
    table = LabelTable()
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(fcol, lcol):
                raise DataError(f"{name} line {line}: {len(row)} columns, the header has {len(header)}")
            where = f"{name} line {line}"
            key = normalise(row[fcol], where)
            label = row[lcol].strip()
            if not label:
                raise DataError(f"{where}: {key} has an empty label")
            if key in table.rows:
                prev, prev_line = table.rows[key]
                if prev != label:
                    raise DataError(f"{name} lines {prev_line} and {line} give {key} two labels ({prev!r}, {label!r})")
                table.duplicates += 1
                continue
            table.rows[key] = (label, line)
            table.raw[key] = row[fcol].strip()
            if ncol is not None and len(row) > ncol and label.lstrip("-").isdigit():
                table.class_names.setdefault(int(label), row[ncol].strip())
    except csv.Error as exc:
        raise DataError(f"{name} line {reader.line_num}: {exc}") from None
    if not table.rows:
        raise DataError(f"{name} has no rows")
    return table
