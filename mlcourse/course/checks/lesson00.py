"""Checks for lesson 00 (``exercises/00_welcome.ipynb``): a warm-up that shows how checks answer."""

from __future__ import annotations

import torch

from mlcourse.course.checks._core import Fail, check, expect_tensor

__all__ = ["per_task_mse", "support_query_split"]

NAMES = ("x_support", "y_support", "x_query", "y_query")
# (num_tasks, k, x feature shape, y shape after (num_tasks, k), y dtype, k_support, x dtype)
CASES = (
    (8, 10, (1,), (1,), torch.float32, 5, torch.float32),  # sinusoid regression
    (3, 7, (1, 4, 4), (), torch.int64, 1, torch.float64),  # 1-shot images, integer labels
    (4, 6, (2,), (3,), torch.float64, 4, torch.float32),  # different x and y dtypes
)


def _reference(x: torch.Tensor, y: torch.Tensor, k_support: int) -> tuple[torch.Tensor, ...]:
    return x[:, :k_support], y[:, :k_support], x[:, k_support:], y[:, k_support:]


def _inputs(case, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    num_tasks, k, x_shape, y_shape, y_dtype, _, x_dtype = case
    x = torch.randn(num_tasks, k, *x_shape, generator=generator, dtype=x_dtype)
    if y_dtype.is_floating_point:
        y = torch.randn(num_tasks, k, *y_shape, generator=generator, dtype=y_dtype)
    else:
        y = torch.randint(0, 5, (num_tasks, k, *y_shape), generator=generator, dtype=y_dtype)
    return x, y


def _same(a, b: torch.Tensor) -> bool:
    return (
        isinstance(a, torch.Tensor)
        and a.shape == b.shape
        and a.dtype == b.dtype
        and torch.equal(a.detach(), b)
    )


@check("00_welcome", points=1, forbid=("mlcourse.course.checks.lesson00._reference",))
def support_query_split(fn) -> str:
    """Checks ``fn(x, y, k_support) -> (x_support, y_support, x_query, y_query)``.

    ``x`` is ``(num_tasks, k, ...)`` and ``y`` is ``(num_tasks, k, ...)``; the first
    ``k_support`` points of every task are its support set, the other ``k - k_support`` its
    query set, in order, with shapes ``(num_tasks, k_support, ...)`` and
    ``(num_tasks, k - k_support, ...)`` and the inputs' dtypes.
    """
    generator = torch.Generator().manual_seed(0)
    for case in CASES:
        num_tasks, k, *_, k_support, _ = case
        x, y = _inputs(case, generator)
        x_before, y_before = x.clone(), y.clone()
        out = fn(x, y, k_support)
        where = f"for x {tuple(x.shape)}, y {tuple(y.shape)}, k_support={k_support}"
        if not torch.equal(x, x_before) or not torch.equal(y, y_before):
            raise Fail(
                f"your function changed x or y in place {where}",
                "slice or index the inputs; avoid in-place operations such as `x -= ...`",
            )
        if not isinstance(out, tuple | list) or len(out) != 4:
            raise Fail(
                f"expected a tuple of 4 tensors {where}, got {type(out).__name__}"
                + (f" of length {len(out)}" if isinstance(out, tuple | list) else ""),
                "return x_support, y_support, x_query, y_query",
            )
        expected = _reference(x, y, k_support)
        for i, (name, actual, want) in enumerate(zip(NAMES, out, expected, strict=True)):
            if _same(actual, want):
                continue
            for j, other in enumerate(expected):
                if j != i and _same(actual, other):
                    raise Fail(
                        f"output {i + 1} is {NAMES[j]}, expected {name} {where}",
                        "return the four tensors in the order x_support, y_support, "
                        "x_query, y_query; the support set is the first k_support points",
                    )
            if isinstance(actual, torch.Tensor) and actual.dim() >= 1:
                if actual.shape[0] != num_tasks:
                    raise Fail(
                        f"{name} has {actual.shape[0]} tasks along dimension 0, expected "
                        f"{num_tasks} {where}",
                        "keep every task: split along dimension 1 (the points), not 0 (the tasks)",
                    )
                if actual.dim() >= 2 and actual.shape[2:] == want.shape[2:]:
                    if actual.shape[1] != want.shape[1]:
                        same_size = name.endswith("query") and actual.shape[1] == k_support
                        raise Fail(
                            f"{name} has {actual.shape[1]} points per task, expected "
                            f"{want.shape[1]} {where}",
                            f"the support set is the first k_support = {k_support} points, "
                            "the query set all the others"
                            + (
                                f" ({k - k_support} here): the query set need not be as large "
                                "as the support set"
                                if same_size
                                else ": check for an off-by-one"
                            ),
                        )
            if isinstance(actual, torch.Tensor) and actual.dtype != want.dtype:
                raise Fail(
                    f"{name} has dtype {actual.dtype}, expected {want.dtype} {where}",
                    "keep the inputs' dtypes: slicing does, `.float()` or `.to(...)` does not",
                )
            try:
                expect_tensor(actual, want, f"{name} {where}", atol=0, rtol=0)
            except Fail as fail:
                fail.hint = fail.hint or (
                    "the support set is the first k_support points of each task, in order, "
                    "and x and y must stay paired"
                )
                raise
    return (
        f"returns (x_support, y_support, x_query, y_query) with exact shapes, dtypes and "
        f"values in {len(CASES)} cases (regression and classification, "
        f"k_support = {', '.join(str(c[5]) for c in CASES)})"
    )


MSE_CASES = (  # (shape of y_pred and y_true, dtype)
    ((8, 10, 1), torch.float32),  # sinusoid regression
    ((3, 7), torch.float64),  # one number per point, no trailing dimension
    ((4, 6, 3), torch.float64),  # three outputs per point
)


@check("00_welcome", points=1)
def per_task_mse(fn) -> str:
    """Checks ``fn(y_pred, y_true) -> loss``: the mean squared error of each task.

    ``y_pred`` and ``y_true`` are ``(num_tasks, k, ...)``; ``loss`` is ``(num_tasks,)``, the
    mean over every dimension but the first, differentiable with respect to ``y_pred``.
    """
    generator = torch.Generator().manual_seed(1)
    for shape, dtype in MSE_CASES:
        y_true = torch.randn(shape, generator=generator, dtype=dtype)
        y_pred = torch.randn(shape, generator=generator, dtype=dtype).requires_grad_()
        before = y_pred.detach().clone(), y_true.clone()
        where = f"for y_pred and y_true shaped {shape}"
        loss = fn(y_pred, y_true)
        if not torch.equal(y_pred.detach(), before[0]) or not torch.equal(y_true, before[1]):
            raise Fail(
                f"your function changed y_pred or y_true in place {where}",
                "compute a new tensor, e.g. `(y_pred - y_true) ** 2`, instead of `sub_`",
            )
        want = ((y_pred - y_true) ** 2).flatten(1).mean(dim=1)
        if isinstance(loss, torch.Tensor) and loss.shape != want.shape:
            raise Fail(
                f"the loss has shape {tuple(loss.shape)}, expected {tuple(want.shape)} "
                f"(one number per task) {where}",
                "average over every dimension except dimension 0 (the tasks), e.g. "
                "`.flatten(1).mean(dim=1)`",
            )
        if isinstance(loss, torch.Tensor) and not loss.requires_grad:
            raise Fail(
                f"the loss does not depend on y_pred through autograd {where}",
                "the inner loop differentiates this loss: avoid `.detach()`, `.item()`, "
                "`torch.tensor(...)` and NumPy",
            )
        try:
            expect_tensor(loss, want, f"the loss {where}")
        except Fail as fail:
            fail.hint = fail.hint or (
                "the mean of the squared differences over every dimension but the first "
                "(points and a point's outputs alike): not a sum, no square root, no absolute "
                "value"
            )
            raise
    return (
        f"returns the per-task mean squared error, shape (num_tasks,), differentiable, in "
        f"{len(MSE_CASES)} cases (targets shaped (n, k, 1), (n, k), (n, k, 3))"
    )
