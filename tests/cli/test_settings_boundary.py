"""Every settings value and config file is validated at the CLI boundary: one line, exit 1, no traceback."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import MEDGAN, medgan_env

BAD_ENV = [
    ("MEDGAN_DATABASE_URL", "notaurl", "MEDGAN_DATABASE_URL is not a database URL"),
    ("MEDGAN_BROKER_URL", "redis", "MEDGAN_BROKER_URL is not a URL"),
    ("MEDGAN_HEARTBEAT_SECONDS", "abc", "MEDGAN_HEARTBEAT_SECONDS"),
    ("MEDGAN_MAX_IMAGE_PIXELS", "-3", "MEDGAN_MAX_IMAGE_PIXELS"),
    ("MEDGAN_S3_SECURE", "maybe", "MEDGAN_S3_SECURE"),
    ("MEDGAN_LOG_LEVEL", "LOUD", "MEDGAN_LOG_LEVEL"),
    ("MEDGAN_MAX_ATTEMPTS", "0", "MEDGAN_MAX_ATTEMPTS"),
]


def _one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    err = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-500:])
    assert len(err) == 1 and "Traceback" not in proc.stderr and needle in err[0], proc.stderr[-500:]


@pytest.mark.parametrize("var, value, needle", BAD_ENV, ids=[b[0] for b in BAD_ENV])
def test_bad_setting_is_one_line_exit_1(tmp_path, var, value, needle):
    proc = subprocess.run([*MEDGAN, "jobs", "ls"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=medgan_env(MEDGAN_HOME=str(tmp_path), **{var: value}))
    _one_line_error(proc, needle)


def test_binary_env_file_and_config_files(tmp_path):
    (tmp_path / ".env").write_bytes(bytes(range(256)))
    proc = subprocess.run([*MEDGAN, "jobs", "ls"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=medgan_env(MEDGAN_HOME=str(tmp_path)))
    _one_line_error(proc, "not UTF-8")
    (tmp_path / ".env").unlink()
    for name, data, needle in (("bin.json", bytes(range(256)) * 4, "not UTF-8"), ("bin.yaml", b"\xff\xfe\x00", "not UTF-8"),
                               ("bad.yaml", b"a: [1", "cannot parse"), ("list.json", b"[1, 2]", "mapping")):
        (tmp_path / name).write_bytes(data)
        proc = subprocess.run([*MEDGAN, "train", "--config", str(tmp_path / name)], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path, env=medgan_env(MEDGAN_HOME=str(tmp_path)))
        _one_line_error(proc, needle)
