"""``mlcourse grade``: execute submitted notebooks and score them from their check cells.

Submissions are hostile input. Each one is graded like this:

1. The check cells of its lesson are restored as released (``mlcourse/course/checks/released.json``,
   written by ``mlcourse release``), found by their nbgrader ``grade_id``: whatever the
   submission did to them, they run as released. A deleted check cell scores 0.
2. Before each restored check cell runs, the kernel drops every ``mlcourse`` module it has
   loaded and imports the checks afresh from the (read-only) course environment, so check
   functions or their machinery replaced in earlier cells are gone.
3. The notebook runs in a fresh kernel inside a sandbox (:mod:`mlcourse.course.sandbox`: bubblewrap,
   only its own scratch folder writable, no network, its own process namespace, a memory
   limit), with a time limit and a cap on the output kept.
4. A check scores only from the result its restored check cell displayed: results printed,
   recorded or written anywhere else earn nothing.

What remains possible: code that runs *during* a check (the learner's own function, or hooks it
planted in Python, IPython or torch) shares the check's process and could forge that check's
result. For high-stakes grading, read the submissions whose scores matter, as with any
autograder; the README says more.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import nbformat
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpec

from mlcourse.course import sandbox
from mlcourse.course.check_protocol import CHECK_MIME

DEFAULT_TIMEOUT = 600.0
DEFAULT_MAX_OUTPUT = 2_000_000  # bytes of output kept per submission (check results always)
START_ATTEMPTS = 3  # a kernel that fails to start is started again, up to this many times
COLUMNS = ("student", "path", "lesson", "score", "max_score", "status")
# run before every restored check cell: forget every mlcourse module, import the checks afresh
FRESH_CHECKS = (
    "import importlib as _mlcourse_il, sys as _mlcourse_sys\n"
    "for _mlcourse_m in [m for m in list(_mlcourse_sys.modules)"
    ' if m == "mlcourse" or m.startswith("mlcourse.")]:\n'
    "    del _mlcourse_sys.modules[_mlcourse_m]\n"
    'check = _mlcourse_il.import_module("mlcourse.course.checks")\n'
    '_mlcourse_il.import_module("mlcourse.course.checks._core").GRADING = True\n'
)


class ThisPythonKernelManager(AsyncKernelManager):
    """Starts IPython kernels with this very interpreter (so the course's environment), not
    with whatever ``python3`` kernelspec happens to be installed.

    On POSIX systems the kernel talks over Unix sockets with a name of its own instead of TCP
    ports: a free port is chosen, released and only then bound by the kernel, so kernels
    started at the same moment (``--jobs``, or two graders) could take the same one and die.

    Args:
        scratch: a folder to sandbox the kernel in (:func:`mlcourse.course.sandbox.sandbox_argv`):
            its sockets and connection file go there too. None: no sandbox.
        memory: the kernel's address-space limit in bytes, or None.
    """

    def __init__(self, scratch: str | Path | None = None, memory: int | None = None, **kwargs):
        self.scratch = None if scratch is None else os.path.realpath(scratch)
        self.memory = memory
        home = self.scratch or tempfile.gettempdir()
        if os.name == "posix":
            kwargs.setdefault("transport", "ipc")
            name = f"mlcourse-kernel-{uuid.uuid4().hex[:16]}"
            kwargs.setdefault("ip", os.path.join(home, name))
        super().__init__(**kwargs)
        if self.scratch is not None:
            self.connection_file = os.path.join(self.scratch, f"kernel-{uuid.uuid4().hex}.json")

    @property
    def kernel_spec(self) -> KernelSpec:
        if self._kernel_spec is None:
            from ipykernel.kernelspec import get_kernel_dict

            spec = get_kernel_dict()
            if self.scratch is not None:
                spec["argv"] = sandbox.sandbox_argv(spec["argv"], self.scratch, self.memory)
            elif self.memory is not None:
                spec["argv"] = sandbox.limit_memory_argv(spec["argv"], self.memory)
            self._kernel_spec = KernelSpec(resource_dir="", **spec)
        return self._kernel_spec


def _limited_client(nb, km, max_output: int | None):
    """A NotebookClient that keeps at most ``max_output`` bytes of outputs (check results are
    always kept): a submission that prints without end cannot fill the grader's memory."""
    from nbclient import NotebookClient

    class LimitedClient(NotebookClient):
        kept = 0
        dropped = False

        def output(self, outs, msg, display_id, cell_index):
            content = msg.get("content", {})
            if max_output is not None and CHECK_MIME not in content.get("data", {}):
                size = len(json.dumps(content, default=str))
                if self.kept + size > max_output:
                    self.dropped = True
                    return None
                self.kept += size
            return super().output(outs, msg, display_id, cell_index)

    return LimitedClient(
        nb,
        km=km,
        allow_errors=True,
        shutdown_kernel="immediate",
        extra_arguments=["--IPKernelApp.log_level=ERROR"],  # no TCP-encryption warning
    )


def execute_notebook(
    nb,
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    sandboxed: bool = False,
    memory: int | None = None,
    max_output: int | None = None,
) -> tuple[str, str]:
    """Runs every code cell of ``nb`` in place (outputs stored in it) in a fresh kernel.

    Errors in a cell do not stop the run; the notebook as a whole gets ``timeout`` seconds.

    Args:
        nb: an nbformat 4 notebook; its cells receive their outputs.
        timeout: seconds for the whole notebook, kernel start excluded.
        env: the kernel's environment (default: this process's).
        cwd: the kernel's working folder (default: this process's).
        sandboxed: run the kernel in the sandbox of :mod:`mlcourse.course.sandbox`, with
            ``cwd`` (which must be given) as its only writable folder.
        memory: the kernel's address-space limit in bytes (None: no limit).
        max_output: bytes of output kept (None: all of it).

    Returns:
        ``(status, message)``: ``"ok"``; ``"error"`` with the first error (a cell raised, or
        the kernel died); or ``"timeout"`` with the cell that was still running. A message
        also says when output was dropped.
    """
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    if sandboxed and cwd is None:
        raise ValueError("a sandboxed kernel needs cwd, the folder it may write to")
    status, message, index = "ok", "", 0
    for attempt in range(START_ATTEMPTS):
        km = ThisPythonKernelManager(scratch=cwd if sandboxed else None, memory=memory)
        client = _limited_client(nb, km, max_output)
        started = False
        try:
            with client.setup_kernel(
                env=dict(os.environ if env is None else env),
                cwd=cwd,
                stdout=subprocess.DEVNULL,  # what the kernel writes to its own terminal
                stderr=subprocess.DEVNULL,  # never mixes with the grader's output
            ):
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
            continue
        if client.dropped:
            note = f"output beyond {max_output:,} bytes was dropped"
            message = f"{message}; {note}" if message else note
        break
    return status, message


def lesson_checks(lesson: str) -> dict[str, float]:
    """The checks of ``lesson`` (e.g. ``"00_welcome"``) and their points, in notebook order, as
    released (``mlcourse/course/checks/released.json``)."""
    checks: dict[str, float] = {}
    for cell in released_check_cells(lesson):
        for name in cell["checks"]:
            checks.setdefault(name, cell["check_points"][name])
    return checks


def lesson_of(path: str | Path) -> str | None:
    """The lesson a submission belongs to, from its file name's ``NN_`` prefix, or None.

    Example:
        >>> lesson_of("submissions/00_welcome-alice.ipynb")
        '00_welcome'
    """
    match = re.match(r"(\d\d)_", Path(path).name)
    if match is None:
        return None
    return next((les for les in _released() if les.startswith(match.group(0))), None)


def _released() -> dict[str, list[dict]]:
    from importlib.resources import files

    return json.loads((files("mlcourse.course") / "checks" / "released.json").read_text("utf-8"))


def released_check_cells(lesson: str) -> list[dict]:
    """The check cells of ``lesson`` as released: ``grade_id``, ``source``, ``checks``,
    ``check_points`` and ``points``."""
    return _released().get(lesson, [])


def restore_check_cells(nb, released: list[dict]) -> dict[int, dict]:
    """Puts the released source back into each check cell of ``nb`` (found by its nbgrader
    ``grade_id``; the first cell of that id, if several) and returns ``{cell index: released
    cell}``. A check cell the submission deleted stays deleted."""
    by_id = {cell["grade_id"]: cell for cell in released}
    restored: dict[int, dict] = {}
    for index, cell in enumerate(nb.cells):
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if cell.cell_type != "code" or grade_id not in by_id:
            continue
        if any(r["grade_id"] == grade_id for r in restored.values()):
            continue  # a copy: an ordinary cell, whose results count for nothing
        cell.source = by_id[grade_id]["source"]
        restored[index] = by_id[grade_id]
    return restored


def check_results(nb, restored: dict[int, dict]) -> dict[str, dict]:
    """The last result each restored check cell displayed for each check it calls; results
    anywhere else in the notebook are ignored."""
    results: dict[str, dict] = {}
    for index, released in restored.items():
        for output in nb.cells[index].get("outputs", []):
            record = output.get("data", {}).get(CHECK_MIME)
            if isinstance(record, dict) and record.get("check") in released["checks"]:
                results[record["check"]] = record
    return results


def student_of(path: str | Path) -> str:
    """The student a submission belongs to: nbgrader's ``submitted/STUDENT/ASSIGNMENT/``
    layout, else the file name's suffix (``02_maml-alice.ipynb``), else ``""``.

    Example:
        >>> student_of("course/submitted/alice/02_maml/02_maml.ipynb")
        'alice'
        >>> student_of("inbox/02_maml-bob.ipynb")
        'bob'
    """
    parts = Path(path).parts
    if "submitted" in parts[:-2]:
        return parts[len(parts) - 1 - parts[::-1].index("submitted") + 1]
    match = re.match(r"\d\d_[^-]+-(.+)\.ipynb$", Path(path).name)
    return match.group(1) if match else ""


def grade(
    path: str | Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    memory: int | None = sandbox.parse_memory(sandbox.DEFAULT_MEMORY),
    max_output: int | None = DEFAULT_MAX_OUTPUT,
    log=None,
) -> dict:
    """Executes one submission, sandboxed, and scores it from its restored check cells.

    Args:
        path: the submitted notebook.
        timeout: seconds it may run (kernel start excluded).
        memory: its kernel's address-space limit in bytes (None: none).
        max_output: bytes of its output kept (check results are always kept).
        log: a text stream for one progress line, or None.

    Returns:
        ``{"student", "path", "lesson", "score", "max_score", "status", "message", "checks",
        "sandbox"}`` where ``status`` is ``ok``, ``error`` (something raised; the rest still
        ran), ``timeout`` or ``invalid`` (not a notebook, or no lesson known for its name),
        ``checks`` maps each of the lesson's checks to the points earned, and ``sandbox`` is
        ``"bwrap"`` or ``"none"``.
    """
    start = time.monotonic()
    lesson = lesson_of(path)
    checks = lesson_checks(lesson) if lesson else {}
    row = {"student": student_of(path), "path": str(path), "lesson": lesson, "score": 0.0}
    row |= {"max_score": float(sum(checks.values())), "status": "invalid", "message": ""}
    row["checks"] = dict.fromkeys(checks, 0.0)
    row["sandbox"] = "bwrap" if sandbox.bwrap() else "none"
    if lesson is None:
        row["message"] = "the file name does not start with a known lesson's NN_ prefix"
    else:
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as err:  # not JSON, not a notebook, unreadable
            row["message"] = f"not a readable notebook: {type(err).__name__}: {err}"
        else:
            restored = restore_check_cells(nb, released_check_cells(lesson))
            for index in restored:
                nb.cells[index].source = FRESH_CHECKS + nb.cells[index].source
            with tempfile.TemporaryDirectory(prefix="mlcourse-grade-") as scratch:
                shutil.copyfile(path, Path(scratch) / Path(path).name)  # this submission alone
                row["status"], row["message"] = execute_notebook(
                    nb,
                    timeout=timeout,
                    env=sandbox.sandbox_env(scratch),
                    cwd=scratch,
                    sandboxed=row["sandbox"] == "bwrap",
                    memory=memory,
                    max_output=max_output,
                )
            results = check_results(nb, restored)
            for name, points in checks.items():
                if results.get(name, {}).get("passed") is True:
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
    paths: list[Path],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    jobs: int = 1,
    memory: int | None = sandbox.parse_memory(sandbox.DEFAULT_MEMORY),
    max_output: int | None = DEFAULT_MAX_OUTPUT,
    log=None,
) -> list[dict]:
    """Grades every submission, ``jobs`` at a time (each in its own sandboxed kernel), in
    order. Says on ``log``'s first line whether kernels are sandboxed."""
    from concurrent.futures import ThreadPoolExecutor

    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if log is not None:
        print(sandbox_notice(), file=log, flush=True)
    options = {"timeout": timeout, "memory": memory, "max_output": max_output, "log": log}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        rows = list(pool.map(lambda p: grade(p, **options), paths))
    totals: dict[str, float] = {}
    for row in rows:
        totals[row["student"]] = totals.get(row["student"], 0.0) + row["score"]
    for row in rows:
        row["student_total"] = totals[row["student"]]
    return rows


