"""`medgan pipeline run FILE`: a YAML of steps (train → generate → evaluate, enhance) run as dependent jobs.

    name: phantom-utility
    steps:
      - {id: train, kind: train, config: {steps: 400}}
      - {id: gen, kind: generate, from: train, config: {count: 400}, shards: 2}
      - {id: eval, kind: evaluate, from: gen, config: {seeds: 3, real_per_class: 50}}

`from: STEP` names the job whose output a step reads (its source job); `after: [STEP…]` adds
ordering only. Each step is its own job, visible in `medgan jobs ls`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cli._common import command, console, follow, jobs_table, print_json
from cli.submit import load_file, parse_sets
from scheduler.errors import MedganUserError

app = typer.Typer(help="Run multi-step pipelines from a YAML file.", no_args_is_help=True, add_completion=False)
STEP_FIELDS = {"id", "kind", "from", "after", "config"}


def plan(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Validate the pipeline's shape (ids unique, references backwards) and return its steps."""
    steps = doc.get("steps")
    if not isinstance(steps, list) or not steps:
        raise MedganUserError("a pipeline needs a non-empty `steps` list")
    seen: set[str] = set()
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or "id" not in step or "kind" not in step:
            raise MedganUserError(f"step {i + 1} needs an `id` and a `kind`")
        if step["id"] in seen:
            raise MedganUserError(f"step id {step['id']!r} is used twice")
        refs = ([step["from"]] if step.get("from") else []) + list(step.get("after") or [])
        for ref in refs:
            if ref not in seen:
                raise MedganUserError(f"step {step['id']!r} refers to {ref!r}, which is not an earlier step")
        seen.add(step["id"])
    return steps


SPEC_FIELDS = {"name", "owner", "priority", "gpus", "max_attempts", "shards", "dataset", "references"}


def apply_sets(doc: dict[str, Any], sets: list[str] | None) -> dict[str, Any]:
    """`STEP.key=value` overrides: a spec field of the step (gpus, shards, priority, …) or a config field,
    dotted for nested ones (`train.phantom.count=64`). Values are JSON when they parse, else strings."""
    import copy

    doc = copy.deepcopy(doc)
    steps = {s.get("id"): s for s in doc.get("steps") or [] if isinstance(s, dict)}
    for path, value in parse_sets(sets).items():
        step_id, dot, key = path.partition(".")
        if not dot or not key:
            raise MedganUserError(f"--set takes STEP.key=value for a pipeline, not {path!r}")
        if step_id not in steps:
            raise MedganUserError(f"--set {path}: no step {step_id!r} (steps: {', '.join(map(str, steps))})")
        step = steps[step_id]
        if key in SPEC_FIELDS:
            step[key] = value
            continue
        node = step.setdefault("config", {}) if isinstance(step.get("config"), dict) or "config" not in step \
            else None
        if node is None:
            raise MedganUserError(f"step {step_id!r} has a `config` that is not a mapping")
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MedganUserError(f"--set {path}: {part!r} is not a mapping in step {step_id!r}")
        node[leaf] = value
    return doc


def run_pipeline(client: Any, doc: dict[str, Any]) -> list[dict[str, Any]]:
    steps = plan(doc)
    from scheduler.specs import parse_spec

    # Validate every step's spec before submitting any (nothing is written for a bad file).
    for step in steps:
        fields = {k: v for k, v in step.items() if k not in STEP_FIELDS}
        probe = {"kind": step["kind"], "config": step.get("config") or {}, **fields}
        if step.get("from"):
            probe["source_job"] = "0" * 12
            probe["depends_on"] = ["0" * 12]
        for key in ("dataset", "references"):
            if probe.get(key) and not str(probe[key]).startswith("datasets/"):
                probe[key] = "datasets/local/pending"
        parse_spec(probe)
    ids: dict[str, str] = {}
    jobs = []
    name = doc.get("name") or "pipeline"
    for step in steps:
        fields = {k: v for k, v in step.items() if k not in STEP_FIELDS}
        deps = [ids[r] for r in list(step.get("after") or [])]
        if step.get("from"):
            fields["source_job"] = ids[step["from"]]
            deps.append(ids[step["from"]])
        fields.setdefault("name", f"{name}/{step['id']}")
        job = client.submit(step["kind"], config=step.get("config") or {}, depends_on=deps or None, **fields)
        ids[step["id"]] = job["id"]
        jobs.append(job)
    return jobs


@command(app, "run", example="medgan pipeline run examples/pipelines/phantom-utility.yaml --set train.steps=500 --wait")
def run(
    file: Annotated[Path, typer.Argument(help="pipeline YAML (or JSON)")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="STEP.key=value: a step's config field "
                                                                    "(dotted for nested) or spec field "
                                                                    "(gpus, shards, …); repeatable")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow every step to its end")] = False,
    json_: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Submit every step of a pipeline as a job that waits for the steps it names. Cancelling a step cancels
    the steps after it; `medgan jobs retry` of a step queues them again."""
    from scheduler.client import Client

    client = Client()
    jobs = run_pipeline(client, apply_sets(load_file(file), set_))
    if wait:
        jobs = [follow(client, j["id"], quiet=json_) for j in jobs]
    if json_:
        print_json(jobs)
    else:
        console.print(jobs_table(jobs, title=f"pipeline {file.name}"))
    if wait and any(j["status"] != "SUCCEEDED" for j in jobs):
        raise typer.Exit(1)
