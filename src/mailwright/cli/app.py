"""The root of the `mailwright` command and its error handling."""

import importlib
import os
import sys
import traceback
from typing import Annotated, Any, NoReturn

import typer
from typer import _click
from typer.core import TyperGroup, TyperOption

from mailwright import __version__
from mailwright.cli import audit, files, runs, sandbox, tokens, triggers, workflows
from mailwright.cli.batch import send_batch
from mailwright.cli.output import EXIT_BAD_INPUT, exit_code_for, print_error, redact
from mailwright.cli.read import read
from mailwright.cli.secret_key import rotate as rotate_secret_key
from mailwright.cli.send import send
from mailwright.cli.serve import serve
from mailwright.errors import MailwrightError

_value_shown = TyperOption.display_type_rich


def _flag_shows_no_value(self: TyperOption, ctx: _click.Context) -> str | None:
    """A flag takes no value: Typer 0.29 labels `--json` `<bool>` in help, which reads as
    `--json true` and sends users to type one. Only options that take a value show its type."""
    return None if self.is_flag else _value_shown(self, ctx)


TyperOption.display_type_rich = _flag_shows_no_value  # type: ignore[method-assign]

app = typer.Typer(
    name="mailwright",
    help="Mailwright: email automation with SMTP targets, account keys and Send Email.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# `account-keys` and `targets` build their options from the registered key and target types
# (their models, and any plugin's): loaded only when such a command runs, so `--help` stays quick.
KEYS_HELP = "Account keys: the credentials targets log in with (passwords, OAuth2 apps)."
app.add_typer(typer.Typer(help=KEYS_HELP), name="account-keys")  # its place and help; see command()
TARGETS_HELP = "Targets: the mail servers Mailwright talks to."
app.add_typer(typer.Typer(help=TARGETS_HELP), name="targets")  # its place and help; see command()
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
workers_app = typer.Typer(help="The workers running now, on every machine.", no_args_is_help=True)
workers_app.command("list")(runs.workers_list)
app.add_typer(workers_app, name="workers")
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


class LazyGroup(TyperGroup):
    """A command group listed by name and help, whose module is imported when it is used.

    Listing it (the root's --help) needs only its help text; running it or asking for its
    own help builds the real group from `module`'s Typer `app`, and that group parses and
    runs the command line.
    """

    def __init__(self, name: str, *, module: str, help_text: str) -> None:
        super().__init__(name=name, help=help_text, no_args_is_help=True)
        self._module = module
        self._real: TyperGroup | None = None

    def real(self) -> TyperGroup:
        if self._real is None:
            # Built as a subcommand of a root, as `add_typer` would: no completion options of its own.
            root = typer.Typer(add_completion=False)
            root.add_typer(importlib.import_module(self._module).app, name=self.name)
            built = typer.main.get_command(root)
            assert isinstance(built, TyperGroup)
            real = built.commands[str(self.name)]
            assert isinstance(real, TyperGroup)
            self._real = real
        return self._real

    def make_context(
        self, info_name: str | None, args: list[str], parent: _click.Context | None = None, **extra: Any
    ) -> _click.Context:
        return self.real().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: _click.Context) -> Any:
        return self.real().invoke(ctx)

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return self.real().list_commands(ctx)

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        return self.real().get_command(ctx, cmd_name)


def command() -> TyperGroup:
    """The root command group, with `targets` and `account-keys` loaded on first use."""
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    root.commands["targets"] = LazyGroup("targets", module="mailwright.cli.targets", help_text=TARGETS_HELP)
    root.commands["account-keys"] = LazyGroup(
        "account-keys", module="mailwright.cli.account_keys", help_text=KEYS_HELP
    )
    return root


def main() -> None:
    """Entry point: errors become one or two lines on stderr and an exit code, never a traceback.

    Typer reports its own usage errors (exit 2); everything Mailwright raises is
    caught here.
    """
    try:
        result = command().main(prog_name="mailwright", standalone_mode=False)
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
