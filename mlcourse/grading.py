"""``mlcourse grade``: execute submitted notebooks and score them from their checks' records.

Each submission runs in a fresh kernel (this Python, whatever kernelspecs are installed) in a
scratch folder, with ``MLCOURSE_RESULTS`` pointing at a fresh JSON-lines file that every check
appends its result to (:func:`mlcourse.checks._core.record`). The lesson comes from the file
name (``00_welcome.ipynb``, ``00_welcome-alice.ipynb``): its checks in ``mlcourse.checks``
are what the submission is scored against. A check that never ran scores 0; a check run
several times counts its last result. A submission that raises, hangs or is not a notebook
scores what it earned and never stops the run.

Submissions are arbitrary code run with your permissions: grade them in a container or a
throw-away machine.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
import time
import uuid
from pathlib import Path

import nbformat
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpec

from mlcourse.checks._core import RESULTS_ENV

DEFAULT_TIMEOUT = 600.0
START_ATTEMPTS = 3  # a kernel that fails to start is started again, up to this many times
COLUMNS = ("path", "lesson", "score", "max_score", "status")


class ThisPythonKernelManager(AsyncKernelManager):
    """Starts IPython kernels with this very interpreter (so the course's environment), not
    with whatever ``python3`` kernelspec happens to be installed.

    On POSIX systems the kernel talks over Unix sockets with a name of its own instead of TCP
    ports: a free port is chosen, released and only then bound by the kernel, so kernels
    started at the same moment (``--jobs``, or two graders) could take the same one and die.
    """

    def __init__(self, **kwargs):
        if os.name == "posix":
            kwargs.setdefault("transport", "ipc")
            name = f"mlcourse-kernel-{uuid.uuid4().hex[:16]}"
            kwargs.setdefault("ip", os.path.join(tempfile.gettempdir(), name))
        super().__init__(**kwargs)

    @property
    def kernel_spec(self) -> KernelSpec:
        if self._kernel_spec is None:
            from ipykernel.kernelspec import get_kernel_dict

            self._kernel_spec = KernelSpec(resource_dir="", **get_kernel_dict())
        return self._kernel_spec


def execute_notebook(
    nb, *, timeout: float, env: dict[str, str] | None = None, cwd: str | Path | None = None
) -> tuple[str, str]:
    """Runs every code cell of ``nb`` in place (outputs stored in it) in a fresh kernel.

    Errors in a cell do not stop the run; the notebook as a whole gets ``timeout`` seconds.

    Args:
        nb: an nbformat 4 notebook; its cells receive their outputs.
        timeout: seconds for the whole notebook, kernel start excluded.
        env: the kernel's environment (default: this process's).
        cwd: the kernel's working folder (default: this process's).

    Returns:
        ``(status, message)``: ``"ok"``; ``"error"`` with the first error (a cell raised, or
        the kernel died); or ``"timeout"`` with the cell that was still running.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    client = NotebookClient(
        nb,
        allow_errors=True,
        kernel_manager_class=ThisPythonKernelManager,
        shutdown_kernel="immediate",
        extra_arguments=["--IPKernelApp.log_level=ERROR"],  # no TCP-encryption warning
    )
    status, message, index = "ok", "", 0
    for attempt in range(START_ATTEMPTS):
        started = False
        client.reset_execution_trackers()
        try:
            with client.setup_kernel(env=dict(os.environ if env is None else env), cwd=cwd):
                started = True
                deadline = time.monotonic() + timeout
                for index, cell in enumerate(nb.cells):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise CellTimeoutError(f"no time left before cell {index}")
                    client.timeout = max(1, round(left))
                    client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
                    errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
                    if errors and status == "ok":
                        status = "error"
                        message = f"cell {index} raised {errors[0].ename}: {errors[0].evalue}"
        except CellTimeoutError:
            return "timeout", f"still running after {timeout:g} s (cell {index})"
        except DeadKernelError:
            return "error", f"the kernel died in cell {index}"
        except RuntimeError as err:  # the kernel did not start, or died while starting
            if started or attempt + 1 == START_ATTEMPTS:
                return "error", f"the kernel could not run the notebook: {err}"
            client.km = client.kc = None  # a fresh kernel, nothing of the notebook ran yet
            continue
        break
    return status, message


def lesson_checks(lesson: str) -> dict[str, float]:
    """The checks of ``lesson`` (e.g. ``"00_welcome"``) and their points, in definition order."""
    from mlcourse.checks import REGISTRY

    return {name: c["points"] for name, c in REGISTRY.items() if c["lesson"] == lesson}


