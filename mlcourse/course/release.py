"""``mlcourse release``: stamps the course's standard cells and writes the exercise notebooks.

* ``solutions/NN_topic.ipynb`` is the single source of ``exercises/NN_topic.ipynb``: every region
  from a line ``### BEGIN SOLUTION`` to a line ``### END SOLUTION`` becomes ``# YOUR CODE HERE``
  and ``raise NotImplementedError()``, indented like the ``BEGIN`` line.
* Every notebook in ``notebooks/``, ``solutions/`` and ``exercises/`` gets the same "Open in
  Colab" badge (a markdown cell tagged ``colab-badge``) and setup cell (a code cell tagged
  ``setup``), built from :mod:`mlcourse.course`. An author writes the title and may leave the
  tagged cells empty or out: the badge goes after the first cell, the setup cell before the
  first code cell.
* Outputs and execution counts are cleared; solution and check cells get nbgrader metadata
  (``solution: true`` / ``grade: true`` with the check's points from ``mlcourse.course.checks``).

* The check cells of every exercise, as released, go to ``mlcourse/course/checks/released.json``
  (package data): ``mlcourse grade`` restores them by their nbgrader ``grade_id`` before it runs
  a submission, whatever the submission did to them.

* The course's repository is named in one place, ``REPO`` in ``mlcourse/course/__init__.py``; in the
  course repository itself release also keeps the README's "Open in Colab" links pointing into
  it. ``mlcourse release --repo OWNER/NAME`` moves the course to a fork: it rewrites that line,
  then stamps every badge, setup cell and README link with the fork's address, and later runs
  keep it.

``mlcourse release --check`` writes nothing and fails when any file differs from what release
would write.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import nbformat

from mlcourse import course

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
BADGE_TAG, SETUP_TAG = "colab-badge", "setup"
FOLDERS = ("notebooks", "solutions", "exercises")
CHECK_CALL = re.compile(r"\bcheck\.(\w+)\(")
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def badge_source(path: str, repo: str = course.REPO) -> str:
    """The badge cell of the notebook at ``path`` (relative to the repository root), opening it
    from GitHub repository ``repo`` (OWNER/NAME). A solution's badge opens its exercise:
    nbgrader's student version is made from the solution and keeps its cells, and no
    student-facing notebook may link to a solution."""
    if path.startswith("solutions/"):
        path = "exercises/" + path[len("solutions/") :]
    image = "https://colab.research.google.com/assets/colab-badge.svg"
    return f"[![Open In Colab]({image})]({course.colab_url(path, repo)})"


def setup_source(repo: str = course.REPO) -> str:
    """The setup cell: installs ``mlcourse`` from GitHub repository ``repo`` when it is missing
    (Colab), never torch."""
    return (
        "# Setup (the same in every notebook): installs mlcourse on Colab, never torch.\n"
        "import importlib.util\n"
        "\n"
        'if importlib.util.find_spec("mlcourse") is None:\n'
        f'    %pip install -q "{course.install_spec(repo)}"\n'
        "\n"
        "import mlcourse  # noqa: E402\n"
        "from mlcourse.runtime import default_device  # noqa: E402\n"
        "\n"
        'print(f"mlcourse {mlcourse.__version__}, device: {default_device()}")'
    )


def strip_solutions(source: str, where: str = "a cell") -> str:
    r"""Replaces every ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region by the stub.

    Raises:
        ValueError: a region is not closed, or an ``END`` has no ``BEGIN``.

    Example:
        >>> source = "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION"
        >>> print(strip_solutions(source))
        def f(x):
            # YOUR CODE HERE
            raise NotImplementedError()
    """
    out, indent = [], None
    for line in source.split("\n"):
        marker = line.strip()
        if marker == BEGIN:
            if indent is not None:
                raise ValueError(f"{where}: {BEGIN} inside another region; close it first")
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + text for text in STUB]
        elif marker == END:
            if indent is None:
                raise ValueError(f"{where}: {END} without a {BEGIN} before it")
            indent = None
        elif indent is None:
            out.append(line)
    if indent is not None:
        raise ValueError(f"{where}: {BEGIN} is never closed; add a line {END}")
    return "\n".join(out)


def _tagged(nb, tag: str, path: str) -> int | None:
    found = [i for i, cell in enumerate(nb.cells) if tag in cell.metadata.get("tags", [])]
    if len(found) > 1:
        raise ValueError(f"{path}: cells {found} are all tagged {tag!r}; keep one")
    return found[0] if found else None


def _stamp_cell(nb, tag: str, cell_type: str, source: str, default_index: int, path: str) -> None:
    index = _tagged(nb, tag, path)
    if index is None:
        new = (
            nbformat.v4.new_markdown_cell if cell_type == "markdown" else nbformat.v4.new_code_cell
        )
        cell = new(source, metadata={"tags": [tag]})
        cell.id = tag
        nb.cells.insert(default_index, cell)
        return
    cell = nb.cells[index]
    if cell.cell_type != cell_type:
        raise ValueError(f"{path}: the cell tagged {tag!r} must be a {cell_type} cell")
    cell.source = source


def stamp(nb, path: str, repo: str = course.REPO):
    """Returns a copy of ``nb`` with the badge and setup cells refreshed and outputs cleared.

    Args:
        nb: a notebook (nbformat 4).
        path: where it lives, relative to the repository root (for the badge's address).
        repo: the GitHub repository (OWNER/NAME) the badge and the setup cell point to.
    """
    nb = copy.deepcopy(nb)
    nb.nbformat, nb.nbformat_minor = 4, 5
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    first = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    _stamp_cell(nb, BADGE_TAG, "markdown", badge_source(path, repo), first, path)
    first_code = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
    _stamp_cell(nb, SETUP_TAG, "code", setup_source(repo), first_code, path)
    for i, cell in enumerate(nb.cells):
        cell.setdefault("id", f"cell-{i}")
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def _solution_name(source: str) -> str | None:
    match = re.search(r"^\s*def (\w+)|^(\w+)\s*=", source, re.MULTILINE)
    return (match.group(1) or match.group(2)) if match else None


def add_nbgrader(nb, path: str):
    """Marks solution cells (``solution: true``) and check cells (``grade: true``, locked, with
    the points of the checks they call) with nbgrader metadata; other cells get none.

    Raises:
        ValueError: a cell calls a check that ``mlcourse.course.checks`` does not define.
    """
    from mlcourse.course.checks import REGISTRY

    nb = copy.deepcopy(nb)
    used: set[str] = set()
    for i, cell in enumerate(nb.cells):
        old = cell.metadata.pop("nbgrader", {})
        if cell.cell_type != "code" or SETUP_TAG in cell.metadata.get("tags", []):
            continue
        checks = CHECK_CALL.findall(cell.source)
        if any(line.strip() == BEGIN for line in cell.source.split("\n")):
            meta = {"grade": False, "locked": False, "solution": True}
            default_id = _solution_name(cell.source) or f"solution_{i}"
        elif checks:
            unknown = [name for name in checks if name not in REGISTRY]
            if unknown:
                raise ValueError(
                    f"{path} cell {i} calls check.{unknown[0]}, which mlcourse.course.checks does "
                    "not define: add it to mlcourse/course/checks/ or fix the name"
                )
            points = sum(REGISTRY[name]["points"] for name in checks)
            meta = {"grade": True, "locked": True, "solution": False, "points": points}
            default_id = "check_" + "_".join(dict.fromkeys(checks))
        else:
            continue
        grade_id = old.get("grade_id") or default_id
        while grade_id in used:
            grade_id += "_"
        used.add(grade_id)
        cell.metadata["nbgrader"] = {**meta, "grade_id": grade_id, "schema_version": 3}
    return nb


def nbgrader_checksum(cell) -> str:
    """The checksum ``nbgrader generate_assignment`` stores in a cell's metadata (its
    ``compute_checksum``: md5 of the source, the cell type, whether the cell is graded, a
    solution and locked, its ``grade_id`` and, for a graded cell, its points as a float)."""
    meta = cell.metadata["nbgrader"]
    grade, solution = bool(meta.get("grade")), bool(meta.get("solution"))
    locked = False if solution else (True if grade else bool(meta.get("locked")))
    parts = [cell.source, cell.cell_type, str(grade), str(solution), str(locked)]
    parts.append(meta["grade_id"])
    if grade:
        parts.append(str(float(meta["points"])))
    md5 = hashlib.md5(usedforsecurity=False)
    for part in parts:
        md5.update(part.encode("utf-8"))
    return md5.hexdigest()


def make_exercise(solution_nb, path: str, repo: str = course.REPO):
    """The exercise notebook at ``path`` generated from a (stamped) solution notebook, with
    the metadata ``nbgrader generate_assignment`` gives its student version: every nbgrader
    cell undeletable, with its cell type and checksum; check cells also read-only."""
    nb = stamp(solution_nb, path, repo)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source, f"{path} cell {i}")
        meta = cell.metadata.get("nbgrader")
        if meta is None:
            continue
        meta["cell_type"] = cell.cell_type
        meta["checksum"] = nbgrader_checksum(cell)
        cell.metadata["deletable"] = False
        if meta.get("grade") and not meta.get("solution"):
            cell.metadata["editable"] = False
    return nb


RELEASED = Path(__file__).parent / "checks" / "released.json"


def released_check_cells(nb) -> list[dict]:
    """The check cells of a released notebook: ``grade_id``, ``source``, the ``checks`` it
    calls, each one's points (``check_points``) and the cell's ``points``, in notebook order."""
    from mlcourse.course.checks import REGISTRY

    cells = []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("grade") and not meta.get("solution"):
            calls = list(dict.fromkeys(CHECK_CALL.findall(cell.source)))
            cells.append(
                {
                    "grade_id": meta["grade_id"],
                    "source": cell.source,
                    "checks": calls,
                    "check_points": {name: REGISTRY[name]["points"] for name in calls},
                    "points": meta["points"],
                }
            )
    return cells


def _text(nb) -> str:
    nbformat.validate(nb)
    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


COURSE_PY = Path("mlcourse") / "course" / "__init__.py"
_REPO_LINE = re.compile(r'^REPO = "([^"\n]*)"$', re.MULTILINE)
_COLAB_LINK = re.compile(
    r"https://colab\.research\.google\.com/github/[^/\s)]+/[^/\s)]+/blob/[^/\s)]+/"
)


def repo_of(root: str | Path = ".") -> str:
    """The GitHub repository (OWNER/NAME) the course at ``root`` names: the ``REPO`` line of its
    ``mlcourse/course/__init__.py``, or this package's ``mlcourse.course.REPO`` when it has none.

    Raises:
        ValueError: ``mlcourse/course/__init__.py`` has no ``REPO = "OWNER/NAME"`` line.
    """
    path = Path(root) / COURSE_PY
    if not path.is_file():
        return course.REPO
    match = _REPO_LINE.search(path.read_text(encoding="utf-8"))
    if match is None:
        raise ValueError(f'{path} has no line REPO = "OWNER/NAME": put it back, or pass --repo')
    return course.check_repo(match.group(1))


def _repository_files(root: Path, repo: str) -> dict[Path, str]:
    """In the course repository itself: ``mlcourse/course/__init__.py`` naming ``repo`` and the
    README with its Colab links opening notebooks from ``repo``."""
    expected = {}
    path = root / COURSE_PY
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        expected[path] = _REPO_LINE.sub(f'REPO = "{repo}"', text, count=1)
        readme = root / "README.md"
        if readme.is_file():
            prefix = course.colab_url("", repo)
            expected[readme] = _COLAB_LINK.sub(prefix, readme.read_text(encoding="utf-8"))
    return expected


def plan(root: str | Path = ".", repo: str | None = None) -> dict[Path, str]:
    """What ``mlcourse release`` writes: every notebook's path and its expected text.

    Args:
        root: the course repository (or a folder with ``notebooks/``, ``solutions/``).
        repo: the GitHub repository (OWNER/NAME) to stamp into badges and setup cells;
            by default the one the course at ``root`` names (:func:`repo_of`).

    Raises:
        FileNotFoundError: ``root`` has none of ``notebooks/``, ``solutions/``.
        ValueError: ``repo`` is not written OWNER/NAME.
    """
    root = Path(root)
    if not (root / "solutions").is_dir() and not (root / "notebooks").is_dir():
        raise FileNotFoundError(
            f"{root.resolve()} has no solutions/ or notebooks/ folder: run `mlcourse release` "
            "from the course repository's root, or pass --root"
        )
    repo = course.check_repo(repo) if repo is not None else repo_of(root)
    expected: dict[Path, str] = _repository_files(root, repo)
    released: dict[str, list[dict]] = {}
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        rel = path.relative_to(root).as_posix()
        expected[path] = _text(stamp(nbformat.read(path, as_version=4), rel, repo))
    for path in sorted((root / "solutions").glob("*.ipynb")):
        rel = path.relative_to(root).as_posix()
        solution = add_nbgrader(stamp(nbformat.read(path, as_version=4), rel, repo), rel)
        expected[path] = _text(solution)
        exercise = root / "exercises" / path.name
        expected[exercise] = _text(make_exercise(solution, f"exercises/{path.name}", repo))
        released[path.stem] = released_check_cells(solution)
    if (
        released and (root / "mlcourse" / "course" / "checks").is_dir()
    ):  # the course repository itself
        text = json.dumps(released, indent=1, ensure_ascii=False, sort_keys=True) + "\n"
        expected[root / "mlcourse" / "course" / "checks" / RELEASED.name] = text
    return expected


def release(
    root: str | Path = ".", check: bool = False, repo: str | None = None
) -> tuple[list[Path], list[Path]]:
    """Writes (or, with ``check``, only compares) every file release manages.

    Args:
        root: the course repository.
        check: write nothing, only say what differs.
        repo: move the course to this GitHub repository (OWNER/NAME), see :func:`plan`.

    Returns:
        ``(changed, orphans)``: the files that were (or would be) rewritten, and exercise
        notebooks with no solution behind them (never deleted automatically).
    """
    root = Path(root)
    expected = plan(root, repo)
    changed = [
        path
        for path, text in expected.items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]
    orphans = [p for p in sorted((root / "exercises").glob("*.ipynb")) if p not in expected]
    if not check:
        for path in changed:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(expected[path], encoding="utf-8")
    return changed, orphans
