"""`medgan evaluate --synthetic DIR`: any generator's folder judged here, report.html beside metrics.json;
bad input is one line and exit 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

from tests.cli.test_cli import assert_one_line_error
from tests.conftest import write_masks_beside

FAST = ["--set", "steps=10", "--set", "seg_steps=10", "--set", "eval_every=5", "--set", "judge_steps=20",
        "--set", "bootstrap=50", "--set", "kid_subsets=5", "--set", "kid_subset_size=10", "--set", "epochs=1",
        "--seeds", "1"]


def _medgan(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDGAN_HOME": str(tmp / "home"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300, env=env)


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs).get("src", ""))


def test_a_folder_of_class_subfolders_with_masks_is_judged_with_a_report(tmp_path):
    write_masks_beside(tmp_path / "gen", 60, seed=33)
    out = tmp_path / "out"
    proc = _medgan("evaluate", "--synthetic", str(tmp_path / "gen"), "--out", str(out), "--phantom-count", "160",
                   "--set", "image_size=32", *FAST, "--json", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["status"] == "completed" and info["verdicts"]
    assert all(" vs real-only (" in v or " vs real+aug (" in v for v in info["verdicts"])
    assert any(v.startswith("real+aug+synthetic vs real+aug (") for v in info["verdicts"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["synthetic"]["class_names"] == ["healthy", "lesion"]
    assert "segmentation" in metrics["utility"]  # the masks beside the images came through
    doc = Path(info["report"]).read_text()
    p = _Imgs()
    p.feed(doc)
    assert len(p.srcs) >= 3
    for src in p.srcs:  # every image the report references exists (embedded or on disk)
        assert src.startswith("data:image/png;base64,") or (Path(info["report"]).parent / src).is_file()


def test_bad_input_is_one_line(tmp_path):
    assert_one_line_error(_medgan("evaluate", "--synthetic", str(tmp_path / "nope"), tmp=tmp_path), "not a folder")
    assert_one_line_error(_medgan("evaluate", tmp=tmp_path), "--synthetic")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(_medgan("evaluate", "--synthetic", str(tmp_path / "empty"), "--out", str(tmp_path / "o"),
                                  tmp=tmp_path), "no image files")
    assert_one_line_error(_medgan("evaluate", "--synthetic", str(tmp_path / "empty"), "--set", "arms=[\"magic\"]",
                                  tmp=tmp_path), "arm")


def test_the_utility_pipelines_are_valid_job_specs():
    import yaml

    from cli.pipeline import STEP_FIELDS, plan
    from scheduler.specs import parse_spec

    root = Path(__file__).resolve().parents[2] / "examples" / "pipelines"
    files = sorted(root.glob("phantom-utility*.yaml"))
    assert len(files) >= 2
    for f in files:
        steps = plan(yaml.safe_load(f.read_text()))
        for st in steps:
            fields = {k: v for k, v in st.items() if k not in STEP_FIELDS}
            spec = parse_spec({"kind": st["kind"], "config": st.get("config") or {}, **fields,
                               **({"source_job": "0123456789ab"} if st.get("from") else {})})
            if st["kind"] == "evaluate":
                assert spec.config.steps >= 600 and spec.config.gates in ("flag", "refuse"), f.name
    regimes = [s for s in plan(yaml.safe_load((root / "phantom-utility-regimes.yaml").read_text()))
               if s["kind"] == "train"]
    assert [s["config"]["phantom"]["count"] // 2 for s in regimes] == [10, 25, 50, 100]
