"""Memory that a training step needs, measured the same way on the CPU and on a GPU.

A GPU reports its peak allocation (``torch.cuda.max_memory_allocated``); a CPU has no such
counter. What both share is autograd's own bookkeeping: the tensors that the forward pass
*saves for the backward pass* (activations, inputs of products, and for second-order MAML
the whole inner loop). :func:`saved_tensor_bytes` counts them with
``torch.autograd.graph.saved_tensors_hooks``. Introduced in lesson 04
(``notebooks/04_few_shot_classification.ipynb``); lesson 02 computes the same quantity inline.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch.autograd.graph import saved_tensors_hooks

__all__ = ["cuda_peak_bytes", "saved_tensor_bytes"]


class _SavedTensorMeter:
    """Tracks the storages of the tensors autograd saves, while they are alive.

    Each saved tensor is followed with a weak reference; a storage counts (once, however many
    saved tensors view it) from the moment a tensor on it is saved until the last saved
    tensor on it is freed. ``peak`` is the most bytes counted at any moment.
    """

    def __init__(self):
        self.current = 0
        self.peak = 0
        self._refs: dict[int, tuple[weakref.ref, tuple]] = {}  # id(tensor) -> (ref, storage)
        self._users: dict[tuple, int] = {}  # storage key -> live saved tensors on it
        self._sizes: dict[tuple, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        # Autograd keeps what pack returns. A detached alias (same storage and version
        # counter) rather than the tensor itself: a node that saves its own output would
        # otherwise hold that output, and the output its node, a cycle that only the
        # garbage collector frees.
        alias = tensor.detach()
        key, nbytes = _storage_key(alias)
        self._refs[id(alias)] = (weakref.ref(alias, self._freed_callback(id(alias))), key)
        if self._users.get(key, 0) == 0:
            self._sizes[key] = nbytes
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        self._users[key] = self._users.get(key, 0) + 1
        return alias

    def _freed_callback(self, ident: int) -> Callable[[weakref.ref], None]:
        def freed(_ref: weakref.ref) -> None:
            entry = self._refs.pop(ident, None)
            if entry is None:
                return
            key = entry[1]
            self._users[key] -= 1
            if self._users[key] == 0:
                self.current -= self._sizes.pop(key)
                del self._users[key]

        return freed


def _storage_key(tensor: torch.Tensor) -> tuple[tuple, int]:
    """A key naming the memory a tensor lives in, and that memory's size in bytes."""
    try:
        storage = tensor.untyped_storage()
        return ("storage", tensor.device, storage.data_ptr()), storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):  # no plain storage (e.g. sparse)
        return ("tensor", id(tensor)), tensor.numel() * tensor.element_size()


def saved_tensor_bytes(fn: Callable[[], object]) -> int:
    """The most bytes that tensors saved for the backward pass held at once while ``fn()`` ran.

    Every tensor autograd saves (an activation, the input of a product, an inner-loop
    gradient kept with ``create_graph=True``) is counted by the storage it lives in, each
    storage once, from when it is saved until autograd frees it. Call it on a whole training
    step (forward, ``backward()``, optimizer step), or on a function that returns the loss:
    the result of ``fn`` is kept alive until the end of the call, so the graph it holds is
    included. The figure depends only on the shapes, dtypes and operations, so it is the same
    on a CPU and a GPU; it leaves out the parameters' gradients, optimizer state and
    temporary buffers, which ``torch.cuda.max_memory_allocated`` sees on a GPU (see
    :func:`cuda_peak_bytes`).

    Args:
        fn: a function of no arguments, e.g. ``lambda: learner.step(0)``.

    Returns:
        Bytes, as an int (0 when nothing needed a gradient).

    Example:
        >>> x = torch.ones(1000, requires_grad=True)  # 4000 bytes of float32
        >>> saved_tensor_bytes(lambda: (x * x).sum())  # mul saves x twice: counted once
        4000
        >>> saved_tensor_bytes(lambda: x.exp().sum().backward())  # freed by backward, peak kept
        4000
    """
    meter = _SavedTensorMeter()
    with saved_tensors_hooks(meter.pack, _unpack):
        result = fn()
    del result
    return meter.peak


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device | str | None = None):
    """Peak CUDA memory allocated while ``fn()`` ran, above what was allocated before it.

    Args:
        fn: a function of no arguments, e.g. ``lambda: learner.step(0)``.
        device: the device ``fn`` computes on; anything but a CUDA device gives ``None``.

    Returns:
        Bytes as an int, or ``None`` when ``device`` is not a CUDA device.

    Example:
        >>> cuda_peak_bytes(lambda: torch.ones(3).sum(), "cpu") is None
        True
    """
    device = torch.device("cpu" if device is None else device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del result
    return peak - before
