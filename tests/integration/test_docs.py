"""Every command in README.md and docs/guide.md runs, as written, on the embedded defaults.

The fenced blocks are read at run time, so a command someone adds to either file is covered at once. Each line
that starts with a command is run in document order in one scratch folder (README first, then the guide) with
a `medgan worker` that owns two fake cards; short ids in the text (`3f2a`, `9c41`, …) and the placeholders
(`GENERATE_JOB`, `ID`, …) are bound to the jobs the earlier commands created, and given as their first four
characters, so the id prefixes the guide promises are what is tested. A command must exit 0.

Not run (listed, with the reason, by `test_the_skipped_commands_are_only_docker_and_the_suite`):
- anything in a block that drives Docker (`docker …`, `alias medgan=… docker compose …`, server paths under
  /srv, `git pull`, `cp .env.example .env`): it needs the Docker engine, which this machine lacks;
- `make test`: it is this test suite.

Substitutions (the documented table), so the whole tour takes minutes on a CPU, never hours:
| in the docs | run as | why |
|---|---|---|
| `make demo` | `medgan demo --steps 6 --count 4 --shards 2` | what `make demo` runs after installing |
| `medgan worker --gpus 0,1` | `… --fake-gpus --concurrency 2`, as a daemon | no GPU here: the cards run as CPU processes |
| `medgan scheduler --metrics-port 9108` | a free port, as a daemon | runs until stopped |
| `train --steps N` | `--steps 4` (`long-run`: 40) + a 16 px, 8-channel net on 16 phantom images | CPU minutes, not GPU hours |
| `generate --count N` | `--count 8`, `--class-counts 0=4,1=4`, `--shards` ≤ 2 | same |
| `evaluate --seeds 3` | `--seeds 1 --epochs 1 --steps 4`, tiny judges and small KID subsets | same |
| `pipeline run …` | `--set` tiny steps for its train/generate/evaluate | same |
| `run -- python train.py --steps N` | `--steps 20` (the example script is copied in as train.py) | same |
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MEDGAN, ROOT, free_port, medgan_env, stop_process

pytestmark = pytest.mark.slow
DOCS = [ROOT / "README.md", ROOT / "docs" / "guide.md"]
PROGRAMS = ("medgan", "make", "python", "docker", "cp", "alias", "ssh", "mkdir", "cd", "git", "openssl")
TINY_TRAIN = ["--set", "image_size=16", "--set", "base_channels=8", "--set", "z_dim=16", "--set", "batch_size=8",
              "--set", "checkpoint_every=2", "--set", "sample_every=2", "--set", 'phantom={"count": 16, "size": 16}']
PIPELINE_TINY = ["--set", "train.steps=4", "--set", "train.image_size=16", "--set", "train.base_channels=8",
                 "--set", 'train.phantom={"count": 16, "size": 16}', "--set", "train.checkpoint_every=2",
                 "--set", "generate.count=8", "--set", "evaluate.seeds=1", "--set", "evaluate.epochs=1",
                 "--set", "evaluate.real_per_class=4", "--set", "evaluate.kid_subsets=2",
                 "--set", "evaluate.kid_subset_size=2", "--set", "evaluate.bootstrap=0",
                 "--set", "evaluate.steps=4", "--set", "evaluate.seg_steps=4", "--set", "evaluate.judge_steps=10"]
EVAL_TINY = ["--set", "kid_subsets=2", "--set", "kid_subset_size=2", "--set", "bootstrap=0", "--epochs", "1",
             "--steps", "4", "--set", "seg_steps=4", "--set", "judge_steps=10"]
# short ids in the guide, and the job each stands for (by name, or the newest of a kind)
SHORT_IDS = {"3f2a": ("name", "first-cgan"), "9c41": ("name", "synth-v1"), "51be": ("name", "sr-x4"),
             "7d0e": ("kind", "evaluate"), "GENERATE_JOB": ("kind", "generate"), "EVALUATE_JOB": ("kind", "evaluate"),
             "TRAIN_JOB": ("kind", "train"), "<evaluate job id>": ("kind", "evaluate"), "ID": ("newest", "")}
NEEDS_ENDED = ("generate", "evaluate", "enhance", "report", "download")  # commands that read a finished job


def doc_commands(path: Path) -> list[tuple[int, str, bool]]:
    """(line number, command, in a Docker block) for every command line of every fenced block."""
    out, block, start, fenced = [], [], 0, False
    lines = path.read_text().splitlines()
    for no, line in enumerate(lines, 1):
        if line.strip().startswith("```"):
            if fenced:
                docker = any(re.match(r"\s*(docker|alias medgan=)", l) or "docker compose" in l for _, l in block)
                joined: list[tuple[int, str]] = []
                for n, l in block:
                    if joined and joined[-1][1].endswith("\\"):
                        joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + l.strip())
                    else:
                        joined.append((n, l.strip()))
                for n, l in joined:
                    cmd = re.split(r"\s+#\s", l, maxsplit=1)[0].strip()
                    if cmd and not cmd.startswith("#") and cmd.split()[0] in PROGRAMS:
                        out.append((n, cmd, docker))
                block = []
            fenced, start = not fenced, no
            continue
        if fenced:
            block.append((no, line))
    return out


def classify(cmd: str, docker: bool) -> str | None:
    """Why a command is not run here, or None when it is."""
    if docker and not cmd.startswith("medgan "):
        return "needs Docker"
    if cmd.startswith(("docker", "alias")) or "docker compose" in cmd:
        return "needs Docker"
    if cmd.startswith("make test"):
        return "is the test suite itself"
    return None


def test_the_skipped_commands_are_only_docker_and_the_suite():
    skipped = {}
    for doc in DOCS:
        for no, cmd, docker in doc_commands(doc):
            why = classify(cmd, docker)
            if why:
                skipped[f"{doc.name}:{no}: {cmd}"] = why
    assert set(skipped.values()) <= {"needs Docker", "is the test suite itself"}
    runnable = [c for d in DOCS for _, c, k in doc_commands(d) if not classify(c, k)]
    assert len(runnable) >= 30 and all(c.split()[0] in ("medgan", "make") for c in runnable), runnable
    print("\n".join(f"not run ({why}): {what}" for what, why in skipped.items()))


def _set_steps(args: list[str], steps: str) -> list[str]:
    return [steps if i and args[i - 1] == "--steps" else a for i, a in enumerate(args)]


def substitute(args: list[str]) -> list[str]:
    """The documented substitution table, applied to one medgan command line (after `medgan`)."""
    head = args[0] if args else ""
    if head == "train":
        steps = "40" if "long-run" in args else "4"
        args = [*_set_steps(args, steps), *TINY_TRAIN]
        if "esrgan" in args:  # super-resolution trains on the folder's images, without the phantom
            args = args[:-2]
    elif head == "generate":
        args = ["8" if i and args[i - 1] == "--count" else a for i, a in enumerate(args)]
        args = ["0=4,1=4" if i and args[i - 1] == "--class-counts" else a for i, a in enumerate(args)]
        args = [str(min(2, int(a))) if i and args[i - 1] == "--shards" else a for i, a in enumerate(args)]
    elif head == "evaluate":
        args = [*["1" if i and args[i - 1] == "--seeds" else a for i, a in enumerate(args)], *EVAL_TINY]
    elif head == "pipeline":
        args = [*args, *PIPELINE_TINY]
    elif head == "run":
        cut = args.index("--")
        script = _set_steps(args[cut + 1:], "20")
        args = [*args[:cut + 1], *script, *([] if "--steps" in script else ["--steps", "20"])]
    elif head == "demo":
        args = ["demo", "--steps", "6", "--count", "4", "--shards", "2"]
    return args


def _phantom_folder(root: Path, n: int = 6, size: int = 32, dark: bool = False) -> Path:
    import numpy as np

    from medgan.config import PhantomSpec
    from medgan.enhance.pairs import make_lowlight_pair
    from medgan.pngio import write_png
    from medgan.phantom import make_phantom

    images, _labels, _masks = make_phantom(PhantomSpec(count=n, size=size, seed=3))
    root.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        img = np.asarray(img, dtype=np.float32)
        write_png(root / f"scan-{i:02d}.png", make_lowlight_pair(img)[0] if dark else img)
    return root


class Tour:
    """The scratch folder, the daemons, and the jobs the commands made so far."""

    def __init__(self, cwd: Path, settings):
        from scheduler.client import Client

        self.cwd, self.client, self.daemons = cwd, Client(settings), []
        self.env = medgan_env(MEDGAN_BROKER_POLL_SECONDS="0.1")

    def bind(self, token: str) -> str | None:
        how, what = SHORT_IDS[token]
        if how == "name":
            jobs = self.client.jobs(name=what, limit=1)
        elif how == "kind":
            jobs = self.client.jobs(kind=what, limit=1)
        else:
            jobs = self.client.jobs(limit=1)
        return jobs[0].id if jobs else None

    def resolve(self, args: list[str]) -> tuple[list[str], list[str]]:
        """Short ids and placeholders → 4-character prefixes of the bound jobs; returns (args, their ids)."""
        out, ids = [], []
        for a in args:
            if a in SHORT_IDS:
                job_id = self.bind(a)
                assert job_id, f"no job for {a!r} yet"
                ids.append(job_id)
                a = job_id[:4]
            out.append(a)
        return out, ids

    def daemon(self, args: list[str], log: Path) -> None:
        fh = open(log, "wb")
        proc = subprocess.Popen([*MEDGAN, *args], stdout=fh, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                start_new_session=True)
        self.daemons.append(proc)
        deadline = time.monotonic() + 90
        ready = b" ready." if args[0] == "worker" else b"sweeper running"
        while ready not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)

    def run(self, where: str, cmd: str) -> None:
        argv = shlex.split(cmd)
        if argv[0] == "make":
            assert argv[1:] == ["demo"], cmd
            argv = ["medgan", "demo"]
        args = substitute(argv[1:])
        args = ["<evaluate job id>" if a == "<evaluate" else a for a in args if a not in ("job", "id>")] \
            if "<evaluate" in args else args
        args, ids = self.resolve(args)
        if args[0] == "worker":
            return self.daemon([*args, "--fake-gpus", "--concurrency", "2"], self.cwd / f"worker-{len(self.daemons)}.log")
        if args[0] == "scheduler":
            args = ["9108" if a == "9108" else a for a in args]
            return self.daemon([a if a != "9108" else str(free_port()) for a in args], self.cwd / "sweeper.log")
        if any(a in NEEDS_ENDED for a in args[:2]) or args[:2] == ["jobs", "download"]:
            for job_id in ids:
                self.client.wait(job_id, timeout=600)
        done = subprocess.run([*MEDGAN, *args], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=900)
        logs = "".join((p.read_text()[-2000:] for p in self.cwd.glob("worker-*.log")))
        assert done.returncode == 0, f"{where}: {cmd}\n  ran as: medgan {shlex.join(args)}\n{done.stdout[-2000:]}" \
                                     f"\n{done.stderr[-2000:]}\n--- workers ---\n{logs}"

    def close(self) -> None:
        for proc in reversed(self.daemons):
            stop_process(proc)


@pytest.mark.timeout(2400)  # the whole tour: about 10 min for the README, more for the guide, on 2 busy cores
def test_every_documented_command_runs(embedded, tmp_path):
    cwd = tmp_path / "tour"
    cwd.mkdir()
    shutil.copy(ROOT / "examples" / "user_gan" / "train.py", cwd / "train.py")
    shutil.copytree(ROOT / "examples", cwd / "examples")
    for name in ("scans", "my-images", "normal", "normal-light-scans", "high-res-scans"):
        _phantom_folder(cwd / name)
    for name in ("dark", "low-light-scans"):
        _phantom_folder(cwd / name, dark=True)
    _phantom_folder(cwd / "low-res-scans", size=16)
    tour = Tour(cwd, embedded)
    ran = 0
    try:
        for doc in DOCS:
            for no, cmd, docker in doc_commands(doc):
                if classify(cmd, docker) is None:
                    tour.run(f"{doc.relative_to(ROOT)}:{no}", cmd)
                    ran += 1
    finally:
        tour.close()
    assert ran >= 30
