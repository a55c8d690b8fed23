"""The root of the `mailwright` command and its error handling."""

import os
import sys
import traceback
from typing import Annotated, NoReturn

import typer

from mailwright import __version__
from mailwright.cli import account_keys, audit, files, runs, sandbox, targets, tokens, triggers, workflows
from mailwright.cli.batch import send_batch
from mailwright.cli.output import EXIT_BAD_INPUT, exit_code_for, print_error, redact
from mailwright.cli.read import read
from mailwright.cli.secret_key import rotate as rotate_secret_key
from mailwright.cli.send import send
from mailwright.cli.serve import serve
from mailwright.errors import MailwrightError

app = typer.Typer(
    name="mailwright",
    help="Mailwright: email automation with SMTP targets, account keys and Send Email.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(account_keys.app, name="account-keys")
app.add_typer(targets.app, name="targets")
app.add_typer(tokens.app, name="tokens")
app.add_typer(audit.app, name="audit")
app.add_typer(sandbox.app, name="sandbox")
app.command("send")(send)
app.command("send-batch")(send_batch)
app.command("serve")(serve)
app.add_typer(workflows.app, name="workflows")
app.add_typer(runs.app, name="runs")
app.add_typer(triggers.app, name="triggers")
app.add_typer(files.app, name="files")
app.command("worker")(runs.worker)
app.command("read")(read)

secret_key_app = typer.Typer(help="The key that encrypts account-key secrets.", no_args_is_help=True)
app.add_typer(secret_key_app, name="secret-key")


@secret_key_app.command("generate")
def generate() -> None:
    """Print a new random key for MAILWRIGHT_SECRET_KEY."""
    from mailwright.secrets import generate_key

    typer.echo(generate_key())


secret_key_app.command("rotate")(rotate_secret_key)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mailwright {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    """Data lives in MAILWRIGHT_HOME; MAILWRIGHT_DATABASE_URL selects another database."""
    # Who acts (this machine's user, for the audit log) is set when the services open: cli/context.py.


def main() -> None:
    """Entry point: errors become one or two lines on stderr and an exit code, never a traceback.

    Typer reports its own usage errors (exit 2); everything Mailwright raises is
    caught here.
    """
    command = typer.main.get_command(app)
    try:
        result = command.main(prog_name="mailwright", standalone_mode=False)
    except typer.TyperException as exc:
        _usage_error(exc)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except MailwrightError as exc:
        print_error(exc)
        sys.exit(exit_code_for(exc))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        _unexpected(exc)
    sys.exit(result if isinstance(result, int) else 0)


def _unexpected(exc: Exception) -> NoReturn:
    """Bad input Pydantic refused (exit 2), else an internal error: no traceback, no secret."""
    # Only a command that loaded Pydantic can raise its errors: --help never loads it.
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(exc, pydantic.ValidationError):
        from mailwright.domain.validation import describe

        print_error(describe(exc))
        sys.exit(EXIT_BAD_INPUT)
    typer.echo(f"error: internal error: {redact(f'{type(exc).__name__}: {exc}')}", err=True)
    if os.environ.get("MAILWRIGHT_DEBUG"):
        typer.echo(redact(traceback.format_exc()), err=True)
    else:
        typer.echo("hint: set MAILWRIGHT_DEBUG=1 to see the traceback; please report it", err=True)
    sys.exit(3)


def _usage_error(exc: typer.TyperException) -> NoReturn:
    message = exc.format_message()
    if message.startswith("Got unexpected extra argument"):
        # The stray words may be a password typed after --password-stdin: never echo them.
        message = "unexpected extra argument(s); passwords are never taken as arguments"
    typer.echo(f"error: {message}", err=True)
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        typer.echo(f"hint: see '{ctx.command_path} --help'", err=True)
    sys.exit(exc.exit_code if exc.exit_code else EXIT_BAD_INPUT)
