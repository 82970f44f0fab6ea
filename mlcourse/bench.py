"""Speed benchmarks, each measuring the variants side by side in one run.

Rounds alternate between the variants, so that a slow spell on a shared machine hits them
alike; the reported speedup is the median of the per-round ratios.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mlcourse.maml import meta_loss, meta_loss_loop, params_of
from mlcourse.models import MLP
from mlcourse.tasks import Sinusoid, TaskBatch
from mlcourse.training import default_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(step: Callable[[int], None], iters: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for i in range(iters):
        step(i)
    _sync(device)
    return iters / (time.perf_counter() - start)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def maml_sine(
    *,
    meta_batch_size: int = 25,
    k_shot: int = 10,
    num_inner_steps: int = 1,
    iters: int = 40,
    rounds: int = 5,
    device: torch.device | str | None = None,
    compile: bool = False,
) -> dict:
    """Meta-training iterations per second: vectorized ``meta_loss`` vs the per-task loop.

    One iteration is a full second-order MAML update (meta-loss, backward, Adam step) on a
    meta-batch of sinusoid tasks with the paper's 1-40-40-1 network.

    Args:
        meta_batch_size: tasks per iteration.
        k_shot: support and query points per task.
        num_inner_steps: inner steps.
        iters: iterations timed per round and variant.
        rounds: alternating rounds.
        device: where to run (default: CUDA if available).
        compile: also time ``torch.compile`` of the vectorized meta-loss.

    Returns:
        A dict with ``vectorized_it_per_s``, ``loop_it_per_s``, ``speedup`` (and
        ``compiled_it_per_s``, ``compiled_speedup`` with ``compile=True``).
    """
    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(0)
    base = MLP().to(device)
    pool = [
        Sinusoid().sample(
            meta_batch_size,
            k_shot,
            k_shot,
            device=device,
            generator=torch.Generator().manual_seed(i),
        )
        for i in range(8)
    ]

    def variant(loss_of):
        model = copy.deepcopy(base)
        params = params_of(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)

        def step(i: int) -> None:
            opt.zero_grad(set_to_none=True)
            loss_of(model, params, pool[i % len(pool)]).backward()
            opt.step()

        return step

    kwargs = {"loss_fn": F.mse_loss, "inner_lr": 0.01, "num_inner_steps": num_inner_steps}
    variants = {
        "vectorized": variant(lambda m, p, t: meta_loss(m, p, t, **kwargs)),
        "loop": variant(lambda m, p, t: meta_loss_loop(m, p, t, **kwargs)),
    }
    result: dict = {}
    if compile:
        compiled, info = _compiled_meta_loss(base, pool[0], kwargs)
        result.update(info)
        if compiled is not None:
            variants["compiled"] = variant(compiled)
    for step in variants.values():  # warm-up (and, for compile, trigger compilation)
        for i in range(3):
            step(i)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, step in variants.items():
            rates[name].append(_rate(step, iters, device))
    med = {name: statistics.median(r) for name, r in rates.items()}
    ratios = [v / lp for v, lp in zip(rates["vectorized"], rates["loop"], strict=True)]
    result = {
        "benchmark": "maml-sine",
        "device": device_name(device),
        "torch": torch.__version__,
        "meta_batch_size": meta_batch_size,
        "k_shot": k_shot,
        "num_inner_steps": num_inner_steps,
        "second_order": True,
        "rounds": rounds,
        "iters_per_round": iters,
        "vectorized_it_per_s": round(med["vectorized"], 2),
        "loop_it_per_s": round(med["loop"], 2),
        "speedup": round(statistics.median(ratios), 2),
        "speedup_by_round": [round(r, 2) for r in ratios],
        **result,
    }
    if "compiled" in rates:
        cratios = [c / lp for c, lp in zip(rates["compiled"], rates["loop"], strict=True)]
        result["compiled_it_per_s"] = round(med["compiled"], 2)
        result["compiled_speedup"] = round(statistics.median(cratios), 2)
    return result


def _compiled_meta_loss(model, tasks: TaskBatch, kwargs: dict):
    """``torch.compile`` of the vectorized meta-loss, checked against eager on one batch."""

    def fn(m, p, t):
        return meta_loss(m, p, TaskBatch(t.x_support, t.y_support, t.x_query, t.y_query), **kwargs)

    start = time.perf_counter()
    try:
        compiled = torch.compile(fn)
        model = copy.deepcopy(model)
        params = params_of(model)
        names = list(params)
        g_eager = torch.autograd.grad(fn(model, params, tasks), [params[n] for n in names])
        g_comp = torch.autograd.grad(compiled(model, params, tasks), [params[n] for n in names])
    except Exception as err:  # report, do not hide: the eager figures still stand
        return None, {"compiled_error": f"{type(err).__name__}: {err}"[:500]}
    diff = max((a - b).abs().max().item() for a, b in zip(g_eager, g_comp, strict=True))
    return compiled, {
        "compile_seconds": round(time.perf_counter() - start, 1),
        "compiled_max_grad_diff": diff,
    }


BENCHMARKS: dict[str, Callable[..., dict]] = {"maml-sine": maml_sine}
