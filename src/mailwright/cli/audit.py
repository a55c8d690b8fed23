"""`mailwright audit`: who created, changed or deleted which target, key, workflow, trigger or token."""

from typing import Annotated

import typer

from mailwright.cli.context import services
from mailwright.cli.output import print_json, print_table

# services.audit.MAX_LIMIT, spelled here so that building the command loads no database code
# (a unit test checks that the two agree).
MAX_LIMIT = 10_000

app = typer.Typer(help="The audit log of changes (never any secret).", no_args_is_help=True)


@app.command("list")
def list_entries(
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=MAX_LIMIT, help="entries at most, newest first")
    ] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """The newest changes first: when, from which face (api, web, cli), by whom, what.

    An update lists the names of the fields it changed, never their values.
    """
    entries = services().audit.list_recent(limit)
    if as_json:
        print_json(entries)
        return
    print_table(
        ["WHEN", "FACE", "WHO", "ACTION", "OBJECT", "NAME", "FIELDS"],
        [
            [
                e.at.isoformat(timespec="seconds"),
                e.face,
                e.who(),
                e.action,
                e.object_type.replace("_", " "),
                e.object_name,
                ", ".join(e.fields),
            ]
            for e in entries
        ],
    )
