"""The habits of Slurm and ClearML users: ids by prefix or name everywhere, validated filters, bulk cancel,
accounting, pipeline overrides and cascades, one validation path for the client and the CLI, typed results.

In-process (typer's CliRunner) where possible: a CLI subprocess costs a second each on this machine.
"""

from __future__ import annotations

import json
from datetime import timedelta

import click
import pytest
from typer.testing import CliRunner

from cli import app
from scheduler import states
from scheduler.client import ArtifactInfo, Client, Job
from scheduler.db import Job as JobRow
from scheduler.db import JobEvent, Status, session_scope, utcnow
from scheduler.errors import MedganUserError, NotFound, SpecError

runner = CliRunner()


def cli(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, list(args))
    return res.exit_code, res.stdout, res.stderr


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 1, err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for n in needles:
        assert n in lines[0], lines[0]


def _finish(settings, job_id: str) -> None:
    with session_scope(settings.db_url) as s:
        states.transition(s, job_id, Status.RUNNING, expect=[Status.QUEUED], actor="test")
        states.transition(s, job_id, Status.SUCCEEDED, expect=[Status.RUNNING], actor="test")


# --- ids: full, unique prefix (>= 4), name; everywhere an id is taken --------------------------------------------


def test_prefixes_and_names_resolve_everywhere(embedded):
    c = Client(embedded)
    train = c.submit("train", config={"steps": 3}, name="first-cgan")
    _finish(embedded, train.id)
    for ref in (train.id, train.id[:4], train.id[:7], "first-cgan"):
        assert c.job(ref).id == train.id
        gen = c.submit("generate", source_job=ref, config={"count": 4})  # the client resolves it
        assert gen.spec["source_job"] == train.id  # stored as the full id
        after = c.submit("noop", depends_on=[ref])
        assert after.depends_on == [train.id]
    code, out, err = cli("generate", "--from", train.id[:4], "--count", "4", "--json")
    assert code == 0, err
    assert json.loads(out)["spec"]["source_job"] == train.id
    code, out, err = cli("jobs", "show", "first-cgan", "--json")
    assert code == 0 and json.loads(out)["id"] == train.id
    # a name shared by two jobs, and a prefix shared by two ids, are refused with the candidates named
    c.submit("noop", name="twice")
    c.submit("noop", name="twice")
    with pytest.raises(MedganUserError, match="2 jobs are named 'twice'"):
        c.job("twice")
    with pytest.raises(NotFound, match="at least 4"):
        c.job(train.id[:3])


def test_ambiguous_prefix_names_the_candidates(embedded):
    c = Client(embedded)
    ids = ["abcd00000001", "abcd00000002"]
    with session_scope(embedded.db_url) as s:
        for i in ids:
            s.add(JobRow(id=i, kind="noop", status="QUEUED", spec={"kind": "noop"}, queue="q", owner="x",
                         depends_on=[]))
    with pytest.raises(MedganUserError, match="ambiguous.*abcd00000001"):
        c.job("abcd")
    assert c.job("abcd00000002").id == ids[1]
    code, _out, err = cli("jobs", "cancel", "abcd")
    one_line_error(code, err, "ambiguous")


# --- one validation path ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, needle", [
    ({"kind": "generate"}, "needs source_job"),
    ({"kind": "generate", "source_job": ""}, "needs source_job"),
    ({"kind": "enhance", "dataset": "datasets/x/1", "source_job": "ffff", "config": {"method": "zerodce"}},
     "no job 'ffff'"),
    ({"kind": "evaluate", "source_job": "ffff"}, "no job 'ffff'"),
    ({"kind": "noop", "depends_on": ["zzzz-nothing"]}, "no job 'zzzz-nothing'"),
    ({"kind": "script", "code": "not-a-key", "command": ["python", "x.py"]}, "code snapshot key"),
    ({"kind": "script", "code": "code/x/1", "command": []}, "command"),
])
def test_client_and_cli_refuse_the_same_specs(embedded, tmp_path, fields, needle):
    """Client.submit and `medgan submit` share one validation path: the same line, nothing written."""
    c = Client(embedded)
    data = dict(fields)
    kind = data.pop("kind")
    with pytest.raises(MedganUserError) as client_err:
        c.submit(kind, **data)
    assert needle in str(client_err.value)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(fields))
    code, _out, err = cli("submit", str(spec))
    one_line_error(code, err, needle)
    assert str(client_err.value) in err.replace("\n", " ") or needle in err
    assert c.jobs(limit=5) == []


