"""Every lesson states its runtime in the form `python -m mlcourse.course timings` re-measures."""

from pathlib import Path

import pytest

from mlcourse.course.timings import stated_runtimes

LESSONS = sorted(Path(__file__).parents[1].glob("notebooks/[0-9]*.ipynb"))


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.name)
def test_every_lesson_states_its_full_and_fast_runtime(lesson):
    stated = stated_runtimes(lesson)
    assert 0 < stated["fast"] <= stated["full"] < 30 * 60, stated


def test_a_runtime_line_without_the_fast_figure_is_refused(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("**Runtime**: under a minute on a CPU")]
    )
    nbformat.write(nb, tmp_path / "x.ipynb")
    with pytest.raises(ValueError, match="must read"):
        stated_runtimes(tmp_path / "x.ipynb")
