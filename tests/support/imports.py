"""Which modules a `mailwright` command imports, run in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping

__all__ = ["loaded_by", "matching"]

# Runs `mailwright ARGS` in-process (the console script's `main`), then prints the modules loaded.
_CHILD = """
import contextlib, io, json, sys
from mailwright.cli.app import main
sys.argv = ["mailwright", *json.loads(sys.argv[1])]
shown = io.StringIO()
with contextlib.redirect_stdout(shown), contextlib.suppress(SystemExit):
    main()
print(json.dumps({"output": shown.getvalue(), "modules": sorted(sys.modules)}))
"""


def loaded_by(*args: str, env: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
    """What `mailwright ARGS` printed on stdout, and every module it imported (this interpreter's are not)."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(args)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    found = json.loads(done.stdout)
    return found["output"], found["modules"]


def matching(modules: Iterable[str], packages: Iterable[str]) -> list[str]:
    """The modules that are one of `packages` or inside one of them."""
    wanted = tuple(packages)
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in wanted)]