def test_source_kind_is_checked(embedded):
    c = Client(embedded)
    noop = c.submit("noop")
    _finish(embedded, noop.id)
    with pytest.raises(SpecError, match="noop job; it must be the train job"):
        c.submit("generate", source_job=noop.id)
    sr = c.submit("train", config={"model": "esrgan", "steps": 2})
    _finish(embedded, sr.id)
    with pytest.raises(SpecError, match="esrgan model; generate samples"):
        c.submit("generate", source_job=sr.id)
    with pytest.raises(SpecError, match="trained a esrgan model, not the zerodce"):
        c.submit("enhance", dataset="datasets/x/1", source_job=sr.id, config={"method": "zerodce"})
    assert c.validate("enhance", dataset="datasets/x/1", source_job=sr.id[:5],
                      config={"method": "esrgan"})["source_job"] == sr.id


# --- jobs ls: validated filters, owner/time columns -------------------------------------------------------------


def test_ls_filters(embedded):
    c = Client(embedded)
    a = c.submit("noop", owner="alice", name="sweep-1")
    b = c.submit("noop", owner="bob", name="sweep-2")
    t = c.submit("train", owner="alice", name="big", config={"steps": 2})
    _finish(embedded, b.id)
    ids = lambda **kw: {j.id for j in c.jobs(**kw)}  # noqa: E731
    assert ids(owner="alice") == {a.id, t.id}
    assert ids(status="queued") == {a.id, t.id} and ids(status="SUCCEEDED,QUEUED") == {a.id, b.id, t.id}
    assert ids(kind="train") == {t.id} and ids(kind=["train", "noop"]) == {a.id, b.id, t.id}
    assert ids(name="sweep-*") == {a.id, b.id} and ids(name="big") == {t.id} and ids(name="sweep") == set()
    assert ids(since="1h") == {a.id, b.id, t.id} and ids(until="1h") == set()
    future = (utcnow() + timedelta(hours=1)).isoformat()
    assert ids(since=future) == set() and ids(until=future + "Z") == {a.id, b.id, t.id}
    with pytest.raises(MedganUserError, match="unknown status 'BOGUS'"):
        c.jobs(status="BOGUS")
    code, out, err = cli("jobs", "ls", "--owner", "alice", "--status", "QUEUED")
    assert code == 0, err
    assert "owner" in out and "submitted" in out and "alice" in out and "ago" in out and "bob" not in out
    code, out, _ = cli("jobs", "ls", "--name", "sweep-*", "--json")
    assert {j["id"] for j in json.loads(out)} == {a.id, b.id}


# --- cancel: bulk by filter, cascades as CANCELLED; retry brings dependants back ----------------------------------


def test_bulk_cancel_by_filter(embedded):
    c = Client(embedded)
    mine = [c.submit("noop", owner="alice", name=f"s{i}") for i in range(3)]
    other = c.submit("noop", owner="bob")
    done = c.submit("noop", owner="alice")
    _finish(embedded, done.id)
    code, out, err = cli("jobs", "cancel", "--owner", "alice", "--json")
    assert code == 0, err
    assert {j["id"] for j in json.loads(out)} == {j.id for j in mine}  # the finished one is left alone
    assert all(c.job(j.id).status == "CANCELLED" for j in mine)
    assert c.job(other.id).status == "QUEUED" and c.job(done.id).status == "SUCCEEDED"
    code, _o, err = cli("jobs", "cancel", other.id, "--owner", "bob")
    one_line_error(code, err, "not both")


