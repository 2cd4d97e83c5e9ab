"""A sweep through a real worker: its children run, and the parent ends with them (SUCCEEDED when all did,
FAILED naming how many failed otherwise, and `retry` re-runs only those)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import worker_process


def test_sweep_parents_end_with_their_children(embedded, tmp_path: Path) -> None:
    from scheduler.client import Client

    c = Client(embedded)
    good = c.submit("noop", name="good", sweep={"sleep": [0.0, 0.05, 0.1]})
    bad = c.submit("noop", name="bad", sweep={"fail": [None, "on purpose"]})
    assert [j.id for j in c.jobs()] == [bad.id, good.id]  # two rows, not seven
    with worker_process("--gpus", "none", "--concurrency", "2", log=tmp_path / "worker.log"):
        good, bad = c.wait_all([good.id, bad.id], timeout=120, poll=0.2)
        assert good.status == "SUCCEEDED" and good.progress == 1.0
        assert bad.status == "FAILED" and "1 of 2 jobs of the sweep failed" in bad.message
        assert c.job(good.id).children == {"SUCCEEDED": 3}
        before = {k.status: k for k in c.children(bad.id)}
        c.retry(bad.id)  # only the failed child runs again (and fails again, on purpose)
        bad = c.wait(bad.id, timeout=120, poll=0.2)
    assert bad.status == "FAILED" and c.job(bad.id).children == {"FAILED": 1, "SUCCEEDED": 1}
    after = {k.status: k for k in c.children(bad.id)}
    assert after["SUCCEEDED"].finished_at == before["SUCCEEDED"].finished_at  # not run again
    assert after["FAILED"].finished_at > before["FAILED"].finished_at  # run again
