"""Dataset uploads are sealed and atomic: nothing outside the folder is read, odd names get safe keys
and come back under their own names, a refused or failed upload leaves nothing, the sweeper removes
what a dead uploader left."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scheduler.datasets import (MANIFEST, download_dataset, key_segment, read_manifest, sweep_uploads,
                                upload_dataset)
from scheduler.errors import MedganUserError, StoreError
from scheduler.store import LocalStore, validate_key

ODD_NAMES = ["-rf.png", "$(touch PWNED).png", "a b  c.png", "ünïcødé-画像.png", "semi;colon&amp.png",
             "quote'\"s.png", "x" * 180 + ".png", "back\\slash.png", "plus+eq=.png", "%41%2F.png"]


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((16, 16)) * 255).astype(np.uint8)).save(path)
    return path


def _objects(store: LocalStore) -> list[str]:
    return sorted(o.key for o in store.list(""))


def test_odd_names_get_safe_keys_and_come_back_under_their_own_names(tmp_path):
    src = tmp_path / "odd"
    for i, name in enumerate(ODD_NAMES):
        _png(src / "cls" / name, i)
    (src / "labels.csv").write_text("file,label\n" + "".join(f"\"cls/{n.replace(chr(34), 2 * chr(34))}\",0\n"
                                                             for n in ODD_NAMES))
    store = LocalStore(tmp_path / "store")
    key = upload_dataset(store, src)
    for obj in _objects(store):
        validate_key(obj)  # every key is safe
    entries = read_manifest(store, key)
    assert sorted(e["path"] for e in entries) == sorted(["labels.csv"] + [f"cls/{n}" for n in ODD_NAMES])
    local = download_dataset(store, key, tmp_path / "cache")
    for name in ODD_NAMES:
        assert (local / "cls" / name).read_bytes() == (src / "cls" / name).read_bytes()
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
    from medgan.data import load_dataset

    assert len(load_dataset(local, 16, 1)) == len(ODD_NAMES)  # labels.csv still matches every file
    assert len({key_segment(n) for n in ODD_NAMES}) == len(ODD_NAMES)


def _shapes(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Folder shapes that must be refused before any byte is written: {what: (folder, words of the error)}."""
    out = {}
    d = tmp / "escaping"
    _png(d / "a.png")
    (tmp / "outside-secret.png").write_bytes(_png(tmp / "x.png").read_bytes())
    os.symlink(tmp / "outside-secret.png", d / "b.png")
    out["symlink escaping the folder"] = (d, "b.png: symlink leaves the dataset folder")
    d = tmp / "dirlink"
    _png(d / "a.png")
    os.symlink(tmp, d / "up")
    out["symlinked folder escaping"] = (d, "up: symlink leaves the dataset folder")
    d = tmp / "dangling"
    _png(d / "a.png")
    os.symlink(d / "gone.png", d / "b.png")
    out["dangling symlink"] = (d, "b.png: symlink points to")
    d = tmp / "looping"
    _png(d / "a.png")
    os.symlink(d / "l2.png", d / "l1.png")
    os.symlink(d / "l1.png", d / "l2.png")
    out["looping symlinks"] = (d, "symlink loops")
    d = tmp / "ancestor"
    _png(d / "c" / "a.png")
    os.symlink(d, d / "c" / "back")
    out["symlink to an ancestor folder"] = (d, "loops back to a folder above it")
    d = tmp / "fifo"
    _png(d / "a.png")
    os.mkfifo(d / "pipe.png")
    out["FIFO named like an image"] = (d, "pipe.png: not a regular file")
    d = tmp / "newline"
    _png(d / "a\nb.png")
    out["control character in a name"] = (d, "control characters")
    d = tmp / "badutf8"
    _png(d / "a.png")
    (d / os.fsdecode(b"\xff\xfe.png")).write_bytes(b"x")
    out["name that is not UTF-8"] = (d, "not valid UTF-8")
    d = tmp / "emptyclass"
    _png(d / "tumor" / "a.png")
    (d / "healthy").mkdir()
    out["empty class folder"] = (d, "folder 'healthy' holds no files")
    d = tmp / "hiddenclass"
    _png(d / "tumor" / "a.png")
    (d / "healthy").mkdir()
    (d / "healthy" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    out["class folder with hidden files only"] = (d, "folder 'healthy' holds no files")
    d = tmp / "hiddenonly"
    _png(d / ".a.png")
    _png(d / ".cache" / "b.png")
    out["hidden files only"] = (d, "holds no files")
    (tmp / "empty").mkdir()
    out["empty folder"] = (tmp / "empty", "holds no files")
    return out


def test_unfit_folders_are_refused_before_a_byte_is_written(tmp_path):
    store = LocalStore(tmp_path / "store")
    shapes = _shapes(tmp_path / "src")
    for what, (folder, words) in shapes.items():
        with pytest.raises(MedganUserError) as err:
            upload_dataset(store, folder)
        msg = str(err.value)
        assert words in msg and "\n" not in msg, (what, msg)
        assert _objects(store) == [], (what, "nothing written")
    assert len(shapes) == 12


def test_symlinks_inside_the_folder_are_followed_once(tmp_path):
    src = tmp_path / "src"
    _png(src / "a" / "x.png")
    os.symlink(src / "a" / "x.png", src / "a" / "y.png")
    store = LocalStore(tmp_path / "store")
    key = upload_dataset(store, src)
    assert sorted(e["path"] for e in read_manifest(store, key)) == ["a/x.png", "a/y.png"]


def test_a_file_over_the_size_limit_is_refused_first(tmp_path):
    src = tmp_path / "src"
    _png(src / "a.png")
    (src / "big.dcm").write_bytes(b"\0" * 5000)
    store = LocalStore(tmp_path / "store")
    with pytest.raises(MedganUserError, match=r"big.dcm is 5,000 bytes, over the limit of 4,096"):
        upload_dataset(store, src, max_file_bytes=4096)
    assert _objects(store) == []


class FlakyStore(LocalStore):
    """Fails the n-th put_file, as an S3 outage mid-upload would."""

    def __init__(self, root: Path, fail_at: int):
        super().__init__(root)
        self.fail_at, self.puts = fail_at, 0

    def put_file(self, key, path):
        self.puts += 1
        if self.puts == self.fail_at:
            raise StoreError(f"upload of {key} failed after 5 attempts")
        return super().put_file(key, path)


def test_a_failed_upload_leaves_nothing_and_a_dead_one_is_swept(tmp_path):
    src = tmp_path / "src"
    for i in range(5):
        _png(src / f"{i}.png", i)
    store = FlakyStore(tmp_path / "store", fail_at=4)
    with pytest.raises(StoreError):
        upload_dataset(store, src)
    assert _objects(store) == [], "the objects written before the failure are deleted"
    # An uploader killed mid-way: objects and its marker stay, with no manifest.
    good = LocalStore(tmp_path / "store")
    key = upload_dataset(good, src)
    name, version = key.split("/")[1:]
    good.delete(f"{key}/{MANIFEST}")
    good.put_bytes(f"datasets/_pending/{name}/{version}.json",
                   json.dumps({"prefix": key, "refreshed": time.time()}).encode())
    assert sweep_uploads(good, stale_seconds=3600) == 0, "a live upload is left alone"
    assert len(_objects(good)) == 6
    assert sweep_uploads(good, stale_seconds=3600, now=time.time() + 7200) == 1
    assert _objects(good) == []
    with pytest.raises(Exception, match="no manifest"):
        download_dataset(good, key, tmp_path / "cache")


def test_manifest_names_cannot_leave_the_cache(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put_bytes("datasets/evil/v1/a.png", b"x")
    for bad in ("../../x.png", "/etc/passwd", "a/../../b", "a\x00b"):
        store.put_bytes("datasets/evil/v1/manifest.jsonl", json.dumps(
            {"path": bad, "key": "a.png", "size": 1, "sha256": "0" * 64}).encode())
        with pytest.raises(MedganUserError, match="invalid file name"):
            download_dataset(store, "datasets/evil/v1", tmp_path / "cache")
