"""`mlcourse release`: solution regions stripped, outputs cleared, setup cell and Colab badge
stamped into every notebook, `--check` catching anything stale."""

from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from mlcourse import course
from mlcourse.course import release
from mlcourse.course.cli import main

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for d in release.FOLDERS for p in (ROOT / d).glob("*.ipynb"))


def test_strip_solutions_keeps_the_rest_and_the_indent():
    source = "\n".join(
        [
            "def f(x):",
            '    """Doc."""',
            "    ### BEGIN SOLUTION",
            "    y = x + 1",
            "    return y",
            "    ### END SOLUTION",
            "",
            "### BEGIN SOLUTION",
            "z = f(1)",
            "### END SOLUTION",
            "print(z)",
        ]
    )
    assert release.strip_solutions(source).split("\n") == [
        "def f(x):",
        '    """Doc."""',
        "    # YOUR CODE HERE",
        "    raise NotImplementedError()",
        "",
        "# YOUR CODE HERE",
        "raise NotImplementedError()",
        "print(z)",
    ]


@pytest.mark.parametrize(
    "source, error",
    [
        ("### BEGIN SOLUTION\nx = 1", "never closed"),
        ("x = 1\n### END SOLUTION", "without a"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "inside another"),
    ],
)
def test_strip_solutions_rejects_broken_markers(source, error):
    with pytest.raises(ValueError, match=error):
        release.strip_solutions(source, "solutions/x.ipynb cell 3")


def _solution_notebook():
    nb = new_notebook()
    solution = new_code_cell(
        "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
        execution_count=3,
        outputs=[new_output("stream", name="stdout", text="secret\n")],
    )
    nb.cells = [
        new_markdown_cell("# 00 · A test lesson"),
        new_markdown_cell("Some text."),
        new_code_cell("from mlcourse import checks as check"),
        solution,
        new_code_cell("check.support_query_split(double)"),
    ]
    return nb


@pytest.fixture
def course_dir(tmp_path):
    for folder in release.FOLDERS:
        (tmp_path / folder).mkdir()
    nbformat.write(_solution_notebook(), tmp_path / "solutions" / "00_test.ipynb")
    lesson = new_notebook(cells=[new_markdown_cell("# 00 · Lesson"), new_code_cell("1 + 1")])
    nbformat.write(lesson, tmp_path / "notebooks" / "00_test.ipynb")
    return tmp_path


def test_release_writes_the_exercise(course_dir):
    changed, orphans = release.release(course_dir)
    assert orphans == [] and len(changed) == 3
    exercise = nbformat.read(course_dir / "exercises" / "00_test.ipynb", as_version=4)
    text = (course_dir / "exercises" / "00_test.ipynb").read_text()
    assert "2 * x" not in text and "secret" not in text and "BEGIN SOLUTION" not in text
    cell = _cell(exercise, "def double")
    assert cell.source == "def double(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    assert all(c.outputs == [] and c.execution_count is None for c in _code(exercise))
    assert cell.metadata.nbgrader == {
        "grade": False,
        "grade_id": "double",
        "locked": False,
        "schema_version": 3,
        "solution": True,
        "cell_type": "code",
        "checksum": release.nbgrader_checksum(cell),
    }
    assert cell.metadata.deletable is False and "editable" not in cell.metadata
    check_cell = _cell(exercise, "check.support")
    grade = check_cell.metadata.nbgrader
    assert grade["grade"] and grade["locked"] and grade["points"] == 1
    assert check_cell.metadata.deletable is False and check_cell.metadata.editable is False
    assert grade["grade_id"] == "check_support_query_split"
    solution = nbformat.read(course_dir / "solutions" / "00_test.ipynb", as_version=4)
    assert "return 2 * x" in _cell(solution, "def double").source  # the solution keeps its code
    assert [c.id for c in solution.cells] == [c.id for c in exercise.cells]
    assert release.release(course_dir) == ([], [])  # a second run changes nothing


def test_release_stamps_badge_and_setup_cells(course_dir):
    release.release(course_dir)
    for rel in ("notebooks/00_test.ipynb", "solutions/00_test.ipynb", "exercises/00_test.ipynb"):
        nb = nbformat.read(course_dir / rel, as_version=4)
        assert nb.cells[0].source.startswith("# 00 ·"), "the author's title stays first"
        assert nb.cells[1].source == release.badge_source(rel)
        opens = rel.replace("solutions/", "exercises/")  # no badge leads to a solution
        assert course.colab_url(opens) in nb.cells[1].source
        assert nb.cells[1].metadata.tags == ["colab-badge"]
        setup = next(c for c in nb.cells if c.cell_type == "code")
        assert setup.source == release.setup_source() and setup.metadata.tags == ["setup"]


