"""The `mailwright` command (Typer)."""