def sandbox_notice() -> str:
    """One line: how submissions' kernels are isolated on this machine."""
    if sandbox.bwrap():
        return "mlcourse grade: each submission runs sandboxed (bubblewrap)"
    return (
        "mlcourse grade: WARNING: bubblewrap (bwrap) is not installed, so submissions run "
        "WITHOUT a sandbox (they can read and write your files); install it, e.g. "
        "`apt-get install bubblewrap`, before grading work you do not trust"
    )


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
    """Writes the gradebook atomically: one row per submission (its student, their total over
    every lesson graded, its lesson's score), one column per check (blank when the check
    belongs to another lesson), whether it ran sandboxed, then the status message."""
    names = list(dict.fromkeys(name for row in rows for name in row["checks"]))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*COLUMNS, "student_total", *names, "sandbox", "message"])
        for row in rows:
            cells = [row["checks"].get(name, "") for name in names]
            writer.writerow(
                [*(row[c] for c in COLUMNS), row.get("student_total", row["score"]), *cells]
                + [row["sandbox"], row["message"]]
            )
    os.replace(tmp, path)


def format_table(rows: list[dict]) -> str:
    """The gradebook as aligned text, for the terminal, then each student's total."""
    lines = [f"{'score':>11}  {'status':<8}{'student':<16}path"]
    for row in rows:
        score = f"{row['score']:g}/{row['max_score']:g}"
        lines.append(f"{score:>11}  {row['status']:<8}{row['student'] or '-':<16}{row['path']}")
    totals: dict[str, list[float]] = {}
    for row in rows:
        got = totals.setdefault(row["student"] or "-", [0.0, 0.0])
        got[0], got[1] = got[0] + row["score"], got[1] + row["max_score"]
    lines += ["", "totals"] + [f"{s:<16}{t:g}/{m:g}" for s, (t, m) in totals.items()]
    return "\n".join(lines)