def test_cancel_cascades_as_cancelled_and_retry_requeues_dependants(embedded):
    c = Client(embedded)
    a = c.submit("noop", name="a")
    b = c.submit("noop", depends_on=[a.id])
    d = c.submit("noop", depends_on=[b.id])
    free = c.submit("noop")
    a.cancel()
    for j in (b, d):
        got = c.job(j.id)
        assert got.status == "CANCELLED" and got.message.startswith("dependency "), got
    assert c.job(free.id).status == "QUEUED"
    a.retry()
    assert [c.job(j.id).status for j in (a, b, d)] == ["QUEUED"] * 3
    assert "waiting for job" in (c.job(b.id).message or "")
    # a failed dependency fails (not cancels) what waits for it; retry brings it back too
    with session_scope(embedded.db_url) as s:
        states.transition(s, a.id, Status.FAILED, expect=[Status.QUEUED], actor="test", reason="boom")
    from scheduler.jobs import dispatch_ready

    dispatch_ready(embedded)
    assert [c.job(j.id).status for j in (b, d)] == ["FAILED", "FAILED"]
    c.retry("a")
    assert [c.job(j.id).status for j in (a, b, d)] == ["QUEUED"] * 3
    assert c.job(free.id).status == "QUEUED"  # untouched throughout


def test_pipeline_set_overrides_and_refuses_unknown_steps(embedded, tmp_path):
    from cli.pipeline import apply_sets

    doc = {"steps": [{"id": "train", "kind": "train", "config": {"steps": 400}},
                     {"id": "gen", "kind": "generate", "from": "train", "shards": 2}]}
    out = apply_sets(doc, ["train.steps=5", "train.phantom.count=64", "gen.shards=3", "gen.count=8",
                           "train.model=dcgan"])
    assert out["steps"][0]["config"] == {"steps": 5, "phantom": {"count": 64}, "model": "dcgan"}
    assert out["steps"][1]["shards"] == 3 and out["steps"][1]["config"] == {"count": 8}
    assert doc["steps"][0]["config"] == {"steps": 400}  # the file's document is not changed
    for bad, needle in (("nope.steps=1", "no step 'nope'"), ("steps=1", "STEP.key=value"), ("train.=1", "STEP.key")):
        with pytest.raises(MedganUserError, match=needle):
            apply_sets(doc, [bad])
    f = tmp_path / "p.yaml"
    f.write_text(json.dumps(doc))
    code, out, err = cli("pipeline", "run", str(f), "--set", "train.steps=7", "--set", "gen.count=6", "--json")
    assert code == 0, err
    jobs = json.loads(out)
    assert jobs[0]["spec"]["config"]["steps"] == 7 and jobs[1]["spec"]["config"]["count"] == 6
    code, _o, err = cli("pipeline", "run", str(f), "--set", "train.steps=-1")
    one_line_error(code, err, "steps")
    assert len(Client(embedded).jobs()) == 2  # the bad override wrote nothing


# --- accounting --------------------------------------------------------------------------------------------------


def _job_with_runs(settings, job_id: str, owner: str, kind: str, gpus: int, runs: list[tuple[float, float]],
                   end: str = "SUCCEEDED") -> None:
    """A job row with events: RUNNING from start to stop hours ago for each run (requeued in between)."""
    now = utcnow()
    with session_scope(settings.db_url) as s:
        s.add(JobRow(id=job_id, kind=kind, status=end, spec={"kind": kind}, queue="q", owner=owner, gpus=gpus,
                     depends_on=[], finished_at=now - timedelta(hours=runs[-1][1])))
        s.flush()
        s.add(JobEvent(job_id=job_id, from_status=None, to_status="QUEUED", at=now - timedelta(hours=runs[0][0] + 1)))
        for i, (start, stop) in enumerate(runs):
            s.add(JobEvent(job_id=job_id, from_status="QUEUED", to_status="RUNNING", at=now - timedelta(hours=start)))
            to = end if i == len(runs) - 1 else "QUEUED"
            s.add(JobEvent(job_id=job_id, from_status="RUNNING", to_status=to, at=now - timedelta(hours=stop)))


