"""Re-measures every lesson's stated runtime: ``python -m mlcourse.course timings``.

Each lesson opens with a line such as::

    **Runtime**: about 35 s on a CPU (about 10 s in fast mode, `MLCOURSE_FAST=1`), ...

:func:`stated_runtimes` reads the two figures from it; :func:`measure` runs the notebook top
to bottom in a fresh kernel, in full or fast mode, as "Run all" does; :func:`main` prints a
table of both beside each other and fails when a measured time is more than ``--tolerance``
(30 %) away from the stated one. Measure on an idle machine: the figures the lessons state are
what an idle machine takes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat

NOTEBOOKS = "notebooks"
_FIGURE = r"(\d+(?:\.\d+)?½?|½)\s*(s|seconds?|min|minutes?)\b"
_FULL = re.compile(r"\*\*Runtime\*\*:\s*about\s+" + _FIGURE)
_FAST = re.compile(r"about\s+" + _FIGURE + r"\s+in fast mode")


def _seconds(number: str, unit: str) -> float:
    value = float(number.replace("½", "") or 0) + (0.5 if "½" in number else 0.0)
    return value * (60.0 if unit.startswith("min") else 1.0)


def runtime_line(notebook: str | Path) -> str:
    """The lesson's ``**Runtime**:`` line (its first Markdown paragraph that starts so)."""
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for paragraph in cell.source.split("\n\n"):
            if paragraph.lstrip().startswith("**Runtime**:"):
                return " ".join(paragraph.split())
    raise ValueError(f"{notebook} states no runtime: it has no '**Runtime**:' paragraph")


def stated_runtimes(notebook: str | Path) -> dict[str, float]:
    """``{"full": seconds, "fast": seconds}`` as the lesson's runtime line states them.

    >>> import tempfile, nbformat
    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
    ...     "**Runtime**: about 1½ minutes on a CPU (about 20 s in fast mode, `MLCOURSE_FAST=1`)")])
    >>> path = tempfile.mktemp(suffix=".ipynb"); nbformat.write(nb, path)
    >>> stated_runtimes(path)
    {'full': 90.0, 'fast': 20.0}
    """
    line = runtime_line(notebook)
    full, fast = _FULL.search(line), _FAST.search(line)
    if full is None or fast is None:
        raise ValueError(
            f"{notebook}: its runtime line must read '**Runtime**: about N s on a CPU (about M s "
            f"in fast mode, ...)'; it reads: {line[:200]}"
        )
    return {"full": _seconds(*full.groups()), "fast": _seconds(*fast.groups())}


def measure(notebook: str | Path, *, fast: bool, timeout: float = 3600) -> float:
    """Seconds to run ``notebook`` top to bottom in a fresh kernel (full or fast mode)."""
    from nbclient import NotebookClient

    from mlcourse.course.grading import ThisPythonKernelManager

    notebook = Path(notebook)
    nb = nbformat.read(notebook, as_version=4)
    saved = os.environ.get("MLCOURSE_FAST")
    os.environ.pop("MLCOURSE_FAST", None)
    if fast:
        os.environ["MLCOURSE_FAST"] = "1"
    try:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_manager_class=ThisPythonKernelManager,
            resources={"metadata": {"path": str(notebook.parent)}},
        )
        start = time.perf_counter()
        client.execute()
        return time.perf_counter() - start
    finally:
        os.environ.pop("MLCOURSE_FAST", None)
        if saved is not None:
            os.environ["MLCOURSE_FAST"] = saved


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def timings(
    notebooks: list[Path], modes: tuple[str, ...], tolerance: float, log=sys.stderr
) -> list[dict]:
    """Measures each notebook in each mode; one row per notebook."""
    rows = []
    for path in notebooks:
        try:
            stated = stated_runtimes(path)
        except ValueError as err:  # measured all the same, and reported as wrong
            print(err, file=log)
            stated = {"full": None, "fast": None}
        row = {"notebook": path.name, "stated": stated, "measured": {}, "ok": True}
        for mode in modes:
            print(f"running {path.name} ({mode} mode)...", file=log, flush=True)
            seconds = measure(path, fast=mode == "fast")
            row["measured"][mode] = round(seconds, 1)
            ok = stated[mode] is not None and abs(seconds / stated[mode] - 1) <= tolerance
            row["ok"] = row["ok"] and ok
        rows.append(row)
    return rows


def format_table(rows: list[dict], modes: tuple[str, ...]) -> str:
    header = "| lesson |" + "".join(f" {m}: stated | measured | ratio |" for m in modes)
    lines = [header, "|---|" + "---|---|---|" * len(modes)]
    for row in rows:
        cells = []
        for m in modes:
            stated, measured = row["stated"][m], row["measured"].get(m)
            ratio = f"{measured / stated:.2f}" if None not in (measured, stated) else "–"
            cells.append(f" {_fmt(stated)} | {_fmt(measured)} | {ratio} |")
        lines.append(f"| {row['notebook']} |" + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlcourse.course timings",
        description="run every lesson and compare its time with the runtime it states",
    )
    parser.add_argument("notebooks", nargs="*", help="lessons (default: notebooks/*.ipynb)")
    parser.add_argument("--mode", choices=("full", "fast", "both"), default="both")
    parser.add_argument(
        "--tolerance", type=float, default=0.3, help="largest relative error (default 0.3)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or sorted(Path(NOTEBOOKS).glob("[0-9]*.ipynb"))
    modes = ("full", "fast") if args.mode == "both" else (args.mode,)
    rows = timings(paths, modes, args.tolerance)
    if args.json:
        print(json.dumps({"cpu_count": os.cpu_count(), "rows": rows}))
    else:
        print(format_table(rows, modes))
        bad = [r["notebook"] for r in rows if not r["ok"]]
        print(f"\n{len(rows) - len(bad)}/{len(rows)} lessons within ±{args.tolerance:.0%}")
    return 0 if all(r["ok"] for r in rows) else 1
