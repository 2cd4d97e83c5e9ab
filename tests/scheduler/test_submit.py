"""Submission: one job or thousands (submit_many), sweeps, idempotency keys, messages after commit.

Runs on both databases: the embedded SQLite (with kombu's SQLAlchemy broker) and PostgreSQL with a private
Redis, where the messages in the broker are counted.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from scheduler import jobs as J
from scheduler.db import Job, JobEvent, session_scope
from scheduler.errors import SpecError


@pytest.fixture
def settings(db_settings):
    return db_settings


def _count(settings, *where) -> int:
    with session_scope(settings.db_url) as s:
        return s.execute(select(func.count()).select_from(Job).where(*where)).scalar_one()


def _messages(settings) -> list[str] | None:
    """Job ids of the messages waiting in the Redis broker (None for the embedded broker)."""
    if not settings.broker.startswith("redis"):
        return None
    import json

    import redis

    r = redis.Redis.from_url(settings.broker)
    out = []
    for key in r.keys("medgan.*"):
        for raw in r.lrange(key, 0, -1):
            out.append(json.loads(raw)["headers"]["argsrepr"].strip("[]'"))
    return out


def test_submit_many_writes_every_job_and_sends_each_once(settings):
    made = J.submit_many(settings, [{"kind": "noop", "name": f"n{i}", "priority": i % 10} for i in range(250)])
    assert [j["name"] for j in made] == [f"n{i}" for i in range(250)]
    assert [j["priority"] for j in made] == [i % 10 for i in range(250)]
    assert all(j["status"] == "QUEUED" and j["attempt"] == 0 and j["progress"] == 0 for j in made)
    assert _count(settings) == 250 and _count(settings, Job.enqueued_at.is_not(None)) == 250
    with session_scope(settings.db_url) as s:
        events = s.execute(select(JobEvent.job_id, JobEvent.to_status, JobEvent.reason)).all()
        row = s.get(Job, made[7]["id"])
        assert J.job_dict(row) == made[7]  # what submit_many returns is what the row holds
    assert sorted(e[0] for e in events) == sorted(j["id"] for j in made)
    assert {(e[1], e[2]) for e in events} == {("QUEUED", "submitted")}
    sent = _messages(settings)
    if sent is not None:
        assert sorted(sent) == sorted(j["id"] for j in made)  # one message per job, no more


BAD = [
    ({"kind": "nope"}, "unknown job kind"),
    ({}, "unknown job kind"),
    ({"kind": "noop", "sleep": -1}, "sleep"),
    ({"kind": "noop", "sleep": "soon"}, "sleep"),
    ({"kind": "noop", "extra": 1}, "extra"),
    ({"kind": "noop", "priority": 99}, "priority"),
    ({"kind": "noop", "depends_on": ["not-an-id"]}, "unknown job: no job 'not-an-id'"),
    ({"kind": "noop", "depends_on": ["0123456789ab"]}, "unknown job: no job '0123456789ab'"),
    ({"kind": "noop", "depends_on": [7]}, "depends_on"),
    ({"kind": "generate", "source_job": "0123456789ab"}, "source_job names an unknown job"),
    ({"kind": "generate"}, "source_job"),
    ({"kind": "train", "config": {"image_size": 33}}, "image_size"),
    ({"kind": "train", "sweep": {"lr": [1e-4, 5.0]}}, "sweep point lr=5.0"),
    ({"kind": "train", "sweep": {"no_such_field": [1]}}, "no such spec or config field"),
    ({"kind": "train", "sweep": {"seed": []}}, "seed has no values"),
    ({"kind": "generate", "source_job": "TRAIN", "depends_on": ["TRAIN"], "shards": 2,
      "sweep": {"config.seed": [1, 2]}}, "cannot also be sharded"),
    ({"kind": "generate", "source_job": "TRAIN"}, "not SUCCEEDED"),
    ({"kind": "evaluate", "source_job": "TRAIN"}, "must be the generate job"),
]


@pytest.mark.parametrize("position", [0, 3, 9])
def test_one_bad_spec_anywhere_writes_nothing_and_names_its_index(settings, position):
    import json

    train = J.submit(settings, {"kind": "train"})["id"]  # something to refer to (QUEUED: no worker here)
    for bad, why in BAD:
        specs = [{"kind": "noop"} for _ in range(10)]
        specs[position] = json.loads(json.dumps(bad).replace("TRAIN", train))
        with pytest.raises(SpecError, match=rf"^request {position}: .*{why}"):
            J.submit_many(settings, specs)
        assert _count(settings) == 1, bad
    sent = _messages(settings)
    assert sent is None or sent == [train]


def test_idempotency_keys_across_and_within_batches(settings):
    first = J.submit_many(settings, [{"kind": "noop"}, {"kind": "noop"}], keys=["a", None])
    again = J.submit_many(settings, [{"kind": "noop"}, {"kind": "noop"}, {"kind": "noop"}], keys=["a", "b", "b"])
    assert again[0]["id"] == first[0]["id"]  # an existing key: its job, not a new one
    assert again[1]["id"] == again[2]["id"] != first[0]["id"]  # a key twice in one batch: one job
    assert _count(settings) == 3
    assert J.submit(settings, {"kind": "noop"}, idempotency_key="b")["id"] == again[1]["id"]
    sent = _messages(settings)
    if sent is not None:
        assert len(sent) == 3  # the reused jobs were not sent again




def test_racing_submissions_with_one_key_make_one_job(pg_settings):
    settings = pg_settings  # SQLite serialises its writers: PostgreSQL is where submissions race
    ids, errors = [], []

    def go():
        try:
            ids.append(J.submit_many(settings, [{"kind": "noop"}] * 5, keys=["same", None, None, None, None])[0]["id"])
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(ids)) == 1
    assert _count(settings, Job.idempotency_key == "same") == 1


def test_dependencies_wait_and_fan_outs_send_only_children(settings):
    dep = J.submit(settings, {"kind": "train"})
    made = J.submit_many(settings, [
        {"kind": "noop", "depends_on": [dep["id"]]},
        {"kind": "generate", "source_job": dep["id"], "depends_on": [dep["id"]], "shards": 3},
        {"kind": "noop", "sweep": {"sleep": [0.0, 0.1]}},
    ])
    waiting, gen, sweep = made
    assert dep["id"] in J.get_job(settings, waiting["id"])["message"]  # "waiting for job …"
    assert _count(settings, Job.parent_id == gen["id"]) == 3 and _count(settings, Job.parent_id == sweep["id"]) == 2
    with session_scope(settings.db_url) as s:
        sent_ids = set(s.execute(select(Job.id).where(Job.enqueued_at.is_not(None))).scalars())
        sweep_children = set(s.execute(select(Job.id).where(Job.parent_id == sweep["id"])).scalars())
    assert sent_ids == {dep["id"]} | sweep_children  # no parent, nothing waiting for its dependency
    sent = _messages(settings)
    if sent is not None:
        assert sorted(sent) == sorted(sent_ids)


def test_a_sweep_is_one_parent_with_the_cross_product(settings):
    top = J.submit(settings, {"kind": "train", "name": "lr-seed", "config": {"steps": 3},
                              "sweep": {"lr": [1e-4, 2e-4], "seed": [0, 1, 2, 3, 4], "phantom.count": [64]}})
    assert [j["id"] for j in J.list_jobs(settings)] == [top["id"]]  # one row in `medgan jobs`
    children = J.list_jobs(settings, include_children=True, limit=100)
    children = [c for c in children if c["parent_id"] == top["id"]]
    points = sorted((c["spec"]["config"]["lr_g"], c["spec"]["config"]["lr_d"], c["spec"]["config"]["seed"],
                     c["spec"]["config"]["phantom"]["count"]) for c in children)
    assert points == sorted((lr, lr, seed, 64) for lr in (1e-4, 2e-4) for seed in range(5))
    assert all(c["spec"]["sweep"] is None and c["spec"]["config"]["steps"] == 3 for c in children)
    assert {c["name"] for c in children} >= {"lr-seed lr=0.0001 seed=0 phantom.count=64"}
    assert J.get_job(settings, top["id"])["children"] == {"QUEUED": 10}


def test_a_sweep_parent_finishes_with_its_children(settings):
    from scheduler import fanout, states
    from scheduler.db import Status
    from scheduler.store import make_store

    top = J.submit(settings, {"kind": "noop", "sweep": {"sleep": [0.0, 0.1, 0.2]}})
    store = make_store(settings)
    with session_scope(settings.db_url) as s:
        kids = list(s.execute(select(Job.id).where(Job.parent_id == top["id"])).scalars())
    for n, kid in enumerate(kids):
        with session_scope(settings.db_url) as s:
            states.claim(s, kid, owner="w", lease_seconds=30)
            fanout.mark_parent_running(s, top["id"], actor="w")
            states.finish(s, kid, Status.FAILED if n == 0 else Status.SUCCEEDED, owner="w", reason="boom")
        with session_scope(settings.db_url) as s:
            fanout.maybe_finish_parent(s, store, top["id"], actor="w")
    parent = J.get_job(settings, top["id"])
    assert parent["status"] == "FAILED" and "1 of 3 jobs of the sweep failed" in parent["message"]
    J.retry(settings, top["id"])  # only the failed child runs again
    assert J.get_job(settings, top["id"])["children"] == {"QUEUED": 1, "SUCCEEDED": 2}


def test_a_key_taken_between_read_and_insert_gives_the_winner(settings, monkeypatch):
    """The race made deterministic: the key read misses the winner once, the INSERT collides, the retry finds it."""
    winner = J.submit(settings, {"kind": "noop"}, idempotency_key="k")
    real, calls = J._jobs_by_key, []

    def stale_once(session, keys):
        calls.append(keys)
        return {} if len(calls) == 1 else real(session, keys)

    monkeypatch.setattr(J, "_jobs_by_key", stale_once)
    got = J.submit_many(settings, [{"kind": "noop"}, {"kind": "noop"}], keys=["k", None])
    assert len(calls) == 2 and got[0]["id"] == winner["id"]
    assert _count(settings) == 2  # the winner and the unkeyed one; the collided attempt left nothing


def _age_messages(settings, seconds: float) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from scheduler.db import utcnow

    with session_scope(settings.db_url) as s:
        s.execute(update(Job).values(enqueued_at=utcnow() - timedelta(seconds=seconds)))


def _lose_every_message(settings) -> None:
    """What a broker restart without persistence does: every waiting message is gone."""
    if settings.broker.startswith("redis"):
        import redis

        redis.Redis.from_url(settings.broker).flushdb()  # the tests' private server
    else:
        from sqlalchemy import create_engine, text

        engine = create_engine(settings.broker.removeprefix("sqla+"))
        with engine.begin() as c:
            c.execute(text("DELETE FROM kombu_message"))
        engine.dispose()


def test_the_sweeper_resends_only_what_the_broker_lost(settings):
    ids = sorted(j["id"] for j in J.submit_many(settings, [{"kind": "noop"}] * 20))
    _age_messages(settings, 10 * settings.resend_after_seconds)  # old enough to look lost
    assert J.dispatch_ready(settings) == []  # but the queue holds them: nothing is sent twice
    sent = _messages(settings)
    assert sent is None or sorted(sent) == ids
    _lose_every_message(settings)
    assert sorted(J.dispatch_ready(settings)) == ids  # the control: lost messages are sent again
    sent = _messages(settings)
    assert sent is None or sorted(sent) == ids


def test_a_failed_publish_is_sent_by_the_next_sweep_at_once(settings, monkeypatch):
    def broker_down(app, messages):
        raise ConnectionError("broker down")

    monkeypatch.setattr(J, "send_jobs", broker_down)
    ids = sorted(j["id"] for j in J.submit_many(settings, [{"kind": "noop"}] * 5))
    assert _count(settings, Job.enqueued_at.is_(None)) == 5  # committed, marked never sent
    monkeypatch.undo()
    assert sorted(J.dispatch_ready(settings)) == ids  # no waiting for resend_after_seconds
    assert _count(settings, Job.enqueued_at.is_(None)) == 0