def test_accounting_counts_every_run_times_cards_within_the_window(embedded):
    c = Client(embedded)
    _job_with_runs(embedded, "a" * 12, "alice", "train", 2, [(10, 8), (7, 6)])  # 3 h × 2 cards
    _job_with_runs(embedded, "b" * 12, "alice", "generate", 1, [(5, 4)], end="FAILED")  # 1 h × 1
    _job_with_runs(embedded, "c" * 12, "bob", "train", 4, [(30, 29)])  # outside a 24 h window
    _job_with_runs(embedded, "d" * 12, "bob", "script", 1, [(25, 23)])  # half inside a 24 h window
    rows = {(r["owner"], r["kind"]): r for r in c.accounting(since="24h")}
    assert rows[("alice", "train")]["gpu_hours"] == pytest.approx(6.0, abs=1e-3)
    assert rows[("alice", "train")]["job_hours"] == pytest.approx(3.0, abs=1e-3)
    assert rows[("alice", "train")]["runs"] == 2 and rows[("alice", "train")]["succeeded"] == 1
    assert rows[("alice", "generate")]["gpu_hours"] == pytest.approx(1.0, abs=1e-3)
    assert rows[("alice", "generate")]["failed"] == 1
    assert rows[("bob", "script")]["gpu_hours"] == pytest.approx(1.0, abs=1e-3)  # clipped to the window
    assert ("bob", "train") not in rows  # ran before the window: counts nothing
    by_owner = {r["owner"]: r["gpu_hours"] for r in c.accounting(since="2d", by="owner")}
    assert by_owner == pytest.approx({"alice": 7.0, "bob": 6.0}, abs=1e-3)
    code, out, err = cli("jobs", "acct", "--since", "24h", "--by", "owner")
    assert code == 0 and "GPU-hours" in out and "7.00" in out, (out, err)


# --- typed results, the url check, --version, examples in every --help --------------------------------------------


def test_typed_results(embedded, tmp_path):
    c = Client(embedded)
    job = c.submit("noop", name="typed")
    assert isinstance(job, Job) and job.status == "QUEUED" and job["id"] == job.id and not job.done
    with session_scope(embedded.db_url) as s:
        states.transition(s, job.id, Status.RUNNING, expect=[Status.QUEUED], actor="t")
        states.transition(s, job.id, Status.SUCCEEDED, expect=[Status.RUNNING], actor="t")
    (tmp_path / "f.txt").write_text("hello")
    info = c.store.put_file(f"jobs/{job.id}/out/f.txt", tmp_path / "f.txt")
    from scheduler.db import Artifact

    with session_scope(embedded.db_url) as s:
        s.add(Artifact(job_id=job.id, key=info.key, size=info.size, sha256=info.sha256, kind="output"))
    done = job.wait(timeout=5)
    assert done.succeeded and done.events[-1]["to"] == "SUCCEEDED"
    arts = done.artifacts()
    assert arts == [ArtifactInfo(key=info.key, size=5, sha256=info.sha256, kind="output")]
    assert [p.read_text() for p in done.download(tmp_path / "dl")] == ["hello"]
    assert json.loads(done.model_dump_json())["id"] == job.id
    assert c.url(f"{job.id[:5]}/out/f.txt").startswith("file://")
    with pytest.raises(NotFound, match="no object"):
        c.url(f"jobs/{job.id}/out/missing.txt")


def test_version_and_completion():
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("medgan ")
    code, out, _ = cli("--help")
    assert "--install-completion" in out and "--show-completion" in out


def _commands(group: click.Command, path: tuple[str, ...] = ()):
    if isinstance(group, click.Group):
        for name, sub in group.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, group


def test_every_command_has_an_example_in_its_help():
    import typer.main

    root = typer.main.get_command(app)
    missing = [" ".join(p) for p, cmd in _commands(root) if "Example:  medgan " not in (cmd.epilog or "")]
    assert not missing, missing
    code, out, _ = cli("jobs", "ls", "--help")
    assert code == 0 and "Example:" in out and "medgan jobs ls" in out
