"""The machinery every exercise check uses.

A check is a function decorated with :func:`check`. It receives the learner's function, raises
:class:`Fail` with a specific message and hint when something is wrong, and returns a sentence
saying what it verified. The decorator turns that into a :class:`CheckResult` shown as ✅ or ❌,
records it for the grader, and never lets the learner's exception crash the kernel.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import json
import os
import re
import sys
import sysconfig
import traceback
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlcourse.algorithms.maml import adapt_reference
from mlcourse.course.check_protocol import CHECK_MIME  # how a displayed result reaches the grader

RESULTS_ENV = "MLCOURSE_RESULTS"  # tests may point this at a JSON-lines file of results
NBGRADER_ENV = "NBGRADER_EXECUTION"  # set by nbgrader to "autograde" or "validate"
REGISTRY: dict[str, dict] = {}  # check name -> {"lesson": ..., "points": ...}
RESULTS: list[CheckResult] = []  # this kernel's results, in order
GRADING = False  # set by `mlcourse grade` in the checks it imports afresh before a check cell


class Fail(AssertionError):
    """Raised by a check body: what is wrong, and a hint towards the fix."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass
class CheckResult:
    """The outcome of one check, as the learner sees it and the grader records it."""

    check: str
    lesson: str
    passed: bool
    message: str
    hint: str | None
    points: float
    max_points: float

    def __str__(self) -> str:
        verdict = "✅ PASS" if self.passed else "❌ FAIL"
        text = f"{verdict} {self.check}: {_plain(self.message)}"
        return text + (f"\n   hint: {_plain(self.hint)}" if self.hint else "")

    def _repr_html_(self) -> str:
        color = "#1a7f37" if self.passed else "#cf222e"
        verdict = "✅ <b>PASS</b>" if self.passed else "❌ <b>FAIL</b>"
        hint = f"<br><i>hint:</i> {_code_html(self.hint)}" if self.hint else ""
        return (
            f'<div style="border-left:4px solid {color};padding:4px 8px">'
            f"{verdict} <b>{_escape(self.check)}</b>: {_code_html(self.message)}{hint}</div>"
        )

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """Shown as HTML and text; the grader reads the JSON (``mlcourse grade`` counts it only
        when its released check cell displayed it)."""
        return {
            "text/plain": str(self),
            "text/html": self._repr_html_(),
            CHECK_MIME: asdict(self),
        }

    def __bool__(self) -> bool:
        return self.passed


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plain(text: str) -> str:
    """A message for plain text: ``code`` spans in quotes instead of backticks."""
    return re.sub(r"`([^`]+)`", r"'\1'", text)


