"""The check machinery (decorator, results, recording) and lesson 00's checks with their
catalogues of known-wrong answers."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mlcourse.course import checks
from mlcourse.course.checks import _core
from mlcourse.course.checks._core import REGISTRY, RESULTS_ENV, Fail, check, expect_tensor


@pytest.fixture
def registry():
    """Restores the global registry after a test defines throw-away checks."""
    saved = dict(REGISTRY)
    yield REGISTRY
    REGISTRY.clear()
    REGISTRY.update(saved)


def _make_checks():
    @check("99_test", points=2)
    def doubles(fn):
        if fn(3) != 6:
            raise Fail(f"fn(3) returned {fn(3)}, expected 6", "multiply by 2")
        return "fn(3) == 6"

    return doubles


def test_pass_is_a_truthy_result_with_points(registry):
    doubles = _make_checks()
    assert registry["doubles"] == {"lesson": "99_test", "points": 2, "forbid": ()}
    result = doubles(lambda x: 2 * x)
    assert result and result.passed and result.points == 2 and result.max_points == 2
    assert str(result) == "✅ PASS doubles: fn(3) == 6"
    assert "✅" in result._repr_html_()


def test_fail_shows_message_and_hint(registry):
    result = _make_checks()(lambda x: x + 2)
    assert not result and result.points == 0
    assert str(result) == "❌ FAIL doubles: fn(3) returned 5, expected 6\n   hint: multiply by 2"
    assert "<b>FAIL</b>" in result._repr_html_() and "<i>hint:</i> multiply by 2" in (
        result._repr_html_()
    )


def test_code_in_a_message_shows_without_backticks(registry):
    result = _core.CheckResult("c", "99_test", False, "use `a < b`", "call `f(x)`", 0.0, 1.0)
    assert str(result) == "❌ FAIL c: use 'a < b'\n   hint: call 'f(x)'"
    assert "<code>a &lt; b</code>" in result._repr_html_() and "`" not in result._repr_html_()


def test_stub_is_not_implemented_yet(registry):
    def stub(x):
        raise NotImplementedError()

    result = _make_checks()(stub)
    assert not result.passed and result.message == "not implemented yet"
    assert "NotImplementedError" in result.hint


def test_learner_exception_is_a_failure_not_a_crash(registry):
    result = _make_checks()(lambda x: x / 0)
    assert not result.passed
    assert result.message.startswith("your code raised ZeroDivisionError")
    assert "line" in result.hint


def test_html_escapes_the_learner_text(registry):
    result = _make_checks()(lambda x: "<b>")
    assert "&lt;b&gt;" in result._repr_html_()


def test_results_are_recorded_for_the_grader(registry, tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    monkeypatch.setenv(RESULTS_ENV, str(path))
    doubles = _make_checks()
    n = len(_core.RESULTS)
    doubles(lambda x: x)
    doubles(lambda x: 2 * x)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["passed"] for r in records] == [False, True]
    assert records[1] == {
        "check": "doubles",
        "lesson": "99_test",
        "passed": True,
        "message": "fn(3) == 6",
        "hint": None,
        "points": 2,
        "max_points": 2,
    }
    assert [r.passed for r in _core.RESULTS[n:]] == [False, True]


def test_nothing_is_written_outside_the_grader(registry, tmp_path, monkeypatch):
    monkeypatch.delenv(RESULTS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    _make_checks()(lambda x: x)
    assert list(tmp_path.iterdir()) == []


def test_under_nbgrader_a_failed_check_raises(registry, monkeypatch):
    """nbgrader scores a grade cell by its errors, and takes a returned value for partial
    credit: a passing check returns nothing (its result is displayed), a failing one raises."""
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    doubles = _make_checks()
    assert doubles(lambda x: 2 * x) is None and _core.RESULTS[-1].passed
    with pytest.raises(AssertionError, match="fn\\(3\\) returned 4"):
        doubles(lambda x: x + 1)


def test_under_nbgrader_the_learners_warnings_and_stderr_stay_out_of_the_cell(
    registry, monkeypatch, capsys
):
    import sys
    import warnings

    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    doubles = _make_checks()

    def noisy(x):
        warnings.warn("an old API", UserWarning, stacklevel=1)
        print("debugging", file=sys.stderr)
        return 2 * x

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning that escaped would raise here
        assert doubles(noisy) is None
    assert capsys.readouterr().err == ""
    result = _core.RESULTS[-1]
    assert result.passed and "UserWarning: an old API" in result.message
    monkeypatch.delenv("NBGRADER_EXECUTION")
    with pytest.warns(UserWarning, match="an old API"):  # elsewhere the learner sees it
        assert doubles(noisy).passed


def test_expect_tensor_never_broadcasts():
    expected = torch.zeros(3)
    with pytest.raises(Fail, match=r"shape \(3, 1\), expected \(3,\)"):
        expect_tensor(torch.zeros(3, 1), expected, "out")
    with pytest.raises(Fail, match="dtype torch.float64"):
        expect_tensor(torch.zeros(3, dtype=torch.float64), expected, "out")
    with pytest.raises(Fail, match="should be a tensor"):
        expect_tensor(np.zeros(3), expected, "out")
    with pytest.raises(Fail, match="by up to 0.5"):
        expect_tensor(torch.tensor([0.0, 0.5, 0.0]), expected, "out")
    expect_tensor(torch.full((3,), 1e-8), expected, "out")


def test_checks_never_import_the_solutions():
    reads = re.compile(r"^\s*(import|from)\s.*solutions|(open|read\w*|load)\([^)]*solutions", re.M)
    for path in Path(_core.__file__).parent.glob("*.py"):
        assert not reads.search(path.read_text()), f"{path} reads solutions/"


# Lesson 00 ---------------------------------------------------------------------------------


def split_reference(x, y, k):
    return x[:, :k], y[:, :k], x[:, k:], y[:, k:]


def split_by_loop(x, y, k):
    parts = [split_reference(x[i : i + 1], y[i : i + 1], k) for i in range(x.shape[0])]
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))


SPLIT_CORRECT = {
    "reference": split_reference,
    "torch.split": lambda x, y, k: (
        *(
            t
            for pair in zip(
                *(torch.split(u, [k, u.shape[1] - k], dim=1) for u in (x, y)), strict=True
            )
            for t in pair
        ),
    ),
    "narrow and clone, as a list": lambda x, y, k: [
        x.narrow(1, 0, k).clone(),
        y.narrow(1, 0, k).clone(),
        x.narrow(1, k, x.shape[1] - k).clone(),
        y.narrow(1, k, y.shape[1] - k).clone(),
    ],
    "loop over tasks": split_by_loop,
}


def _unpaired(x, y, k):
    x = x[:, torch.randperm(x.shape[1])]
    return split_reference(x, y, k)


def _mutates(x, y, k):
    x -= x.mean()
    return split_reference(x, y, k)


SPLIT_WRONG = {  # answer -> a fragment of the message it must get
    "split along the task axis": (lambda x, y, k: (x[:k], y[:k], x[k:], y[k:]), "tasks along"),
    "support one point too long": (
        lambda x, y, k: split_reference(x, y, k + 1),
        "points per task",
    ),
    "query starts one point early": (
        lambda x, y, k: (x[:, :k], y[:, :k], x[:, k - 1 :], y[:, k - 1 :]),
        "points per task",
    ),
    "wrong order of outputs": (
        lambda x, y, k: (x[:, :k], x[:, k:], y[:, :k], y[:, k:]),
        "output 2 is x_query",
    ),
    "support and query swapped": (
        lambda x, y, k: split_reference(x, y, k)[2:] + split_reference(x, y, k)[:2],
        "output 1 is x_query",
    ),
    "last points as support": (
        lambda x, y, k: (x[:, -k:], y[:, -k:], x[:, :-k], y[:, :-k]),
        "output 1 is x_query",
    ),
    "query includes the support": (
        lambda x, y, k: (x[:, :k], y[:, :k], x, y),
        "points per task",
    ),
    "skips the first point": (
        lambda x, y, k: (x[:, 1 : k + 1], y[:, 1 : k + 1], x[:, k + 1 :], y[:, k + 1 :]),
        "differs",
    ),
    "shifted by one": (
        lambda x, y, k: (x[:, 1 : k + 1], y[:, 1 : k + 1], x[:, k:], y[:, k:]),
        "differs",
    ),
    "x shuffled, y not": (_unpaired, "differs"),
    "changes x in place": (_mutates, "in place"),
    "casts to float32": (
        lambda x, y, k: tuple(t.float() for t in split_reference(x, y, k)),
        "dtype",
    ),
    "squeezes the last dimension": (
        lambda x, y, k: tuple(t.squeeze(-1) for t in split_reference(x, y, k)),
        "shape",
    ),
    "returns two pairs": (
        lambda x, y, k: ((x[:, :k], y[:, :k]), (x[:, k:], y[:, k:])),
        "tuple of 4",
    ),
    "hard-coded k_support = 5": (lambda x, y, k: split_reference(x, y, 5), "points per task"),
    "query y is the support y": (
        lambda x, y, k: (x[:, :k], y[:, :k], x[:, k:], y[:, :k]),
        "output 4 is y_support",
    ),
    "returns NumPy arrays": (
        lambda x, y, k: tuple(t.numpy() for t in split_reference(x, y, k)),
        "should be a tensor",
    ),
    "indexes a dimension that is not there": (
        lambda x, y, k: split_reference(x, y, x.shape[3]),
        "your code raised IndexError",
    ),
    # right only when the query set is as large as the support set (k = 2 * k_support)
    "query as the last k_support points": (
        lambda x, y, k: (x[:, :k], y[:, :k], x[:, -k:], y[:, -k:]),
        "points per task",
    ),
    "halves with chunk": (
        lambda x, y, k: (
            *x.chunk(2, 1)[:1],
            *y.chunk(2, 1)[:1],
            x.chunk(2, 1)[1],
            y.chunk(2, 1)[1],
        ),
        "points per task",
    ),
}


@pytest.mark.parametrize("name", SPLIT_CORRECT)
def test_support_query_split_accepts_correct_answers(name):
    result = checks.support_query_split(SPLIT_CORRECT[name])
    assert result.passed, str(result)


@pytest.mark.parametrize("name", SPLIT_WRONG)
def test_support_query_split_rejects_known_wrong_answers(name):
    answer, fragment = SPLIT_WRONG[name]
    result = checks.support_query_split(answer)
    assert not result.passed and result.hint, str(result)
    assert fragment in result.message, str(result)


def _stub(*args):
    # YOUR CODE HERE
    raise NotImplementedError()


@pytest.mark.parametrize("name", ["support_query_split", "per_task_mse"])
def test_lesson00_stub_is_not_implemented_yet(name):
    result = getattr(checks, name)(_stub)
    assert not result.passed and result.message == "not implemented yet"


def mse_reference(y_pred, y_true):
    return ((y_pred - y_true) ** 2).flatten(1).mean(dim=1)


MSE_CORRECT = {
    "reference": mse_reference,
    "mse_loss per element": lambda p, t: (
        torch.nn.functional.mse_loss(p, t, reduction="none").reshape(p.shape[0], -1).mean(-1)
    ),
    "mean over a tuple of dims": lambda p, t: (p - t).pow(2).mean(dim=tuple(range(1, p.dim()))),
}

MSE_WRONG = {
    "mean over everything": (lambda p, t: ((p - t) ** 2).mean(), "shape ()"),
    "mean over dimension 1 only": (lambda p, t: ((p - t) ** 2).mean(dim=1), "shape (8, 1)"),
    "mean over the tasks": (lambda p, t: ((p - t) ** 2).mean(dim=0), "shape (10, 1)"),
    "keepdim": (
        lambda p, t: ((p - t) ** 2).mean(dim=(1, 2), keepdim=True),
        "shape (8, 1, 1)",
    ),
    "hard-coded dims (1, 2)": (
        lambda p, t: ((p - t) ** 2).mean(dim=(1, 2)),
        "your code raised IndexError",
    ),
    "sum instead of mean": (lambda p, t: ((p - t) ** 2).flatten(1).sum(dim=1), "differs"),
    "root mean square": (lambda p, t: mse_reference(p, t).sqrt(), "differs"),
    "absolute error": (lambda p, t: (p - t).abs().flatten(1).mean(dim=1), "differs"),
    "no square": (lambda p, t: (p - t).flatten(1).mean(dim=1), "differs"),
    "detached": (lambda p, t: mse_reference(p, t).detach(), "autograd"),
    "through NumPy": (
        lambda p, t: torch.from_numpy(mse_reference(p, t).detach().numpy()),
        "autograd",
    ),
    "as a list of floats": (lambda p, t: mse_reference(p, t).tolist(), "should be a tensor"),
    "casts to float32": (lambda p, t: mse_reference(p.float(), t.float()), "dtype"),
    "in place on y_pred": (
        lambda p, t: mse_reference(p.detach().sub_(t), torch.zeros_like(t)),
        "in place",
    ),
    # right whenever a point has one output (the trailing dimension is 1 or absent)
    "mean over dimension 1, then squeeze": (
        lambda p, t: ((p - t) ** 2).mean(dim=1).squeeze(-1),
        "shape (4, 3)",
    ),
    "sum over a point's outputs, mean over points": (
        lambda p, t: ((p - t) ** 2).flatten(1).sum(dim=1) / p.shape[1],
        "differs",
    ),
}


@pytest.mark.parametrize("name", MSE_CORRECT)
def test_per_task_mse_accepts_correct_answers(name):
    result = checks.per_task_mse(MSE_CORRECT[name])
    assert result.passed, str(result)


@pytest.mark.parametrize("name", MSE_WRONG)
def test_per_task_mse_rejects_known_wrong_answers(name):
    answer, fragment = MSE_WRONG[name]
    result = checks.per_task_mse(answer)
    assert not result.passed and result.hint, str(result)
    assert fragment in result.message, str(result)


def test_an_answer_that_calls_the_packages_own_implementation_fails(registry):
    """The check's reference may use the package; the learner's answer may not, however it
    reaches the function (module attribute, imported name, through a library)."""
    import functools

    from mlcourse import options
    from mlcourse.experiments.sine import SineConfig
    from mlcourse.options import parse_widths

    @check("99_test", forbid=("mlcourse.options.parse_widths",))
    def widths(fn):
        expected = SineConfig(hidden="3,4").hidden_sizes  # calls parse_widths inside mlcourse
        if fn("3,4") != expected:
            raise Fail(f"fn('3,4') returned {fn('3,4')}, expected {expected}")
        return "parses widths"

    def own(text):
        return tuple(int(w) for w in text.split(","))

    assert widths(own).passed
    for answer in (
        lambda text: parse_widths(text),
        lambda text: options.parse_widths(text),
        functools.partial(options.parse_widths, name="hidden"),
    ):
        result = widths(answer)
        assert not result.passed, result
        assert "calls mlcourse.options.parse_widths, the package's own implementation" in (
            result.message
        )
    assert options.parse_widths is parse_widths  # everything put back
    assert parse_widths("1,2") == (1, 2)


def test_two_checks_of_the_same_name_are_refused():
    """A notebook calls a check by name: a second lesson's check of the same name would
    silently replace the first in the registry."""
    before = dict(REGISTRY["inner_update"])
    with pytest.raises(ValueError, match="two checks are named 'inner_update'.*02_maml.*07_"):

        @check("07_maml_rl")
        def inner_update(fn):
            return "never"

    assert REGISTRY["inner_update"] == before