def test_check_finds_stale_files(course_dir, capsys):
    assert main(["release", "--root", str(course_dir)]) == 0
    assert main(["release", "--check", "--root", str(course_dir)]) == 0
    # an edited solution makes the exercise stale
    path = course_dir / "solutions" / "00_test.ipynb"
    nb = nbformat.read(path, as_version=4)
    cell = _cell(nb, "def double")
    cell.source = cell.source.replace("double(x)", "double(x, factor=2)")
    nbformat.write(nb, path)
    capsys.readouterr()
    assert main(["release", "--check", "--root", str(course_dir)]) == 1
    err = capsys.readouterr().err
    assert "exercises/00_test.ipynb is out of date" in err
    assert "solutions/00_test.ipynb is out of date" not in err
    main(["release", "--root", str(course_dir)])
    assert main(["release", "--check", "--root", str(course_dir)]) == 0


@pytest.mark.parametrize(
    "edit",
    [
        lambda nb: setattr(nb.cells[1], "source", "[![Open In Colab](x.svg)](elsewhere)"),
        lambda nb: setattr(nb.cells[2], "source", "%pip install mlcourse torch"),
        lambda nb: setattr(nb.cells[3], "outputs", [new_output("stream", text="hi\n")]),
        lambda nb: setattr(nb.cells[3], "execution_count", 7),
    ],
    ids=["badge", "setup", "outputs", "execution count"],
)
def test_check_finds_a_stale_lesson(course_dir, edit):
    release.release(course_dir)
    path = course_dir / "notebooks" / "00_test.ipynb"
    nb = nbformat.read(path, as_version=4)
    edit(nb)
    nbformat.write(nb, path)
    assert release.release(course_dir, check=True)[0] == [path]
    assert path.read_text() != release.plan(course_dir)[path], "--check writes nothing"


def test_orphan_exercises_fail_the_check(course_dir):
    release.release(course_dir)
    nbformat.write(new_notebook(), course_dir / "exercises" / "01_gone.ipynb")
    assert main(["release", "--check", "--root", str(course_dir)]) == 1


def test_unknown_check_is_an_error(course_dir):
    nb = _solution_notebook()
    nb.cells[4].source = "check.no_such_check(double)"
    nbformat.write(nb, course_dir / "solutions" / "00_test.ipynb")
    with pytest.raises(ValueError, match="no_such_check"):
        release.release(course_dir)


def test_release_outside_the_course_says_where_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="--root"):
        release.release(tmp_path)


def _as_course_repository(course_dir):
    """Gives the test course the two files that name its repository in the real one."""
    (course_dir / "mlcourse" / "course").mkdir(parents=True)
    (course_dir / "mlcourse" / "course" / "__init__.py").write_text(
        f'"""Constants."""\n\nREPO = "{course.REPO}"\nBRANCH = "main"\n'
    )
    link = course.colab_url("notebooks/00_test.ipynb")
    (course_dir / "README.md").write_text(f"# Course\n\n| [00]({link}) | a lesson |\n")


def test_release_repo_moves_every_badge_and_setup_cell_to_a_fork(course_dir, capsys):
    _as_course_repository(course_dir)
    assert main(["release", "--root", str(course_dir)]) == 0
    assert main(["release", "--root", str(course_dir), "--repo", "my-university/ml-course"]) == 0
    assert "now installs from and opens in my-university/ml-course" in capsys.readouterr().out
    for rel in ("notebooks/00_test.ipynb", "solutions/00_test.ipynb", "exercises/00_test.ipynb"):
        nb = nbformat.read(course_dir / rel, as_version=4)
        opens = rel.replace("solutions/", "exercises/")
        assert nb.cells[1].source == release.badge_source(rel, "my-university/ml-course")
        assert f"({course.colab_url(opens, 'my-university/ml-course')})" in nb.cells[1].source
        setup = next(c for c in nb.cells if c.cell_type == "code").source
        assert setup == release.setup_source("my-university/ml-course")
        assert 'git+https://github.com/my-university/ml-course.git@main"' in setup
        assert course.REPO not in (course_dir / rel).read_text()
    course_py = (course_dir / "mlcourse" / "course" / "__init__.py").read_text()
    assert 'REPO = "my-university/ml-course"\n' in course_py and course.REPO not in course_py
    readme = (course_dir / "README.md").read_text()
    assert course.colab_url("notebooks/00_test.ipynb", "my-university/ml-course") in readme
    assert course.REPO not in readme
    # the fork sticks: a plain release (after an author's edit, in the fork's CI) keeps it
    assert release.repo_of(course_dir) == "my-university/ml-course"
    assert main(["release", "--check", "--root", str(course_dir)]) == 0
    assert release.release(course_dir) == ([], [])