def _code_html(text: str) -> str:
    """A message as HTML: ``code`` spans as <code>, everything escaped."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _escape(text))


def record(result: CheckResult) -> None:
    """Keeps the result in this kernel and, under the grader, appends it to its results file.

    ``mlcourse grade`` sets ``MLCOURSE_RESULTS`` to a fresh file; each line is one result as
    JSON (the fields of :class:`CheckResult`).
    """
    RESULTS.append(result)
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(asdict(result)) + "\n")


def check(lesson: str, points: float = 1.0, forbid: tuple[str, ...] = ()) -> Callable:
    """Declares an exercise check belonging to ``lesson`` (e.g. ``"02_maml"``) worth ``points``.

    The decorated body raises :class:`Fail` or returns what it verified. Calling the check
    returns the :class:`CheckResult` and never raises: the learner's exceptions become a ❌
    result, and ``NotImplementedError`` becomes "not implemented yet". Under nbgrader
    (``NBGRADER_EXECUTION`` set) the check displays the result and returns None, keeps the
    learner's warnings and stderr out of the cell (nbgrader gives a cell that writes to stderr
    no points) and names them in the message, and raises ``AssertionError`` when it fails, which
    is how nbgrader scores a grade cell.

    ``forbid`` names the package's own implementations of what the exercise asks for (e.g.
    ``("mlcourse.algorithms.maml.adapt",)``): an answer that calls one of them fails, with a message
    that says so (see :func:`_forbidden`). The check's own reference may still call them.
    """

    def decorate(body: Callable[..., str]) -> Callable[..., CheckResult]:
        name = body.__name__
        other = REGISTRY.get(name)
        if other is not None and other["lesson"] != lesson:
            raise ValueError(
                f"two checks are named {name!r} (lessons {other['lesson']} and {lesson}): a "
                "notebook calls a check by name, so rename one of them"
            )
        REGISTRY[name] = {"lesson": lesson, "points": points, "forbid": tuple(forbid)}

        @functools.wraps(body)
        def run(*args, **kwargs) -> CheckResult | None:
            hint = None
            nbgrader = os.environ.get(NBGRADER_ENV) in ("autograde", "validate")
            with _quiet(nbgrader) as noise, _forbidden(forbid, (*args, *kwargs.values())) as used:
                try:
                    message = body(*args, **kwargs)
                    passed = True
                except NotImplementedError:
                    passed, message = False, "not implemented yet"
                    hint = (
                        "replace `raise NotImplementedError()` with your code, then run this again"
                    )
                except Fail as fail:
                    passed, message, hint = False, fail.message, fail.hint
                except Exception as err:  # the learner's code raised: report, do not crash
                    passed = False
                    message = f"your code raised {type(err).__name__}: {err}"
                    hint = "the last lines of the traceback: " + _where(err)
            if used:
                passed = False
                message = (
                    f"your code calls {used[0]}, the package's own implementation of what this "
                    "exercise asks you to write"
                )
                hint = "write it yourself from the lesson's equations, then run this check again"
            if noise:
                message += f" (while it ran, your code wrote to stderr: {noise[0][:200]})"
            result = CheckResult(
                name, lesson, passed, message, hint, points if passed else 0.0, points
            )
            record(result)
            if not nbgrader:
                return result
            # nbgrader scores a grade cell by its errors and reads a returned value as partial
            # credit: show the result, return nothing, and fail the cell when the check fails
            from IPython.display import display

            display(result)
            if not passed:
                raise AssertionError(str(result))
            return None

        return run

    return decorate


class _UsedReference(Exception):
    """Raised into the learner's code when it calls a forbidden package function."""


_PACKAGE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # mlcourse/
_LIBRARIES = tuple(
    os.path.realpath(p)
    for p in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]}
    | {sysconfig.get_paths()["platlib"]}
)


def _called_by_learner(frame) -> bool:
    """Whether the nearest caller that is neither a library (torch, functools, ...) nor the
    course's package is the learner's code (a notebook cell, a test's wrong answer)."""
    while frame is not None:
        path = os.path.realpath(frame.f_code.co_filename)
        if path.startswith(_PACKAGE + os.sep):
            return False
        if not path.startswith(_LIBRARIES):
            return True
        frame = frame.f_back
    return False


def _resolve(path: str):
    """The object at a dotted path: a module's function, or a class's method
    (``mlcourse.rl.bandits.BayesOptimal.__init__``)."""
    import importlib

    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            target = getattr(target, name)
        return target
    raise ImportError(f"cannot find {path}")


_GUARD = """
def guard(*args, **kwargs):
    real, path, used, by_learner, caller, stop = {key}
    if by_learner(caller(1)):
        used.append(path)
        raise stop(path + " may not be used in this exercise")
    return real(*args, **kwargs)
"""


def _is_one_of_any(answers: tuple, function) -> bool:
    return any(_is_one_of(answer, [function]) for answer in answers)


def _is_one_of(answer, functions: list) -> bool:
    """Whether ``answer`` is one of ``functions`` itself (or a partial, method or decorated
    version of one)."""
    for _ in range(10):  # partials of partials, bound methods
        if any(answer is f for f in functions):
            return True
        inner = next(
            (getattr(answer, a) for a in ("func", "__func__", "__wrapped__") if hasattr(answer, a)),
            None,
        )
        if inner is None:
            return False
        answer = inner
    return False


