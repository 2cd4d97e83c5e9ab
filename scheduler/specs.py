"""Job specs: what a user asks for, validated before anything is written.

A spec wraps the science config of its kind (medgan.config) with what the job system needs:
inputs (dataset keys, the job whose checkpoint to use), resources, priority, owner.
"""

from __future__ import annotations

import functools
import getpass
import os
import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from medgan.config import EnhanceConfig, EvaluateConfig, GenerateConfig, TrainConfig, parse_checkpoint_choice
from scheduler import constants as C
from scheduler.errors import SpecError

DATASET_KEY = re.compile(r"^datasets/[A-Za-z0-9][A-Za-z0-9._-]{0,99}/[A-Za-z0-9._-]{1,64}$")
JOB_ID = re.compile(r"^[0-9a-f]{12}$")
SWEEP_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _default_owner() -> str:
    # getpass.getuser() reads these variables, then the passwd file: once per value, not once per spec
    # (a bulk submission validates thousands).
    return _owner(tuple(os.environ.get(k) for k in ("LOGNAME", "USER", "LNAME", "USERNAME")))


@functools.lru_cache(maxsize=16)
def _owner(_env: tuple[str | None, ...]) -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


class _Base(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = Field(None, max_length=200)
    owner: str = Field(default_factory=_default_owner, min_length=1, max_length=100)
    priority: int = Field(C.PRIORITY_DEFAULT, ge=C.PRIORITY_MIN, le=C.PRIORITY_MAX, description="0 = most urgent")
    gpus: int = Field(0, ge=0, le=64, description="cards leased for the job (0 = CPU)")
    max_attempts: int | None = Field(None, ge=1, le=100)
    preemptible: bool = Field(True, description="may be preempted (checkpoint, requeue) for a more urgent job")
    depends_on: list[str] = Field(default_factory=list, description="job ids that must SUCCEED first")
    sweep: dict[str, list[Any]] | None = Field(
        None, description="field → values: one child job per combination (the cross product), under this "
                          "job as their parent; a field is a spec field (source_job, priority...) or a config "
                          "field (lr_g, seed, phantom.count...; `lr` sets lr_g and lr_d)")

    @field_validator("depends_on")
    @classmethod
    def _ids(cls, v: list[str]) -> list[str]:
        for job_id in v:
            if not JOB_ID.match(job_id):
                raise ValueError(f"not a job id: {job_id!r}")
        return v

    @field_validator("sweep")
    @classmethod
    def _sweep(cls, v: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("a sweep needs at least one field")
        size = 1
        for key, values in v.items():
            if not SWEEP_KEY.match(key) or key == "config" or key.split(".")[0] in ("kind", "sweep"):
                raise ValueError(f"cannot sweep {key!r}: name a spec or config field (a.b for nested ones)")
            if not values:
                raise ValueError(f"{key} has no values")
            if len({repr(x) for x in values}) != len(values):
                raise ValueError(f"{key} repeats a value")
            size *= len(values)
        if size > C.MAX_SWEEP_CHILDREN:
            raise ValueError(f"the sweep makes {size} jobs; at most {C.MAX_SWEEP_CHILDREN}")
        return v


def _dataset_key(cls: type, v: str | None) -> str | None:
    if v is not None and not DATASET_KEY.match(v):
        raise ValueError(f"not a dataset key (datasets/<name>/<version>): {v!r}")
    return v


def _datasets(*fields: str) -> Any:
    """A validator for the fields that hold dataset keys."""
    return field_validator(*fields)(classmethod(_dataset_key))


class TrainSpec(_Base):
    kind: Literal["train"] = "train"
    config: TrainConfig = Field(default_factory=TrainConfig)
    dataset: str | None = Field(None, description="dataset key; None = the bundled phantom")
    _v_dataset = _datasets("dataset")


def _job_id(cls: type, v: str | None) -> str | None:
    if v is not None and not JOB_ID.match(v):
        raise ValueError(f"not a job id: {v!r}")
    return v


class GenerateSpec(_Base):
    kind: Literal["generate"] = "generate"
    config: GenerateConfig = Field(default_factory=GenerateConfig)
    source_job: str = Field(..., description="the train job whose checkpoint samples (`--from` on the CLI)")
    checkpoint: str = Field("last", description="which checkpoint of source_job: last, best (the training "
                            "probes' pick) or step-N")
    shards: int = Field(1, ge=1, le=10_000)
    shard_index: int | None = Field(None, ge=0, description="set on child jobs of a fan-out")
    _v_source = field_validator("source_job")(classmethod(_job_id))

    @model_validator(mode="before")
    @classmethod
    def _needs_source(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("source_job"):
            raise ValueError("a generate job needs source_job: the train job to sample from")
        return data

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint(cls, v: str) -> str:
        parse_checkpoint_choice(v)  # ValueError names the accepted forms
        return v.strip()


class EnhanceSpec(_Base):
    kind: Literal["enhance"] = "enhance"
    config: EnhanceConfig = Field(default_factory=EnhanceConfig)
    dataset: str = Field(..., description="dataset key of the images to enhance")
    references: str | None = Field(None, description="dataset key of reference images (same file stems)")
    source_job: str | None = Field(None, description="a zerodce/esrgan train job for learned methods (default: "
                                   "the model shipped with medgan, medgan.enhance.models)")
    _v_dataset = _datasets("dataset", "references")
    _v_source = field_validator("source_job")(classmethod(_job_id))

    @model_validator(mode="after")
    def _shipped_scale(self) -> "EnhanceSpec":
        if self.config.method == "esrgan" and not self.source_job:
            from medgan.enhance.models import shipped_sr_scale

            scale = shipped_sr_scale()
            if scale is not None and scale != self.config.scale:
                raise ValueError(f"the shipped esrgan model upsamples x{scale}, not x{self.config.scale}: "
                                 f"pass a trained x{self.config.scale} esrgan job with --model (source_job)")
        return self


class EvaluateSpec(_Base):
    kind: Literal["evaluate"] = "evaluate"
    config: EvaluateConfig = Field(default_factory=EvaluateConfig)
    source_job: str = Field(..., description="the generate job whose images to judge")
    dataset: str | None = Field(None, description="real images; None = the phantom the generator trained on")
    _v_dataset = _datasets("dataset")
    _v_source = field_validator("source_job")(classmethod(_job_id))


class NoopSpec(_Base):
    """Does nothing: measures the platform's own overhead (bench, tests)."""

    kind: Literal["noop"] = "noop"
    sleep: float = Field(0.0, ge=0, le=3600)
    fail: str | None = None


CODE_KEY = re.compile(r"^code/[A-Za-z0-9][A-Za-z0-9._-]{0,99}/[A-Za-z0-9._-]{1,64}$")


class ScriptSpec(_Base):
    """Your own code (`medgan run`): a content-addressed snapshot of a folder, and the command to run in it
    under `accelerate launch` on the leased cards (worker/tasks/script.py documents its environment)."""

    kind: Literal["script"] = "script"
    code: str = Field(..., description="code snapshot key, code/<name>/<version> (uploaded by `medgan run`)")
    command: list[str] = Field(..., min_length=1, max_length=1000, description="argv, e.g. python train.py --lr 2e-4")
    dataset: str | None = Field(None, description="dataset key, materialised as $MEDGAN_DATA_DIR")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables of the script")
    _v_dataset = _datasets("dataset")

    @field_validator("code")
    @classmethod
    def _code_key(cls, v: str) -> str:
        if not CODE_KEY.match(v):
            raise ValueError(f"not a code snapshot key (code/<name>/<version>): {v!r}")
        return v

    @field_validator("command")
    @classmethod
    def _argv(cls, v: list[str]) -> list[str]:
        if not v[0].strip() or any("\x00" in a for a in v):
            raise ValueError("command must be a program and its arguments, e.g. ['python', 'train.py']")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,99}", key) or key.startswith("MEDGAN_") \
                    or key == "CUDA_VISIBLE_DEVICES":
                raise ValueError(f"env may not set {key!r} (the worker sets MEDGAN_* and CUDA_VISIBLE_DEVICES)")
        return v


JobSpec = Annotated[
    Union[TrainSpec, GenerateSpec, EnhanceSpec, EvaluateSpec, ScriptSpec, NoopSpec], Field(discriminator="kind")
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(JobSpec)
KINDS = ("train", "generate", "enhance", "evaluate", "script", "noop")
LEARNED_METHODS = ("zerodce", "esrgan")
AnySpec = Union[TrainSpec, GenerateSpec, EnhanceSpec, EvaluateSpec, ScriptSpec, NoopSpec]


def parse_spec(data: dict[str, Any]) -> AnySpec:
    """Validate a spec dict; SpecError carries one readable line per problem."""
    kind = data.get("kind")
    if kind not in KINDS:
        raise SpecError(f"unknown job kind {kind!r}; choose one of {', '.join(KINDS)}")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        # A key may hold any character (a spec is user data): odd ones are shown quoted, never raw.
        loc = ".".join(str(x) if str(x).isidentifier() or isinstance(x, int) else repr(x)
                       for x in err["loc"] if str(x) not in KINDS)
        msg = " ".join(err["msg"].removeprefix("Value error, ").split())
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "invalid spec: " + "; ".join(parts)
