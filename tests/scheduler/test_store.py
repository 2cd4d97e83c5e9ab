"""The artifact store: both backends behave alike; keys cannot escape; sizes and sha256 are true."""

from __future__ import annotations

import hashlib
import urllib.request
from datetime import timedelta

import pytest

from scheduler.datasets import download_dataset, read_manifest, upload_dataset
from scheduler.errors import InvalidKey, NotFound
from scheduler.store import validate_key, LocalStore, S3Store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    s3 = request.getfixturevalue("s3_server")
    return S3Store(s3["endpoint"], s3["access_key"], s3["secret_key"], s3["bucket"])


def test_put_get_list_and_checksums(store, tmp_path):
    src = tmp_path / "blob.bin"
    data = bytes(range(256)) * 4096  # 1 MiB
    src.write_bytes(data)
    info = store.put_file("jobs/abc/checkpoints/step-000010/model.safetensors", src)
    assert info.size == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()
    store.put_bytes("jobs/abc/stats.jsonl", b'{"step": 1}\n')
    keys = [o.key for o in store.list("jobs/abc/")]
    assert keys == ["jobs/abc/checkpoints/step-000010/model.safetensors", "jobs/abc/stats.jsonl"]
    out = store.get_file("jobs/abc/checkpoints/step-000010/model.safetensors", tmp_path / "back.bin")
    assert out.read_bytes() == data
    assert store.get_bytes("jobs/abc/stats.jsonl") == b'{"step": 1}\n'
    assert store.exists("jobs/abc/stats.jsonl") and not store.exists("jobs/abc/none")
    with pytest.raises(NotFound):
        store.get_bytes("jobs/abc/none")


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/key", "jobs/../../x", "jobs//x", "jobs/a\\b", "jobs/ x", ""])
def test_keys_cannot_escape(store, key, tmp_path):
    with pytest.raises(InvalidKey):
        store.put_bytes(key, b"x")


def test_presigned_url_expires_and_downloads(s3_server, tmp_path):
    store = S3Store(s3_server["endpoint"], s3_server["access_key"], s3_server["secret_key"], s3_server["bucket"])
    store.put_bytes("jobs/j/report.html", b"<html>ok</html>")
    url = store.url("jobs/j/report.html", timedelta(minutes=5))
    assert "X-Amz-Expires=300" in url and "X-Amz-Signature" in url
    with urllib.request.urlopen(url) as resp:  # noqa: S310 - loopback test server
        assert resp.read() == b"<html>ok</html>"


def test_dataset_upload_is_content_addressed_and_verified(store, tmp_path):
    src = tmp_path / "My Scans"
    (src / "sub").mkdir(parents=True)
    (src / "a.png").write_bytes(b"A" * 100)
    (src / "sub" / "b c.png").write_bytes(b"B" * 50)
    (src / ".hidden").write_bytes(b"skip me")
    key = upload_dataset(store, src)
    assert key.startswith("datasets/My-Scans/")
    assert upload_dataset(store, src) == key  # same content, same version, stored once
    # files keep their own names (labels.csv refers to them); object keys are made safe
    assert sorted(e["path"] for e in read_manifest(store, key)) == ["a.png", "sub/b c.png"]
    assert all(validate_key(e["key"]) for e in read_manifest(store, key))
    local = download_dataset(store, key, tmp_path / "cache")
    assert (local / "sub" / "b c.png").read_bytes() == b"B" * 50
    (src / "a.png").write_bytes(b"changed")
    assert upload_dataset(store, src) != key  # new content, new version


def test_promote_moves_a_staged_object_over_its_key(store):
    """Fenced uploads stage first (jobs/<id>/_attempts/<token>/…) and promote: the key gets the staged bytes,
    replacing what it held, and the staged object is gone; a missing source is NotFound, nothing changes."""
    store.put_bytes("jobs/abc/config.json", b"old")
    store.put_bytes("jobs/abc/_attempts/000002/00000001", b"new")
    assert store.promote("jobs/abc/_attempts/000002/00000001", "jobs/abc/config.json") is True
    assert store.get_bytes("jobs/abc/config.json") == b"new"
    assert [o.key for o in store.list("jobs/abc/")] == ["jobs/abc/config.json"]
    with pytest.raises(NotFound):
        store.promote("jobs/abc/_attempts/000002/00000009", "jobs/abc/config.json")
    assert store.get_bytes("jobs/abc/config.json") == b"new"
    with pytest.raises(InvalidKey):
        store.promote("jobs/abc/config.json", "../escape")


def test_s3_promote_is_done_once_copied_even_if_the_staged_delete_fails(s3_server, monkeypatch):
    """The server goes away between the copy and the delete of the staged copy: the object *is* promoted
    (the caller records its row), promote says a staged leftover remains (False), and raises nothing."""
    from scheduler.errors import StoreError

    store = S3Store(s3_server["endpoint"], s3_server["access_key"], s3_server["secret_key"], s3_server["bucket"])
    store.put_bytes("jobs/p/_attempts/000001/00000001", b"bytes")
    assert store.promote("jobs/p/_attempts/000001/00000001", "jobs/p/a.bin") is True
    store.put_bytes("jobs/p/_attempts/000001/00000002", b"more")

    def gone(key):
        raise StoreError(f"delete of {key} failed after 5 attempts: connection refused")

    monkeypatch.setattr(store, "delete", gone)
    assert store.promote("jobs/p/_attempts/000001/00000002", "jobs/p/b.bin") is False
    monkeypatch.undo()
    assert store.get_bytes("jobs/p/b.bin") == b"more"
    assert "jobs/p/_attempts/000001/00000002" in [o.key for o in store.list("jobs/p/")]  # the leftover