def _same_function(a, b) -> bool:
    """The same source function (e.g. the one a notebook imported, and the same one imported
    again after the grader reloaded the package): same file, name and first line."""
    ca, cb = a.__code__, b.__code__
    return (ca.co_filename, ca.co_name, ca.co_firstlineno) == (
        cb.co_filename,
        cb.co_name,
        cb.co_firstlineno,
    )


def _install_guard(function, path: str, used: list) -> tuple:
    """Swaps ``function``'s code for the guard; returns what restores it."""
    import types

    if function.__closure__:
        raise TypeError(f"{path} has a closure: it cannot be guarded")
    real = types.FunctionType(
        function.__code__,
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    real.__kwdefaults__ = function.__kwdefaults__
    key = f"__mlcourse_forbidden_{id(function)}__"
    function.__globals__[key] = (
        real,
        path,
        used,
        _called_by_learner,
        sys._getframe,
        _UsedReference,
    )
    scope: dict = {}
    exec(compile(_GUARD.format(key=key), f"<guard of {path}>", "exec"), scope)
    saved = (function, function.__code__, function.__defaults__, function.__kwdefaults__, key)
    function.__code__ = scope["guard"].__code__
    function.__defaults__ = function.__kwdefaults__ = None
    return saved


@contextlib.contextmanager
def _forbidden(paths: tuple[str, ...], answers: tuple = ()):
    """While active, each package function named in ``paths``
    (``"mlcourse.algorithms.maml.adapt"``), and every other function object made from the same
    source (a notebook may hold one from before the grader re-imported the package), runs a guard in
    place of its code. Called from the learner's code (however it got there: the module's attribute,
    a name imported into a notebook, a ``functools.partial``, a library such as ``torch.func``), the
    guard notes the call in the yielded list and stops it; called from the package (the check's own
    reference), it runs the real function. An answer that *is* one of them is noted too."""
    import gc
    import types

    used: list[str] = []
    swapped = []
    try:
        functions = []
        if paths and GRADING:  # the package was imported afresh: older copies may be about
            functions = [f for f in gc.get_objects() if type(f) is types.FunctionType]
        for path in paths:
            original = inspect.unwrap(_resolve(path))
            copies = [original] + [
                f for f in functions if f is not original and _same_function(f, original)
            ]
            for function in copies:
                swapped.append(_install_guard(function, path, used))
                if _is_one_of_any(answers, function) and path not in used:
                    used.append(path)
        yield used
    finally:
        for function, code, defaults, kwdefaults, key in reversed(swapped):
            function.__code__, function.__defaults__ = code, defaults
            function.__kwdefaults__ = kwdefaults
            function.__globals__.pop(key, None)


@contextlib.contextmanager
def _quiet(active: bool):
    """Under nbgrader, which gives a grade cell no points when it writes to stderr, keeps the
    warnings and stderr output of the learner's code out of the cell and yields them (as a
    list of strings, filled on exit) for the result's message; elsewhere it does nothing."""
    noise: list[str] = []
    if not active:
        yield noise
        return
    buffer = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(buffer):
        warnings.simplefilter("always")
        try:
            yield noise
        finally:
            noise += [f"{w.category.__name__}: {w.message}" for w in caught]
            if buffer.getvalue().strip():
                noise.append(buffer.getvalue().strip())


def probe(params: dict) -> torch.Tensor:
    """A fixed scalar function of a parameter dictionary (Σ over names, sorted, of
    ``(i + 1) · tensor.sum()``): differentiating it tells whether, and how, a set of updated
    parameters depends on what it was computed from."""
    return sum((params[n] * (i + 1)).sum() for i, n in enumerate(sorted(params)))


def _where(err: Exception) -> str:
    frames = traceback.extract_tb(err.__traceback__)[-2:]
    return " <- ".join(f"{f.name} line {f.lineno}" for f in reversed(frames))


def expect_tensor(
    actual, expected: torch.Tensor, what: str, *, atol: float = 1e-6, rtol: float = 1e-5
) -> None:
    """Compares a learner's tensor with the reference: type, shape and dtype exactly (no
    broadcasting), then values, reporting the largest difference."""
    if not isinstance(actual, torch.Tensor):
        raise Fail(
            f"{what} should be a tensor, got {type(actual).__name__}",
            "return a torch tensor: no .item(), .tolist() or NumPy conversion",
        )
    if actual.shape != expected.shape:
        raise Fail(
            f"{what} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}",
            "check which dimension you reduced or indexed over",
        )
    if actual.dtype != expected.dtype:
        raise Fail(
            f"{what} has dtype {actual.dtype}, expected {expected.dtype}",
            "keep the dtype of the inputs: no .float(), .double() or torch.tensor(...) copies",
        )
    diff = (actual.detach() - expected.detach()).abs()
    worst = diff.max().item() if diff.numel() else 0.0
    if not torch.allclose(actual.detach(), expected.detach(), atol=atol, rtol=rtol):
        raise Fail(f"{what} differs from the reference by up to {worst:.3g}")


def step_scale(new, old, direction, *, atol: float = 1e-9) -> float | None:
    """The number ``c`` with ``new = old + c · direction``, when one ``c`` fits every entry.

    ``new``, ``old`` and ``direction`` are tensors or dicts of tensors with the same names. The
    checks use it to tell "a step of the wrong size" (an argument ignored, a hard-coded step
    size) from other mistakes. Returns ``None`` when no single number fits, or when any value is
    not a tensor of the right shape.
    """
    if isinstance(direction, torch.Tensor):
        new, old, direction = {"": new}, {"": old}, {"": direction}
    try:
        pairs = [
            ((new[n].detach() - old[n].detach()).double(), direction[n].detach().double())
            for n in direction
        ]
    except (KeyError, TypeError, AttributeError, RuntimeError):
        return None
    if any(delta.shape != d.shape for delta, d in pairs):
        return None
    norm = sum((d * d).sum() for _, d in pairs)
    if not norm > 0:
        return None
    c = (sum((delta * d).sum() for delta, d in pairs) / norm).item()
    if all(torch.allclose(delta, c * d, atol=atol, rtol=1e-7) for delta, d in pairs):
        return c
    return None


# ---------------------------------------------------------------------------------------------
# What the MAML checks of lessons 02 and 04 share: comparisons at float64 tolerances, the
# meta-gradient's order, and the usual wrong inner steps.

ATOL, RTOL = 1e-8, 1e-6


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def expect_model_unchanged(model: nn.Module, before: Mapping[str, Tensor], who: str) -> None:
    for name, p in model.named_parameters():
        if not torch.equal(p.detach(), before[name]):
            raise Fail(
                f"in-place update changed the model's parameters ('{name}' moved while {who} ran)",
                "build new tensors (`p - inner_lr * g`) in a new dict instead of `p -= ...`, "
                "`p.data` or `.copy_()`: the model must keep θ for the next task",
            )


def same_tensor(actual, expected: Tensor) -> bool:
    return (
        isinstance(actual, Tensor)
        and actual.shape == expected.shape
        and actual.dtype == expected.dtype
        and torch.allclose(actual.detach(), expected.detach(), atol=ATOL, rtol=RTOL)
    )


def same_dict(actual, expected: Mapping[str, Tensor]) -> bool:
    return (
        isinstance(actual, Mapping)
        and set(actual) == set(expected)
        and all(same_tensor(actual[n], expected[n]) for n in expected)
    )


def first_match(actual, candidates: dict[str, object], same: Callable) -> str | None:
    for name, value in candidates.items():
        if value is not None and same(actual, value):
            return name
    return None


def grads_of(loss, params: Mapping[str, Tensor]) -> dict[str, Tensor | None]:
    if not isinstance(loss, Tensor) or not loss.requires_grad:
        return dict.fromkeys(params)
    values = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return dict(zip(params, values, strict=True))


DETACHED_HINT = (
    "the adapted parameters do not depend on θ: did you detach the gradient (or use "
    "`torch.no_grad()`, `.data`, `.detach()`)? Compute the step as `p - inner_lr * g` with "
    "`g` from `torch.autograd.grad(loss, ..., create_graph=True)`"
)
FIRST_ORDER_HINT = (
    "first-order answer where second order is asked: pass `create_graph=True` to "
    "`torch.autograd.grad` so the meta-gradient goes through the inner gradient too"
)


def expect_second_order(grads: dict, params: Mapping[str, Tensor], second, first, what: str):
    """Compares a meta-gradient with the second-order reference, naming first-order answers."""
    if all(g is None for g in grads.values()):
        raise Fail(
            f"{what} does not depend on θ (no gradient reaches the parameters)", DETACHED_HINT
        )
    missing = [n for n, g in grads.items() if g is None]
    if missing:
        raise Fail(f"{what} does not depend on θ through {missing}", DETACHED_HINT)
    if same_dict(grads, first) and not same_dict(grads, second):
        raise Fail(f"the meta-gradient of {what} is the first-order one", FIRST_ORDER_HINT)
    for name in params:
        expect_tensor(grads[name], second[name], f"meta-gradient ['{name}']", atol=ATOL, rtol=RTOL)


def shifted(params: Mapping[str, Tensor], seed: int, scale: float = 0.2) -> dict[str, Tensor]:
    """``params`` moved by a seeded random amount: a differentiable function of ``params`` that
    is not the model's own parameters (what an inner step receives from the step before)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        n: p + scale * torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()
    }


def own_gradient(model: nn.Module, x: Tensor, y: Tensor, loss_fn=F.mse_loss) -> dict[str, Tensor]:
    """The gradient at the model's own parameters (what ``model(x)`` differentiates)."""
    own = dict(model.named_parameters())
    grads = torch.autograd.grad(loss_fn(model(x), y), list(own.values()), create_graph=True)
    return dict(zip(own, grads, strict=True))


def step_variants(model, theta, params, x, y, inner_lr, loss_fn=F.mse_loss) -> dict[str, object]:
    """The adapted parameters of the usual wrong inner steps, keyed by what is wrong."""
    wrong = {
        "the parameters did not move: no step was taken": dict(params),
        "wrong sign: the step goes up the gradient": adapt_reference(
            model, params, x, y, loss_fn=loss_fn, inner_lr=-inner_lr
        ),
    }
    if any(params[n] is not theta[n] for n in params):
        own = own_gradient(model, x, y, loss_fn)
        step = adapt_reference(model, params, x, y, loss_fn=loss_fn, inner_lr=inner_lr)
        wrong["the gradient is taken at the model's own parameters (`model(x)` or "
              "`model.parameters()`), not at the `params` you were given"] = {
            n: params[n] - inner_lr * own[n] for n in params
        }  # fmt: skip
        wrong["the step starts from the model's own parameters, not from `params`"] = {
            n: theta[n] + (step[n] - params[n]) for n in params
        }
    return wrong


def step_size_fail(out, params, ref, inner_lr, what: str) -> None:
    """Names a step in the right direction whose size is not ``inner_lr``."""
    direction = {n: ref[n] - params[n] for n in params}
    scale = step_scale(out, params, direction, atol=ATOL)
    if scale is not None and abs(scale - 1) > 1e-6 and abs(scale) > 1e-6:
        raise Fail(
            f"{what} is a step of size {scale * inner_lr:.4g} in the right direction, but "
            f"inner_lr = {inner_lr:g}",
            "use the inner_lr argument itself (no hard-coded step size), and the mean, not "
            "the sum, of the losses",
        )
