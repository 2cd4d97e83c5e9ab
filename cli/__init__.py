"""The `medgan` command line: one typer app per area, joined here.

Importing this module must stay cheap (no torch, no celery): `medgan --help` answers fast.
"""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer with click installed
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from cli import jobs as jobs_cli
from cli import ops, submit
from cli._common import err_console

app = typer.Typer(
    name="medgan",
    help="A GPU job system for GAN research on medical images: train, generate, enhance, evaluate, and run your "
         "own scripts. Shell completion: `medgan --install-completion` (bash, zsh, fish, PowerShell).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    epilog="Example:  medgan train --steps 2000 --gpus 1 --wait",
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"medgan {version('medgan')}")
        except PackageNotFoundError:  # a checkout run without `pip install -e .`
            print("medgan (not installed)")
        raise typer.Exit(0)


@app.callback()
def _root(
    show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="print medgan's version and exit"),
) -> None:
    """A GPU job system for GAN research on medical images: train, generate, enhance, evaluate, and run your
    own scripts. Shell completion: `medgan --install-completion` (bash, zsh, fish, PowerShell)."""
app.registered_commands += submit.app.registered_commands
app.registered_commands += ops.app.registered_commands
app.add_typer(jobs_cli.app, name="jobs")
app.add_typer(ops.db_app, name="db")


def _register_late() -> None:
    # Areas that live in their own modules; imported here so their commands join the app.
    from cli import demo, pipeline, report  # noqa: F401

    app.registered_commands += demo.app.registered_commands
    app.registered_commands += report.app.registered_commands
    app.add_typer(pipeline.app, name="pipeline")


_register_late()


def main() -> None:
    """Console entry point: usage errors, like user errors, are one line and exit code 1."""
    try:
        rv = app(standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(0)
    except UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        err_console.print(f"[bold red]error:[/] {exc.format_message()}{hint}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except ClickException as exc:
        err_console.print(f"[bold red]error:[/] {exc.format_message()}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
