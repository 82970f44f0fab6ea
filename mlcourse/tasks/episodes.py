"""N-way K-shot classification episodes, batched as tensors, and the pixel-space baseline.

Introduced in lesson 04 (``notebooks/04_few_shot_classification.ipynb``).

An episode (a task) picks ``n_way`` classes, relabels them ``0 .. n_way - 1`` in a random
order, and draws ``k_shot`` support and ``k_query`` query images of each. A batch of episodes
is a :class:`~mlcourse.tasks.TaskBatch` whose support and query sets are both **class-major**:
all images of label 0, then all images of label 1, and so on, so that::

    y_support[t] == [0] * k_shot + [1] * k_shot + ... + [n_way - 1] * k_shot
    y_query[t]   == [0] * k_query + [1] * k_query + ... + [n_way - 1] * k_query

The labels say nothing about the underlying classes: label ``i`` of task ``t`` is the class
``info["class_ids"][t, i]``, drawn at random for every task.
"""

from __future__ import annotations

import torch

from mlcourse.stats import ci95
from mlcourse.tasks.base import TaskBatch


def check_episode_shape(
    num_tasks: int, n_way: int, k_shot: int, k_query: int, num_classes: int
) -> None:
    """Raises a ``ValueError`` that says what to change when an episode shape is impossible.

    Args:
        num_tasks: how many episodes.
        n_way: classes per episode.
        k_shot: support images per class.
        k_query: query images per class.
        num_classes: how many classes there are to draw from.

    Example:
        >>> check_episode_shape(4, 20, 1, 5, num_classes=10)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: n_way=20 is larger than the 10 classes to draw from; lower n_way ...
    """
    for name, value in (("num_tasks", num_tasks), ("n_way", n_way), ("k_shot", k_shot)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if k_query < 0:
        raise ValueError(f"k_query must be non-negative, got {k_query}")
    if n_way > num_classes:
        raise ValueError(
            f"n_way={n_way} is larger than the {num_classes} classes to draw from; "
            "lower n_way or use a larger split"
        )


def sample_classes(
    pool: torch.Tensor, num_tasks: int, n_way: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draws ``n_way`` distinct classes per task, in random order (no loop over tasks).

    Random numbers come from ``generator`` on its own device; the result lives there too
    (or on ``pool``'s device when there is no generator).

    Args:
        pool: ``(num_classes,)`` int64 ids of the classes to draw from.
        num_tasks: how many tasks.
        n_way: classes per task.
        generator: optional seeded ``torch.Generator``.

    Returns:
        ``(num_tasks, n_way)`` class ids; entry ``[t, i]`` is the class given label ``i``
        in task ``t``.

    Example:
        >>> ids = sample_classes(torch.arange(10, 20), 3, 5, torch.Generator().manual_seed(0))
        >>> ids.shape, bool((ids >= 10).all()), [len(set(row)) for row in ids.tolist()]
        (torch.Size([3, 5]), True, [5, 5, 5])
    """
    if pool.ndim != 1:
        raise ValueError(f"pool must be a 1-D tensor of class ids, got shape {tuple(pool.shape)}")
    if n_way > pool.numel():
        raise ValueError(
            f"n_way={n_way} is larger than the {pool.numel()} classes to draw from; "
            "lower n_way or use a larger split"
        )
    draw_device = generator.device if generator is not None else pool.device
    # the n_way largest of iid uniforms: a uniformly random subset, in uniformly random order
    # (topk is much faster than a full argsort over thousands of classes)
    keys = torch.rand(num_tasks, pool.numel(), generator=generator, device=draw_device)
    picked = keys.topk(n_way, dim=1).indices
    return pool.to(draw_device)[picked]


def episodes_from_images(images: torch.Tensor, class_ids: torch.Tensor, k_shot: int) -> TaskBatch:
    """Splits per-class images into class-major support and query sets with labels.

    Args:
        images: ``(num_tasks, n_way, k_shot + k_query, *image_shape)``; ``images[t, i]``
            are the images of the class labelled ``i`` in task ``t``.
        class_ids: ``(num_tasks, n_way)`` the underlying class of each label.
        k_shot: how many of each class's images go to the support set (the first ones).

    Returns:
        A :class:`TaskBatch` with ``x_support: (num_tasks, n_way * k_shot, *image_shape)``,
        ``y_support: (num_tasks, n_way * k_shot)`` int64, ``x_query``, ``y_query`` alike
        with ``k_query``, and ``info["class_ids"]: (num_tasks, n_way)``.

    Example:
        >>> batch = episodes_from_images(torch.zeros(2, 3, 4, 1, 8, 8), torch.zeros(2, 3), 1)
        >>> tuple(batch.x_support.shape), batch.y_support[0].tolist(), tuple(batch.y_query.shape)
        ((2, 3, 1, 8, 8), [0, 1, 2], (2, 9))
    """
    num_tasks, n_way, per_class = images.shape[:3]
    if not 1 <= k_shot <= per_class:
        raise ValueError(f"k_shot must be between 1 and {per_class}, got {k_shot}")
    k_query = per_class - k_shot
    labels = torch.arange(n_way, device=images.device)
    return TaskBatch(
        x_support=images[:, :, :k_shot].flatten(1, 2),
        y_support=labels.repeat_interleave(k_shot).expand(num_tasks, -1).contiguous(),
        x_query=images[:, :, k_shot:].flatten(1, 2),
        y_query=labels.repeat_interleave(k_query).expand(num_tasks, -1).contiguous(),
        info={"class_ids": class_ids.to(images.device)},
    )


def sample_bank_episodes(
    bank: torch.Tensor,
    num_tasks: int,
    n_way: int,
    k_shot: int,
    k_query: int,
    *,
    classes: torch.Tensor | None = None,
    rotations: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TaskBatch:
    """Samples N-way K-shot episodes from a fixed bank of images, such as Omniglot.

    Each task draws ``n_way`` distinct classes, and each class ``k_shot + k_query`` distinct
    images (no replacement within a task), with no Python loop over tasks. With
    ``rotations = R > 1`` every bank entry stands for ``R`` classes, its images turned by
    ``0, 90, ..., (R - 1) * 90`` degrees (``torch.rot90`` with ``k = r``): class id
    ``c * R + r`` is bank entry ``c`` turned ``r`` times, the augmentation of Vinyals et al.
    (2016).

    Random numbers come from ``generator`` on its own device, so a seeded CPU generator
    gives the same episodes on every device.

    Args:
        bank: ``(num_entries, samples_per_class, *image_shape)`` images, e.g.
            ``(1623, 20, 1, 28, 28)``.
        num_tasks: how many tasks.
        n_way: classes per task.
        k_shot: support images per class.
        k_query: query images per class.
        classes: ``(num_classes,)`` ids to draw from (default: all
            ``num_entries * rotations`` classes); this is how a split is chosen.
        rotations: classes per bank entry (1 or 4 in practice; needs square images if > 1).
        generator: optional seeded ``torch.Generator``.
        device: where the returned tensors live (default: the bank's device).

    Returns:
        A class-major :class:`TaskBatch` (see the module docstring) with
        ``x_support: (num_tasks, n_way * k_shot, *image_shape)`` and
        ``info["class_ids"]: (num_tasks, n_way)``.

    Example:
        >>> bank = torch.rand(12, 20, 1, 28, 28)
        >>> g = torch.Generator().manual_seed(0)
        >>> batch = sample_bank_episodes(bank, 8, 5, 1, 15, rotations=4, generator=g)
        >>> tuple(batch.x_support.shape), tuple(batch.x_query.shape), tuple(batch.y_query.shape)
        ((8, 5, 1, 28, 28), (8, 75, 1, 28, 28), (8, 75))
    """
    if bank.ndim < 3:
        raise ValueError(
            "bank must be shaped (num_classes, samples_per_class, *image_shape), "
            f"got shape {tuple(bank.shape)}"
        )
    if rotations < 1:
        raise ValueError(f"rotations must be at least 1, got {rotations}")
    if rotations > 1 and bank.shape[-1] != bank.shape[-2]:
        raise ValueError(f"rotations need square images, got {tuple(bank.shape[-2:])}")
    num_entries, per_class = bank.shape[:2]
    if classes is None:
        classes = torch.arange(num_entries * rotations)
    check_episode_shape(num_tasks, n_way, k_shot, k_query, classes.numel())
    if k_shot + k_query > per_class:
        raise ValueError(
            f"k_shot + k_query = {k_shot + k_query} is more than the {per_class} images per "
            "class in the bank; lower k_shot or k_query"
        )
    if classes.numel() and (classes.min() < 0 or classes.max() >= num_entries * rotations):
        raise ValueError(
            f"classes must lie in [0, {num_entries * rotations}) for a bank of {num_entries} "
            f"entries with rotations={rotations}"
        )
    class_ids = sample_classes(classes, num_tasks, n_way, generator)
    draw_device = class_ids.device
    order = torch.rand(num_tasks, n_way, per_class, generator=generator, device=draw_device)
    picks = order.argsort(dim=-1)[..., : k_shot + k_query].to(bank.device)
    entry = (class_ids // rotations).to(bank.device)
    images = bank[entry[..., None], picks]  # (num_tasks, n_way, k_shot + k_query, *image_shape)
    if rotations > 1:
        images = _rotate(images, (class_ids % rotations).to(bank.device))
    out_device = bank.device if device is None else device
    return episodes_from_images(images.to(out_device), class_ids, k_shot)


def _rotate(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Turns ``images[t, i]`` by ``turns[t, i]`` quarter turns (loop over 4 angles, not tasks)."""
    out = images.clone()
    for k in range(1, int(turns.max()) + 1):
        chosen = turns == k
        out[chosen] = torch.rot90(images[chosen], k, dims=(-2, -1))
    return out


def nearest_neighbour_accuracy(tasks: TaskBatch) -> tuple[float, float]:
    """Accuracy of 1-nearest-neighbour in pixel space, the baseline a learner must beat.

    Every query image gets the label of the closest support image (Euclidean distance on
    raw pixels). Accuracy is averaged per task, then over tasks; the interval is the normal
    approximation ``1.96 * std / sqrt(num_tasks)`` over the per-task accuracies
    (:func:`mlcourse.stats.ci95`; NaN for a single task).

    Args:
        tasks: a batch with ``x_support: (num_tasks, n_support, *image_shape)``,
            ``y_support: (num_tasks, n_support)``, ``x_query: (num_tasks, n_query, *image_shape)``
            and ``y_query: (num_tasks, n_query)``.

    Returns:
        ``(accuracy, ci95)`` in percent, like :func:`mlcourse.algorithms.fewshot.accuracy_ci95`.

    Example:
        >>> x = torch.eye(3).expand(2, 3, 3)  # two tasks
        >>> y = torch.tensor([[0, 1, 2], [0, 1, 2]])
        >>> nearest_neighbour_accuracy(TaskBatch(x, y, x, y))
        (100.0, 0.0)
    """
    support = tasks.x_support.flatten(2)
    query = tasks.x_query.flatten(2)
    if query.shape[1] == 0:
        raise ValueError("the tasks have no query examples to score; sample with k_query >= 1")
    distance = torch.cdist(query, support, compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distance.argmin(dim=-1)  # (num_tasks, n_query)
    predicted = tasks.y_support.gather(1, nearest)
    per_task = (predicted == tasks.y_query).double().mean(dim=1)
    accuracy, half_width = ci95(per_task)
    return 100 * accuracy, 100 * half_width
