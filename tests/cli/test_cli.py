"""The CLI boundary: bad input is one clear line and exit code 1, with nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import func, select

from scheduler.db import Job, session_scope

MEDGAN = [sys.executable, "-m", "cli"]


def run(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([*MEDGAN, *args], capture_output=True, text=True, timeout=60, env=env)


def job_count(settings) -> int:
    with session_scope(settings.db_url) as s:
        return s.execute(select(func.count()).select_from(Job)).scalar_one()


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_help_is_fast_and_does_not_import_torch():
    code = "import sys, time; t=time.time(); import cli; print(time.time()-t, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False"
    proc = run("--help")
    assert proc.returncode == 0 and "train" in proc.stdout and "jobs" in proc.stdout


@pytest.mark.parametrize(
    "args, needles",
    [
        (["train", "--image-size", "33"], ["image_size", "power of two"]),
        (["train", "--steps", "-5"], ["steps"]),
        (["train", "--model", "stylegan9"], ["model"]),
        (["train", "--data", "/no/such/folder"], ["does not exist", "/no/such/folder"]),
        (["enhance", "--input", "/no/such/images"], ["does not exist"]),
        (["enhance", "--input", ".", "--gamma", "-1"], ["gamma"]),
        (["enhance", "--input", ".", "--strength", "2"], ["strength"]),
        (["generate", "--from", "not-a-job"], ["no job 'not-a-job'"]),
        (["generate", "--from", "0123456789ab"], ["no job '0123456789ab'"]),
        (["generate", "--from", "dc3"], ["at least 4 characters"]),
        (["jobs", "ls", "--status", "BOGUS"], ["unknown status 'BOGUS'", "QUEUED"]),
        (["jobs", "ls", "--kind", "dream"], ["unknown kind 'dream'", "script"]),
        (["jobs", "ls", "--since", "yesterday-ish"], ["not a time"]),
        (["jobs", "cancel"], ["at least one filter"]),
        (["jobs", "acct", "--by", "colour"], ["--by takes"]),
        (["jobs", "url", "jobs/0123456789ab/nothing.txt"], ["no object"]),
        (["enhance", "--input", ".", "--method", "esrgan", "--model", "0123456789ab"], ["no job '0123456789ab'"]),
        (["enhance", "--input", ".", "--method", "esrgan", "--scale", "2"], ["shipped esrgan model upsamples x4",
                                                                            "--model"]),
        (["jobs", "show", "ffffffffffff"], ["no job"]),
        (["train", "--set", "nonsense"], ["key=value"]),
    ],
)
def test_bad_input_is_one_line_exit_1_nothing_written(embedded, args, needles):
    before = job_count(embedded)
    store = embedded.local_store
    objects_before = sorted(p for p in store.rglob("*")) if store.exists() else []
    assert_one_line_error(run(*args), *needles)
    assert job_count(embedded) == before
    assert (sorted(p for p in store.rglob("*")) if store.exists() else []) == objects_before


@pytest.mark.parametrize("which", ["newest", "step-x", "step--2", ""])
def test_generate_checkpoint_choice_is_validated_at_submit(embedded, which):
    source = run("train", "--steps", "1")
    assert source.returncode == 0, source.stderr
    before = job_count(embedded)
    assert_one_line_error(run("generate", "--from", source.stdout.strip(), "--checkpoint", which),
                          "checkpoint", "best, last or step-N")
    assert job_count(embedded) == before


def test_unknown_kind_in_a_spec_file(embedded, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"kind": "dream", "config": {}}))
    assert_one_line_error(run("submit", str(spec)), "unknown job kind 'dream'")
    assert job_count(embedded) == 0


def test_unknown_command_is_exit_1():
    proc = run("frobnicate")
    assert proc.returncode == 1 and "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_unreachable_database(env_home, monkeypatch):
    import os

    env = dict(os.environ, MEDGAN_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert_one_line_error(run("train", "--steps", "5", env=env), "cannot reach the database")
    assert_one_line_error(run("jobs", "ls", env=env), "cannot reach the database")
    assert not (env_home / "store").exists()


def test_database_not_migrated(env_home):
    assert_one_line_error(run("jobs", "ls"), "medgan db upgrade")


def test_submit_ls_json_and_idempotency(embedded):
    a = run("train", "--steps", "3", "--idempotency-key", "same", "--json")
    b = run("train", "--steps", "3", "--idempotency-key", "same", "--json")
    assert a.returncode == 0 and b.returncode == 0, a.stderr
    assert json.loads(a.stdout)["id"] == json.loads(b.stdout)["id"]
    rows = json.loads(run("jobs", "ls", "--json").stdout)
    assert isinstance(rows, list) and len(rows) == 1
    assert {"id", "kind", "status"} <= set(rows[0]) and rows[0]["kind"] == "train" and rows[0]["status"] == "QUEUED"
    shown = json.loads(run("jobs", "show", rows[0]["id"][:6], "--json").stdout)
    assert shown["queue_position"] == 1 and shown["events"][0]["to"] == "QUEUED"
    cancelled = json.loads(run("jobs", "cancel", rows[0]["id"], "--json").stdout)
    assert cancelled["status"] == "CANCELLED"
    retried = json.loads(run("jobs", "retry", rows[0]["id"], "--json").stdout)
    assert retried["status"] == "QUEUED"


def test_local_dataset_is_uploaded_once(embedded, tmp_path):
    data = tmp_path / "imgs"
    data.mkdir()
    from PIL import Image

    Image.new("L", (16, 16), 90).save(data / "a.png")  # a fake PNG is refused at submission now
    first = json.loads(run("enhance", "--input", str(data), "--json").stdout)
    second = json.loads(run("enhance", "--input", str(data), "--json").stdout)
    key = first["spec"]["dataset"]
    assert key.startswith("datasets/imgs/") and second["spec"]["dataset"] == key
    manifest = (embedded.local_store / key / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 1 and json.loads(manifest[0])["path"] == "a.png"
