"""Fast start: `import scheduler.client` and `medgan --help` load neither torch nor the service libraries.

What a fresh interpreter imported is read from `python -X importtime` (bench/bench_startup.py, which also
times both); the control shows the same reading does see torch and SQLAlchemy when they are imported.
"""

from __future__ import annotations

import pytest

from bench.bench_startup import CASES, imported

# Heavy packages neither command uses: the science stack, the database, the broker, the store.
ABSENT = {
    "import scheduler.client": ("torch", "numpy", "accelerate", "sqlalchemy", "psycopg", "alembic", "celery",
                                "kombu", "redis", "minio"),
    "medgan --help": ("torch", "numpy", "accelerate", "sqlalchemy", "psycopg", "alembic", "celery", "kombu",
                      "redis", "minio", "pydantic_settings"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_start_imports_nothing_heavy(case: str) -> None:
    argv, module = CASES[case]
    packages, seconds = imported(argv, module)
    assert module.split(".")[0] in packages and seconds > 0  # the reading saw the command's own import
    loaded = [p for p in ABSENT[case] if p in packages]
    assert not loaded, f"{case} imports {loaded}"


def test_the_reading_sees_heavy_imports_when_there_are_some() -> None:
    """The control: a command that does import torch and SQLAlchemy is caught by the same reading."""
    packages, seconds = imported(["-c", "import scheduler.jobs, medgan.models"], "scheduler.jobs")
    assert {"torch", "sqlalchemy"} <= packages and seconds > 0


def test_the_client_works_after_a_lazy_import(embedded) -> None:
    """The heavy modules load on the first call that needs them, and the call works."""
    import sys

    from scheduler.client import Client

    made = Client(embedded).submit_many([{"kind": "noop"}, {"kind": "noop"}])
    assert len({j.id for j in made}) == 2 and "sqlalchemy" in sys.modules