def test_release_keeps_the_readme_colab_links_on_the_course_repository(course_dir):
    _as_course_repository(course_dir)
    release.release(course_dir)
    readme = course_dir / "README.md"
    stale = course.colab_url("notebooks/00_test.ipynb", "someone/else")
    readme.write_text(readme.read_text() + f"[again]({stale})\n")
    assert release.release(course_dir, check=True)[0] == [readme]
    release.release(course_dir)
    assert "someone/else" not in readme.read_text()


@pytest.mark.parametrize(
    "repo, hint",
    [
        ("https://github.com/me/fork", "without https://github.com/"),
        ("me/fork.git", "without https://github.com/ or .git"),
        ("fork", "OWNER is letters"),
        ("me/fork/extra", "OWNER is letters"),
        ("-me/fork", "OWNER is letters"),
        ("me/", "OWNER is letters"),
        ("me/..", "OWNER is letters"),
    ],
)
def test_release_repo_refuses_a_malformed_address_and_writes_nothing(
    course_dir, capsys, repo, hint
):
    before = {p: p.read_bytes() for p in course_dir.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_:
        main(["release", "--root", str(course_dir), f"--repo={repo}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "OWNER/NAME, e.g. my-university/mlcourse" in err and hint in err
    assert "--help" in err and len(err.strip().splitlines()) == 2
    assert {p: p.read_bytes() for p in course_dir.rglob("*") if p.is_file()} == before
    with pytest.raises(ValueError, match=hint):
        release.plan(course_dir, repo)


def test_a_course_py_without_its_repo_line_is_named_in_the_error(course_dir):
    _as_course_repository(course_dir)
    (course_dir / "mlcourse" / "course" / "__init__.py").write_text('"""Constants."""\n')
    with pytest.raises(ValueError, match=r'no line REPO = "OWNER/NAME"'):
        release.release(course_dir)


def _run_setup_cell(find_spec_result, monkeypatch):
    """Runs the setup cell as IPython would, recording line magics instead of running them."""
    import importlib.util

    calls = []

    class FakeShell:
        def run_line_magic(self, name, line, _stack_depth=1):
            calls.append((name, line))

    code = TransformerManager().transform_cell(release.setup_source())
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: find_spec_result)
    exec(compile(code, "<setup cell>", "exec"), {"get_ipython": FakeShell})
    return calls


def test_setup_cell_imports_without_installing_when_present(monkeypatch, capsys):
    assert _run_setup_cell(object(), monkeypatch) == []
    assert "device: " in capsys.readouterr().out


def test_setup_cell_installs_mlcourse_but_not_torch_when_missing(monkeypatch, capsys):
    assert _run_setup_cell(None, monkeypatch) == [("pip", f'install -q "{course.INSTALL_SPEC}"')]
    assert course.REPO_URL in course.INSTALL_SPEC and "torch" not in course.INSTALL_SPEC


def _cell(nb, text):
    return next(c for c in nb.cells if text in c.source)


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_notebook_opens_with_the_badge_and_the_setup_cell(path):
    rel = path.relative_to(ROOT).as_posix()
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert nb.cells[1].source == release.badge_source(rel)
    assert f"({course.colab_url(rel.replace('solutions/', 'exercises/'))})" in nb.cells[1].source
    assert "solutions/" not in nb.cells[1].source
    assert _code(nb)[0].source == release.setup_source(), "the first code cell is the setup"
    assert sum(c.source == release.setup_source() for c in nb.cells) == 1


def test_every_solution_has_its_exercise():
    solutions = {p.name for p in (ROOT / "solutions").glob("*.ipynb")}
    exercises = {p.name for p in (ROOT / "exercises").glob("*.ipynb")}
    assert solutions == exercises
