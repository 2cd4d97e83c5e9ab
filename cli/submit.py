"""Submitting jobs: `medgan train|generate|enhance|evaluate|submit`.

Options left unset keep the config's defaults (or the values of `--config FILE`); `--set k=v`
reaches any config field. Everything is validated before anything is written.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cli._common import command, console, err_console, fail, follow, print_json
from scheduler import constants as C
from scheduler.errors import MedganUserError

app = typer.Typer(add_completion=False)

# Options shared by every submission command.
Gpus = Annotated[Optional[int], typer.Option(help="GPUs to lease for the job (0 = CPU)")]
Priority = Annotated[Optional[int], typer.Option(help="0 (most urgent) … 9; default 5")]
Name = Annotated[Optional[str], typer.Option(help="a name to find the job by")]
Owner = Annotated[Optional[str], typer.Option(help="who the job counts against (quotas); default: you")]
NoPreempt = Annotated[bool, typer.Option("--no-preempt", help="never preempt this job for a more urgent one "
                                                                "(default: it may be: final checkpoint, requeue)")]
IdemKey = Annotated[Optional[str], typer.Option("--idempotency-key", help="a repeated key returns the same job")]
After = Annotated[Optional[list[str]], typer.Option("--after", help="job id that must succeed first (repeatable)")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="JSON or YAML file of config fields")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="config field as key=value (repeatable)")]
Wait = Annotated[bool, typer.Option("--wait", help="follow the job with a progress bar until it ends")]
Sweep = Annotated[Optional[list[str]], typer.Option(
    "--sweep", help="field=v1,v2,… or field=first..last (integers), repeatable: one job per combination, "
                    "under one parent (a config field such as lr, seed, phantom.count, or a spec field)")]
Json = Annotated[bool, typer.Option("--json", help="print the job as JSON")]


def read_text(path: Path) -> str:
    """A spec or config file's text ("-" is standard input); one clear line when it cannot be read."""
    if str(path) == "-":
        import sys

        data = sys.stdin.buffer.read()
    elif not path.exists():
        raise MedganUserError(f"file does not exist: {path}")
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise MedganUserError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MedganUserError(f"cannot parse {path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                              f"offset {exc.start}); a config is a JSON or YAML file") from None


def load_file(path: Path) -> dict[str, Any]:
    text = read_text(path)
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise MedganUserError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise MedganUserError(f"{path} must hold a mapping of fields")
    return data


