"""The one way the course summarises repeated measurements: a mean and its standard error.

Every figure with a ± in the course (a return over held-out tasks, an accuracy over episodes,
a score over seeds) is ``mean ± stderr`` or, where the papers report a 95% interval,
``mean ± 1.96 · stderr``, with the sample standard deviation (Bessel-corrected) over the
measurements, computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

Z95 = 1.96  # half-width of a 95% normal interval, in standard errors


def mean_and_stderr(values: Tensor | Sequence[float]) -> dict[str, float]:
    """``{"mean": ..., "stderr": ...}`` of the measurements (``stderr = std / √count``; NaN for
    a single measurement, which says nothing about its spread).

    Example:
        >>> r = mean_and_stderr([1.0, 2.0, 3.0, 4.0])
        >>> r["mean"], round(r["stderr"], 4)
        (2.5, 0.6455)
    """
    x = torch.as_tensor(values).detach().to("cpu", torch.float64).flatten()
    if x.numel() == 0:
        raise ValueError("no measurements to summarise")
    stderr = x.std(unbiased=True).item() / math.sqrt(x.numel()) if x.numel() > 1 else math.nan
    return {"mean": x.mean().item(), "stderr": stderr}


def ci95(values: Tensor | Sequence[float]) -> tuple[float, float]:
    """``(mean, half-width of its 95% interval)``: ``1.96 · stderr``."""
    summary = mean_and_stderr(values)
    return summary["mean"], Z95 * summary["stderr"]