def lesson_of(path: str | Path) -> str | None:
    """The lesson a submission belongs to, from its file name's ``NN_`` prefix, or None.

    Example:
        >>> lesson_of("submissions/00_welcome-alice.ipynb")
        '00_welcome'
    """
    from mlcourse.checks import REGISTRY

    match = re.match(r"(\d\d)_", Path(path).name)
    lessons = dict.fromkeys(c["lesson"] for c in REGISTRY.values())
    if match is None:
        return None
    return next((les for les in lessons if les.startswith(match.group(0))), None)


def read_results(path: str | Path) -> dict[str, dict]:
    """The last record of each check in a results file (malformed lines are skipped)."""
    last: dict[str, dict] = {}
    if not Path(path).is_file():
        return last
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            last[str(rec["check"])] = rec
        except (ValueError, KeyError, TypeError):
            continue
    return last


def grade(path: str | Path, *, timeout: float = DEFAULT_TIMEOUT, log=None) -> dict:
    """Executes one submission and scores it.

    Args:
        path: the submitted notebook.
        timeout: seconds it may run (kernel start excluded).
        log: a text stream for one progress line, or None.

    Returns:
        ``{"path", "lesson", "score", "max_score", "status", "message", "checks"}`` where
        ``status`` is ``ok``, ``error`` (something raised; the rest still ran), ``timeout`` or
        ``invalid`` (not a notebook, or no lesson known for its name), and ``checks`` maps each
        of the lesson's checks to the points earned.
    """
    start = time.monotonic()
    lesson = lesson_of(path)
    checks = lesson_checks(lesson) if lesson else {}
    row = {"path": str(path), "lesson": lesson, "score": 0.0}
    row |= {"max_score": float(sum(checks.values())), "status": "invalid", "message": ""}
    row["checks"] = dict.fromkeys(checks, 0.0)
    if lesson is None:
        row["message"] = "the file name does not start with a known lesson's NN_ prefix"
    else:
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as err:  # not JSON, not a notebook, unreadable
            row["message"] = f"not a readable notebook: {type(err).__name__}: {err}"
        else:
            with tempfile.TemporaryDirectory(prefix="mlcourse-grade-") as scratch:
                results = Path(scratch) / "results.jsonl"
                env = {**os.environ, RESULTS_ENV: str(results)}
                row["status"], row["message"] = execute_notebook(
                    nb, timeout=timeout, env=env, cwd=scratch
                )
                records = read_results(results)
            for name, points in checks.items():
                if records.get(name, {}).get("passed") is True:
                    row["checks"][name] = float(points)
            row["score"] = float(sum(row["checks"].values()))
    if log is not None:
        print(
            f"{path}: {row['score']:g}/{row['max_score']:g} ({row['status']}"
            f"{': ' + row['message'] if row['message'] else ''})"
            f" in {time.monotonic() - start:.0f} s",
            file=log,
            flush=True,
        )
    return row


def grade_all(
    paths: list[Path], *, timeout: float = DEFAULT_TIMEOUT, jobs: int = 1, log=None
) -> list[dict]:
    """Grades every submission, ``jobs`` at a time (each in its own kernel), in order."""
    from concurrent.futures import ThreadPoolExecutor

    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda p: grade(p, timeout=timeout, log=log), paths))


def find_notebooks(paths: list[str]) -> list[Path]:
    """The given files, and every ``*.ipynb`` under the given folders, in order."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        else:
            found.append(p)
    return found


def write_csv(rows: list[dict], path: str | Path) -> None:
    """Writes the gradebook: one row per submission, one column per check (blank when the
    check belongs to another lesson), then the status message."""
    names = list(dict.fromkeys(name for row in rows for name in row["checks"]))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*COLUMNS, *names, "message"])
        for row in rows:
            cells = [row["checks"].get(name, "") for name in names]
            writer.writerow([*(row[c] for c in COLUMNS), *cells, row["message"]])


def format_table(rows: list[dict]) -> str:
    """The gradebook as aligned text, for the terminal."""
    lines = [f"{'score':>11}  {'status':<8}path"]
    for row in rows:
        score = f"{row['score']:g}/{row['max_score']:g}"
        lines.append(f"{score:>11}  {row['status']:<8}{row['path']}")
    return "\n".join(lines)