def parse_sets(sets: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in sets or []:
        if "=" not in item:
            raise MedganUserError(f"--set takes key=value, not {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def parse_sweeps(items: list[str] | None) -> dict[str, list[Any]] | None:
    """`--sweep` values as a spec's sweep: field=v1,v2 (each value JSON if it parses: 1e-4, 3, true, "a,b"
    needs a spec file) or field=first..last (integers, both included)."""
    out: dict[str, list[Any]] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise MedganUserError(f"--sweep takes field=v1,v2,… or field=first..last, not {item!r}")
        if key in out:
            raise MedganUserError(f"--sweep {key} is given twice: list all its values in one --sweep")
        if ".." in raw:
            first, _, last = raw.partition("..")
            try:
                lo, hi = int(first), int(last)
            except ValueError:
                raise MedganUserError(f"--sweep {key}={raw}: a range is first..last of integers, like 0..4") from None
            if hi < lo:
                raise MedganUserError(f"--sweep {key}={raw}: the range is empty (last < first)")
            if hi - lo >= C.MAX_SWEEP_CHILDREN:
                raise MedganUserError(f"--sweep {key}={raw}: more than {C.MAX_SWEEP_CHILDREN} values")
            out[key] = list(range(lo, hi + 1))
            continue
        values = []
        for part in raw.split(","):
            if not part.strip():
                raise MedganUserError(f"--sweep {key}={raw}: an empty value")
            try:
                values.append(json.loads(part))
            except json.JSONDecodeError:
                values.append(part.strip())
        out[key] = values
    return out or None


def build_config(file: Path | None, sets: list[str] | None, **options: Any) -> dict[str, Any]:
    config = load_file(file) if file else {}
    config.update({k: v for k, v in options.items() if v is not None})
    config.update(parse_sets(sets))
    return config


def do_submit(kind: str, config: dict[str, Any], *, wait: bool, as_json: bool, idempotency_key: str | None,
              fields: dict[str, Any], sweep: list[str] | None = None) -> None:
    """Submit with spec `fields` (a dict, never keyword arguments: a spec file may hold any key)."""
    from scheduler.client import Client
    from scheduler.specs import parse_spec

    client = Client()
    fields = dict(fields)
    fields["depends_on"] = fields.pop("after", None) or fields.get("depends_on") or None
    if sweep:
        if fields.get("sweep"):
            raise MedganUserError("the spec already holds a sweep: give it there or with --sweep, not both")
        fields["sweep"] = parse_sweeps(sweep)
    reserved = {"kind", "config", "idempotency_key"} & set(fields)
    if reserved:
        parse_spec({"kind": kind, "config": config, **fields})  # pydantic names the stray field
        raise MedganUserError(f"unexpected spec field(s) {sorted(reserved)}")
    job = client.submit(kind, config=config, idempotency_key=idempotency_key, **fields)
    if wait:
        job = follow(client, job["id"], quiet=as_json)
    if as_json:
        print_json(job)
    elif not wait:
        kids = f": a sweep of {_sweep_size(fields['sweep'])} jobs" if fields.get("sweep") else ""
        err_console.print(f"submitted {job['kind']} job [bold]{job['id']}[/] ({job['status']}){kids}")
        print(job["id"])  # alone on stdout, for scripts: id=$(medgan train …)
    else:
        console.print(f"job [bold]{job['id']}[/] {job['status']}" + (f": {job['message']}" if job["message"] else ""))
    if wait and job["status"] != "SUCCEEDED":
        raise typer.Exit(1)


@command(app, "train", example="medgan train --model cgan --steps 2000 --gpus 1 --data ./scans --wait")
def train(
    model: Annotated[Optional[str], typer.Option(help="cgan | dcgan | esrgan | zerodce")] = None,
    data: Annotated[Optional[str], typer.Option(help="local image folder/file (uploaded) or a dataset key; "
                                                     "default: the bundled phantom")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="training resolution, power of two 16..256")] = None,
    steps: Annotated[Optional[int], typer.Option(help="optimisation steps")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="images per step (all processes)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="learning rate of G and D")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="steps between checkpoints")] = None,
    sample_every: Annotated[Optional[int], typer.Option(help="steps between sample grids")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed")] = None,
    masks: Annotated[Optional[bool], typer.Option("--masks/--no-masks", help="also synthesise lesion masks")] = None,
    gpus: Gpus = None, priority: Priority = None, name: Name = None, owner: Owner = None,
    idempotency_key: IdemKey = None, after: After = None, config: ConfigFile = None, set_: Sets = None,
    sweep: Sweep = None, wait: Wait = False, json_: Json = False, no_preempt: NoPreempt = False,
) -> None:
    """Train a generator (synthesis GAN, SR GAN or learned enhancer)."""
    cfg = build_config(config, set_, model=model, image_size=image_size, steps=steps, batch_size=batch_size,
                       lr_g=lr, lr_d=lr, checkpoint_every=checkpoint_every, sample_every=sample_every, seed=seed,
                       with_masks=masks)
    do_submit("train", cfg, wait=wait, as_json=json_, idempotency_key=idempotency_key, sweep=sweep, fields=dict(
        dataset=data, gpus=gpus, priority=priority, name=name, owner=owner, after=after,
        preemptible=False if no_preempt else None))


@command(app, "generate", example="medgan generate --from 3f2a --count 1000 --class-counts 0=500,1=500 --shards 4")
def generate(
    source: Annotated[str, typer.Option("--from", help="the train job (id, unique prefix or name) whose "
                                                       "checkpoint samples")],
    checkpoint: Annotated[Optional[str], typer.Option(
        help="which checkpoint: last (default), best (picked by the training probes) or step-N")] = None,
    count: Annotated[Optional[int], typer.Option(help="number of images")] = None,
    shards: Annotated[Optional[int], typer.Option(help="split into this many child jobs over all workers")] = None,
    seed: Annotated[Optional[int], typer.Option(help="sampling seed: image i depends only on (seed, i)")] = None,
    bit_depth: Annotated[Optional[int], typer.Option(help="bit depth, 8 or 16")] = None,
    format_: Annotated[Optional[str], typer.Option("--format", help="png | dicom | nifti (each file marked "
                                                                    "SYNTHETIC, with its provenance)")] = None,
    masks: Annotated[Optional[bool], typer.Option("--masks/--no-masks", help="write lesion masks")] = None,
    class_counts: Annotated[Optional[str], typer.Option(help="images per class, e.g. 0=500,1=500")] = None,
    gpus: Gpus = None, priority: Priority = None, name: Name = None, owner: Owner = None,
    idempotency_key: IdemKey = None, after: After = None, config: ConfigFile = None, set_: Sets = None,
    sweep: Sweep = None, wait: Wait = False, json_: Json = False,
) -> None:
    """Sample synthetic images (with provenance and a manifest) from a trained generator."""
    counts = None
    if class_counts:
        try:
            counts = {int(k): int(v) for k, v in (p.split("=") for p in class_counts.split(","))}
        except ValueError:
            fail(f"--class-counts takes label=count pairs like 0=500,1=500, not {class_counts!r}")
    cfg = build_config(config, set_, count=count, seed=seed, bit_depth=bit_depth, with_masks=masks,
                       class_counts=counts, format=format_)
    if counts and count is None and "count" not in cfg:
        cfg["count"] = sum(counts.values())
    do_submit("generate", cfg, wait=wait, as_json=json_, idempotency_key=idempotency_key, sweep=sweep, fields=dict(
        source_job=source, checkpoint=checkpoint, shards=shards, gpus=gpus, priority=priority, name=name,
        owner=owner, after=after))


@command(app, "enhance", example="medgan enhance --input ./dark --reference ./normal --method lime")
def enhance(
    input_: Annotated[str, typer.Option("--input", help="local image folder/file (uploaded) or a dataset key")],
    reference: Annotated[Optional[str], typer.Option(help="reference images (same file names) for PSNR/SSIM")] = None,
    method: Annotated[Optional[str], typer.Option(help="lime | gamma | he | clahe | zerodce | bicubic | esrgan")] = None,
    gamma: Annotated[Optional[float], typer.Option(help="gamma (> 0); automatic when unset")] = None,
    strength: Annotated[Optional[float], typer.Option(help="blend of enhanced over input, 0..1")] = None,
    denoise: Annotated[Optional[float], typer.Option(help="denoising strength (0 = off); automatic when unset")] = None,
    solver: Annotated[Optional[str], typer.Option(help="LIME solver: fast | exact")] = None,
    scale: Annotated[Optional[int], typer.Option(help="super-resolution factor, 2 or 4")] = None,
    model_job: Annotated[Optional[str], typer.Option("--model", help="train job of a zerodce/esrgan model (default: the model shipped with medgan)")] = None,
    gpus: Gpus = None, priority: Priority = None, name: Name = None, owner: Owner = None,
    idempotency_key: IdemKey = None, after: After = None, config: ConfigFile = None, set_: Sets = None,
    sweep: Sweep = None, wait: Wait = False, json_: Json = False,
) -> None:
    """Enhance (low-light, super-resolution) a set of images and score them."""
    cfg = build_config(config, set_, method=method, gamma=gamma, strength=strength, denoise=denoise, solver=solver,
                       scale=scale)
    do_submit("enhance", cfg, wait=wait, as_json=json_, idempotency_key=idempotency_key, sweep=sweep, fields=dict(
        dataset=input_, references=reference, source_job=model_job, gpus=gpus, priority=priority, name=name,
        owner=owner, after=after))


@command(app, "evaluate", example="medgan evaluate --from 9c41 --seeds 3  |  medgan evaluate --synthetic ./samples "
                                   "--out ./eval")
def evaluate(
    source: Annotated[Optional[str], typer.Option("--from", help="the generate job (id, unique prefix or name) "
                                                                 "whose images to judge, as a queued job")] = None,
    synthetic: Annotated[Optional[Path], typer.Option(
        help="judge this folder here and now instead (any generator's output: a generate folder with "
             "manifest.csv, class sub-folders or labels.csv; masks as <stem>_mask.png or masks/ beside)")] = None,
    real: Annotated[Optional[str], typer.Option(help="real images (default: the phantom the GAN trained on; "
                                                     "with --synthetic: the phantom of --phantom-count)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="with --synthetic: output folder (metrics.json, "
                                                     "report.html)")] = None,
    phantom_count: Annotated[Optional[int], typer.Option(help="with --synthetic and no --real: phantom images "
                                                              "(the first --set real_train_count=N are the "
                                                              "GAN's training images)")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="downstream seeds per utility arm")] = None,
    real_per_class: Annotated[Optional[int], typer.Option(help="real training images per class")] = None,
    steps: Annotated[Optional[int], typer.Option(help="optimiser steps of every classifier arm (budget parity)")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="epochs of the proxy feature extractor")] = None,
    gpus: Gpus = None, priority: Priority = None, name: Name = None, owner: Owner = None,
    idempotency_key: IdemKey = None, after: After = None, config: ConfigFile = None, set_: Sets = None,
    sweep: Sweep = None, wait: Wait = False, json_: Json = False,
) -> None:
    """Judge synthetic images: sanity gates, FID/KID/precision-recall beside a real-vs-real floor, and the
    utility study (every arm at the same optimiser steps, paired tests against real-only)."""
    cfg = build_config(config, set_, seeds=seeds, real_per_class=real_per_class, steps=steps, epochs=epochs)
    if synthetic is None:
        if source is None:
            fail("name the images to judge: --from <generate job> (queued) or --synthetic <folder> (here)")
        do_submit("evaluate", cfg, wait=wait, as_json=json_, idempotency_key=idempotency_key, sweep=sweep,
                  fields=dict(source_job=source, dataset=real, gpus=gpus, priority=priority, name=name, owner=owner,
                              after=after))
        return
    if source is not None or sweep:
        fail("--synthetic runs here: it takes no --from or --sweep")
    from cli.evaluate import evaluate_local

    def progress(step: int, total: int, stats: dict) -> None:
        if not json_:
            err_console.print(f"[{step}/{total}] {stats.get('phase')} {stats.get('arm', '')}", highlight=False)

    info = evaluate_local(synthetic, Path(real) if real else None, out or Path(f"evaluate-{synthetic.name}"), cfg,
                          {"count": phantom_count} if phantom_count else None, progress)
    if json_:
        print_json(info)
        return
    if info["gates"]:
        console.print(("gates: " if info["gates_passed"] else "[bold red]gates FAILED:[/] ") + info["gates"],
                      highlight=False, soft_wrap=True)
    for line in info["verdicts"]:
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"report: {info['report']}", highlight=False)


@command(app, "submit", example="medgan submit spec.yaml --sweep seed=0..4 --wait  |  medgan submit jobs.jsonl")
def submit(
    spec_file: Annotated[Path, typer.Argument(help="a JSON or YAML job spec with a `kind` field, or a .jsonl "
                                                   "file (or - for standard input) of one spec per line")],
    idempotency_key: Annotated[Optional[str], typer.Option(
        "--idempotency-key", help="a repeated key returns the same job; for a .jsonl file, line N without "
                                  "its own key gets KEY:N, so the same file submitted twice makes no new jobs")] = None,
    sweep: Sweep = None, wait: Wait = False, json_: Json = False,
) -> None:
    """Submit a job spec from a file (any kind), or many from a JSON-lines file: every line is validated
    first (a bad line is named and nothing is written), then all go in at once."""
    if spec_file.suffix in (".jsonl", ".ndjson") or str(spec_file) == "-":
        if sweep:
            fail("--sweep applies to one spec: give each line of a .jsonl file its own \"sweep\"")
        submit_lines(spec_file, idempotency_key=idempotency_key, wait=wait, as_json=json_)
        return
    spec = load_file(spec_file)
    kind = spec.pop("kind", None)
    from scheduler.specs import KINDS

    if kind not in KINDS:
        fail(f"unknown job kind {kind!r}; choose one of {', '.join(KINDS)}")
    config = spec.pop("config", None) or {}
    if not isinstance(config, dict):
        fail(f"`config` in {spec_file} must be a mapping of fields")
    do_submit(kind, config, wait=wait, as_json=json_, idempotency_key=idempotency_key, fields=spec, sweep=sweep)


def read_lines(path: Path, idempotency_key: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """The requests of a JSON-lines file and a label per request ("line N"); blank lines are skipped."""
    requests, labels = [], []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MedganUserError(f"{path} line {n}: not JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
            raise MedganUserError(f"{path} line {n}: a line is one JSON object with a \"kind\"")
        if idempotency_key and data.get("idempotency_key") is None:
            data["idempotency_key"] = f"{idempotency_key}:{n}"
        requests.append(data)
        labels.append(f"{path} line {n}")
    if not requests:
        raise MedganUserError(f"{path} holds no job specs (one JSON object per line)")
    return requests, labels


def submit_lines(path: Path, *, idempotency_key: str | None, wait: bool, as_json: bool) -> None:
    """`medgan submit FILE.jsonl`: one transaction, one pipelined publish (Client.submit_many)."""
    from scheduler.client import Client
    from scheduler.db import utcnow

    requests, labels = read_lines(path, idempotency_key)
    client = Client()
    started = utcnow()
    made = client.submit_many(requests, labels=labels)
    new = {j.id for j in made if datetime.fromisoformat(j.created_at) >= started}  # the others held an idempotency key given before
    if wait:
        made = client.wait_all([j.id for j in made], on_progress=_count_done if not as_json else None)
    if as_json:
        print_json(made)
    else:
        again = len(made) - sum(1 for j in made if j.id in new)
        err_console.print(f"submitted {len(new)} new job(s) from {path}" + (
            f"; {again} line(s) gave the job of an idempotency key used before" if again else ""))
        for job in made:
            print(job.id)  # one per line, in the file's order, for scripts
    if wait and any(j.status != "SUCCEEDED" for j in made):
        raise typer.Exit(1)


def _count_done(jobs: list[Any]) -> None:
    done = sum(1 for j in jobs if j.done)
    err_console.print(f"{done}/{len(jobs)} done", end="\r")


def _sweep_size(sweep: dict[str, list[Any]]) -> int:
    size = 1
    for values in sweep.values():
        size *= len(values)
    return size


@command(app, "run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
         example="medgan run --gpus 2 --data ./scans -- python train.py --lr 2e-4")
def run(
    ctx: typer.Context,
    gpus: Annotated[int, typer.Option(help="cards to lease; one process per card under accelerate launch")] = 0,
    data: Annotated[Optional[str], typer.Option(help="local folder (uploaded once) or dataset key: "
                                                     "$MEDGAN_DATA_DIR")] = None,
    code: Annotated[Path, typer.Option(help="folder to snapshot (respecting .gitignore)")] = Path("."),
    env: Annotated[Optional[list[str]], typer.Option("--env", help="KEY=VALUE for the script (repeatable)")] = None,
    max_attempts: Annotated[Optional[int], typer.Option(help="failed runs allowed (a failure is final today; lost "
                                                              "workers and preemptions never count)")] = None,
    follow_logs: Annotated[bool, typer.Option("--follow", "-f", help="stream the job's log until it ends")] = False,
    priority: Priority = None, name: Name = None, owner: Owner = None, idempotency_key: IdemKey = None,
    after: After = None, wait: Wait = False, json_: Json = False, no_preempt: NoPreempt = False,
) -> None:
    """Queue your own code: the folder is uploaded as a content-addressed snapshot and the command after `--`
    runs in a copy of it under `accelerate launch` on the leased cards. It gets $MEDGAN_OUTPUT_DIR (files there
    become artifacts), $MEDGAN_CHECKPOINT_DIR (restored from the newest snapshot when the job is requeued),
    $MEDGAN_DATA_DIR and $MEDGAN_STATS_FILE (JSON lines for progress); its output is the job's live log."""
    from scheduler.client import Client

    command_argv = list(ctx.args)
    if not command_argv:
        fail("name the command after `--`, e.g. medgan run --gpus 1 -- python train.py --lr 2e-4")
    if command_argv[0].startswith("--") and command_argv[0] not in ("--",):
        fail(f"unknown option {command_argv[0]!r} (put the command after `--`)")
    extra_env: dict[str, str] = {}
    for item in env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--env takes KEY=VALUE, not {item!r}")
        extra_env[key] = value
    client = Client()
    job = client.run(command_argv, code=code, gpus=gpus, data=data, env=extra_env or None, priority=priority,
                     name=name, owner=owner, max_attempts=max_attempts, depends_on=after or None,
                     idempotency_key=idempotency_key, preemptible=False if no_preempt else None)
    if follow_logs:
        err_console.print(f"submitted script job [bold]{job.id}[/] ({job.status}); following its log")
        for line in client.logs(job.id, follow=True):
            print(line.text, flush=True)
        job = client.job(job.id)
    elif wait:
        job = follow(client, job.id, quiet=json_)
    if json_:
        print_json(job)
    elif not (wait or follow_logs):
        err_console.print(f"submitted script job [bold]{job.id}[/] ({job.status}); code {job.spec['code']}")
        print(job.id)
    else:
        console.print(f"job [bold]{job.id}[/] {job.status}" + (f": {job.message}" if job.message else ""))
    if (wait or follow_logs) and job.status != "SUCCEEDED":
        raise typer.Exit(1)
