"""Start-up time of the `mailwright` command, against the bare Typer import.

One run measures, as medians of `--runs` wall-clock timings (15 by default):

1. `python -c "import typer"`: the floor, what importing the CLI library costs;
2. `mailwright --help`: Typer with our commands, and nothing else, ideally;
3. `mailwright targets list`: a command that opens the database (a throwaway
   MAILWRIGHT_HOME holding one target, made before the timings start);
4. the help of a Typer app with as many commands and options as ours, and nothing else:
   what Typer's own help rendering costs (the floor for `mailwright --help`);

and prints the ratios `--help / typer` and `targets list / typer` (and, given two trees,
each case of the later tree against the first's). The cases are
interleaved (case 1, 2, 3, then again), so a machine whose load drifts weighs on each
case alike.

With `--src DIR` (repeatable), each source tree runs on its own PYTHONPATH with the
same interpreter: two trees (before and after a change) compare in one run.

    .venv/bin/python bench/startup.py
    git archive BASE src | tar -x -C ../before      # the tree before a change
    .venv/bin/python bench/startup.py --src ../before/src --src src --runs 21
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

PYTHON = sys.executable
MAILWRIGHT = str(Path(sys.executable).parent / "mailwright")
TYPER = "typer"  # the name of the baseline case
TARGET = ("targets", "create", "--name", "Relay", "--server", "127.0.0.1", "--port", "2525")


def environment(home: Path, src: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
    env.pop("PYTHONPATH", None)
    # Bytecode is cached, as on a user's machine: the untimed first run of each case writes it
    # (with PYTHONDONTWRITEBYTECODE every run would compile the modules again).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["MAILWRIGHT_HOME"] = str(home)
    if src is not None:
        env["PYTHONPATH"] = str(Path(src).resolve())
    return env


def timed(argv: Sequence[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def prepare(home: Path, env: dict[str, str]) -> None:
    """A home with one target, so that `targets list` reads a row (not timed)."""
    home.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(
        [MAILWRIGHT, *TARGET, "--security", "none", "--no-account-keys"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        sys.exit(f"could not create the target in {home}:\n{made.stdout}{made.stderr}")


# A Typer app shaped like ours (10 command groups of 5 commands, 5 top-level commands, a
# --json flag and an option each) and nothing else: what rendering this help costs Typer
# itself (its Rich formatting loads Rich's markdown and pretty-printing).
SHAPED = "a Typer app of our shape, --help"
SHAPED_APP = """
import typer
app = typer.Typer(add_completion=False, no_args_is_help=True, help="Commands shaped like ours.")
for group in range(10):
    sub = typer.Typer(help=f"group {group}", no_args_is_help=True)
    for number in range(5):
        def command(
            name: str = typer.Option("x", help="a name"),
            as_json: bool = typer.Option(False, "--json", help="print JSON"),
        ) -> None:
            \"\"\"A command.\"\"\"
        sub.command(f"c{number}")(command)
    app.add_typer(sub, name=f"group-{group}")
for name in ("send", "send-batch", "serve", "worker", "read"):
    def top(to: str = typer.Option("", help="to")) -> None:
        \"\"\"A top-level command.\"\"\"
    app.command(name)(top)
app()
"""


def cases(trees: Sequence[str | None], work: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each case's command line and environment, the Typer baselines first."""
    shaped = work / "shaped_app.py"
    shaped.write_text(SHAPED_APP, encoding="utf-8")
    bare = environment(work / "typer-home", None)
    found: dict[str, tuple[list[str], dict[str, str]]] = {
        TYPER: ([PYTHON, "-c", "import typer"], bare),
        SHAPED: ([PYTHON, str(shaped), "--help"], bare),
    }
    for index, src in enumerate(trees):
        label = f"[{src}] " if src is not None else ""
        home = work / f"home-{index}"
        env = environment(home, src)
        prepare(home, env)
        found[f"{label}mailwright --help"] = ([MAILWRIGHT, "--help"], env)
        found[f"{label}mailwright targets list"] = ([MAILWRIGHT, "targets", "list"], env)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=15, help="timings of each case (the median is printed)")
    parser.add_argument(
        "--src",
        action="append",
        metavar="DIR",
        help="a source tree (its `src` folder) to run on PYTHONPATH; repeat to compare trees",
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    trees: list[str | None] = list(args.src) if args.src else [None]
    with tempfile.TemporaryDirectory(prefix="mw-startup-") as tmp:
        found = cases(trees, Path(tmp))
        for argv, env in found.values():  # once, untimed: compiled bytecode and a warm disk cache
            timed(argv, env)
        timings: dict[str, list[float]] = {name: [] for name in found}
        for run in range(args.runs):
            for name, (argv, env) in found.items():
                timings[name].append(timed(argv, env))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
    report(timings, runs=args.runs)
    if len(trees) > 1:
        compare(timings, trees)


def compare(timings: dict[str, list[float]], trees: Sequence[str | None]) -> None:
    """Each later tree's medians against the first tree's (before / after)."""
    first = trees[0]
    print(f"against [{first}]")
    for src in trees[1:]:
        for case in ("mailwright --help", "mailwright targets list"):
            before = statistics.median(timings[f"[{first}] {case}"])
            after = statistics.median(timings[f"[{src}] {case}"])
            print(f"  [{src}] {case}: {after / before:.2f}x the time ({before / after:.1f}x faster)")


def report(timings: dict[str, list[float]], *, runs: int) -> None:
    medians = {name: statistics.median(values) for name, values in timings.items()}
    floor = medians[TYPER]
    width = max(len(name) for name in medians)
    print(f"wall time, median of {runs} interleaved runs (min .. max), and the ratio to `import typer`")
    for name, median in medians.items():
        low, high = min(timings[name]), max(timings[name])
        ratio = "" if name == TYPER else f"  {median / floor:5.2f}x typer"
        spread = f"({low * 1000:.0f} .. {high * 1000:.0f})"
        print(f"  {name.ljust(width)}  {median * 1000:7.0f} ms  {spread}{ratio}")


if __name__ == "__main__":
    main()
