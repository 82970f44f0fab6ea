"""Input checks shared by the algorithms: each problem gets one error that says what to do."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

TASK_FIELDS = ("x_support", "y_support", "x_query", "y_query")


def check_model(model: nn.Module) -> None:
    """Rejects models that cannot be adapted functionally across tasks.

    A BatchNorm layer that tracks running statistics updates buffers in place on every
    forward pass: under ``vmap`` that fails, and in a per-task loop the tasks leak into each
    other through the shared statistics.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and module.track_running_stats:
            raise ValueError(
                f"layer '{name}' ({type(module).__name__}) keeps running statistics, which cannot "
                "be adapted per task or vectorized with vmap. Use "
                f"{type(module).__name__}(..., track_running_stats=False) (batch statistics of "
                "each task), nn.GroupNorm or nn.LayerNorm instead."
            )


def check_params(model: nn.Module, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Checks that ``params`` is a ``{name: tensor}`` naming parameters of ``model``."""
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params must be a dict of tensors, got {type(params).__name__}: "
            "use mlcourse.algorithms.maml.params_of(model) or dict(model.named_parameters())"
        )
    if not params:
        raise ValueError("params is empty: there is nothing to adapt")
    known = dict(model.named_parameters())
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise KeyError(
            f"params names {unknown} that the model does not have; it has {sorted(known)}"
        )
    for name, p in params.items():
        if not isinstance(p, Tensor):
            raise TypeError(f"params['{name}'] is a {type(p).__name__}, not a tensor")
        if p.shape != known[name].shape:
            raise ValueError(
                f"params['{name}'] has shape {tuple(p.shape)} but the model's parameter has "
                f"{tuple(known[name].shape)}"
            )
    return dict(params)


def _reference(params: Mapping[str, Tensor]) -> Tensor:
    return next(iter(params.values()))


def _check_tensor(name: str, x, params: Mapping[str, Tensor]) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    ref = _reference(params)
    if x.device != ref.device:
        raise ValueError(
            f"{name} is on {x.device} but the model's parameters are on {ref.device}: move the "
            f"data with .to('{ref.device}') (or the model with model.to('{x.device}'))"
        )
    if x.is_floating_point() and x.dtype != ref.dtype:
        raise TypeError(
            f"{name} is {x.dtype} but the model's parameters are {ref.dtype}: convert one of them, "
            f"e.g. {name}.to({ref.dtype}) or model.to({x.dtype})"
        )
    if name.startswith("x") and not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}: convert it with .float()")


def check_task(
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    *,
    batched: bool = False,
    which: str = "support",
) -> None:
    """Checks one support (or query) set: ``(k, ...)``, or ``(num_tasks, k, ...)`` if batched."""
    _check_tensor(f"x_{which}", x, params)
    _check_tensor(f"y_{which}", y, params)
    lead = 2 if batched else 1
    shape = "(num_tasks, k, ...)" if batched else "(k, ...)"
    for name, t in ((f"x_{which}", x), (f"y_{which}", y)):
        if t.dim() < lead:
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {shape}")
    if x.shape[:lead] != y.shape[:lead]:
        raise ValueError(
            f"x_{which} has shape {tuple(x.shape)} but y_{which} has {tuple(y.shape)}: they must "
            f"agree in {'(num_tasks, k)' if batched else 'k'}, one target per input"
        )


def check_tasks(
    params: Mapping[str, Tensor], tasks, *, allow_ragged: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor] | tuple[Sequence, Sequence, Sequence, Sequence]:
    """Checks a batch of tasks and returns its four fields.

    Args:
        params: the parameters the tasks will be fed to (for device and dtype).
        tasks: an object with ``x_support, y_support, x_query, y_query``.
        allow_ragged: accept sequences of per-task tensors of different sizes (loop versions).
    """
    missing = [f for f in TASK_FIELDS if not hasattr(tasks, f)]
    if missing:
        raise TypeError(
            f"tasks has no {missing}: pass an object with tensors x_support, y_support, x_query, "
            "y_query whose leading dimension is the task, e.g. mlcourse.tasks.TaskBatch"
        )
    fields = [getattr(tasks, f) for f in TASK_FIELDS]
    if any(isinstance(f, (list, tuple)) for f in fields):
        return _check_ragged(params, fields, allow_ragged)
    for name, value in zip(TASK_FIELDS, fields, strict=True):
        _check_tensor(name, value, params)
        if value.dim() < 2:
            raise ValueError(
                f"{name} has shape {tuple(value.shape)}; expected (num_tasks, k, ...). For a "
                "single task add the task dimension with .unsqueeze(0)"
            )
    counts = {name: value.shape[0] for name, value in zip(TASK_FIELDS, fields, strict=True)}
    if len(set(counts.values())) > 1:
        raise ValueError(f"the task fields hold different numbers of tasks: {counts}")
    xs, ys, xq, yq = fields
    check_task(params, xs, ys, batched=True, which="support")
    check_task(params, xq, yq, batched=True, which="query")
    if xs.shape[2:] != xq.shape[2:]:
        raise ValueError(
            f"support inputs are {tuple(xs.shape[2:])} per point but query inputs are "
            f"{tuple(xq.shape[2:])}: both sets must come from the same input space"
        )
    if ys.shape[2:] != yq.shape[2:]:
        raise ValueError(
            f"support targets are {tuple(ys.shape[2:])} per point but query targets are "
            f"{tuple(yq.shape[2:])}"
        )
    return xs, ys, xq, yq


def _check_ragged(params, fields, allow_ragged):
    if not allow_ragged:
        sizes = {
            name: sorted({tuple(t.shape) for t in value})
            if isinstance(value, (list, tuple))
            else tuple(value.shape)
            for name, value in zip(TASK_FIELDS, fields, strict=True)
        }
        raise ValueError(
            "tasks given as lists of per-task tensors cannot be vectorized with vmap, which needs "
            f"every task to have the same size (got {sizes}). Stack equal-size tasks with "
            "torch.stack, or use the per-task loop (mlcourse.algorithms.maml.meta_loss_loop)."
        )
    if any(not isinstance(f, (list, tuple, Tensor)) for f in fields):
        raise TypeError("each task field must be a tensor or a list of per-task tensors")
    counts = {name: len(value) for name, value in zip(TASK_FIELDS, fields, strict=True)}
    if len(set(counts.values())) > 1:
        raise ValueError(f"the task fields hold different numbers of tasks: {counts}")
    for i, (xs, ys, xq, yq) in enumerate(zip(*fields, strict=True)):
        check_task(params, xs, ys, which="support")
        check_task(params, xq, yq, which="query")
        if xs.shape[1:] != xq.shape[1:]:
            raise ValueError(f"task {i}: support and query inputs differ in shape per point")
    return tuple(fields)
