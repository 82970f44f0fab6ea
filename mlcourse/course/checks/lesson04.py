"""Checks of lesson 04 (``solutions/04_few_shot_classification.ipynb``).

- :func:`protonet_logits` (implement): prototypes as class means and the logits
  ``-‖f(x_q) - c_n‖²``, against :func:`mlcourse.algorithms.fewshot.protonet_logits` in float64.
- :func:`class_major_split` (implement): per-class images ``(T, N, K+Q, ...)`` into class-major
  support and query sets with labels, against :func:`mlcourse.tasks.episodes.
  episodes_from_images`.
- :func:`sample_episodes` (implement): N-way K-shot episodes drawn from a bank of images,
  checked by their properties (classes distinct within a task, support and query disjoint,
  class-major labels, every random number from the generator).
- :func:`maml_conv_step` (implement): one second-order MAML step on a small Conv4, against
  :func:`mlcourse.algorithms.maml.adapt_reference` in float64.
- :func:`fixed_protonet_loss` (find the bug): a ProtoNet loss whose prototypes leak the query
  labels, fixed; against :func:`mlcourse.algorithms.fewshot.protonet_loss`, value and gradients.

The test images of the episode checks carry their identity in their pixels (class and
drawing), so a check can tell exactly which image went where.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from mlcourse.algorithms.fewshot import embed_tasks, prototypes
from mlcourse.algorithms.fewshot import protonet_logits as protonet_logits_reference
from mlcourse.algorithms.fewshot import protonet_loss as fewshot_protonet_loss
from mlcourse.algorithms.maml import adapt_reference, params_of
from mlcourse.course.checks._core import (
    Fail,
    check,
    expect_model_unchanged,
    expect_second_order,
    expect_tensor,
    first_match,
    grads_of,
    same_dict,
    shifted,
    snapshot,
    step_size_fail,
    step_variants,
)
from mlcourse.models import Conv4, head_params
from mlcourse.tasks import ProceduralCharacters
from mlcourse.tasks.episodes import episodes_from_images

__all__ = [
    "class_major_split",
    "fixed_protonet_loss",
    "maml_conv_step",
    "protonet_logits",
    "sample_episodes",
]

LESSON = "04_few_shot_classification"
DTYPE = torch.float64
ATOL, RTOL = 1e-10, 1e-8
CLASS_CODE = 1000  # a test image's pixels hold class * CLASS_CODE + drawing (+ task offsets)


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return type(value).__name__


def _close(actual, expected: Tensor) -> bool:
    return (
        isinstance(actual, Tensor)
        and actual.shape == expected.shape
        and torch.allclose(actual.detach().to(expected.dtype), expected, atol=ATOL, rtol=RTOL)
    )


# ---------------------------------------------------------------------------------------------
# (a) protonet_logits


def _protonet_case(seed: int, labels: list[list[int]], n_way: int, n_query: int, dim: int):
    gen = torch.Generator().manual_seed(seed)
    y = torch.tensor(labels)
    num_tasks, n_support = y.shape
    support = torch.randn(num_tasks, n_support, dim, generator=gen, dtype=DTYPE)
    query = torch.randn(num_tasks, n_query, dim, generator=gen, dtype=DTYPE)
    return support.requires_grad_(), y, query.requires_grad_(), n_way


PROTONET_CASES = [
    # class-major, 2 shots
    (0, [[0, 0, 1, 1, 2, 2, 3, 3]] * 3, 4, 5, 6),
    # shuffled labels, 2 shots each: the order of the support set says nothing
    (1, [[2, 0, 1, 0, 2, 1], [1, 1, 0, 2, 0, 2]], 3, 4, 5),
    # unequal shots
    (2, [[0, 0, 0, 1, 2, 2], [2, 1, 1, 0, 1, 1]], 3, 7, 4),
]


def _protonet_variants(support: Tensor, y: Tensor, query: Tensor, n_way: int) -> dict:
    """The usual wrong answers' logits, keyed by (what is wrong, hint)."""
    s, q = support.detach(), query.detach()
    one_hot = F.one_hot(y, n_way).to(s.dtype)  # (T, S, N)
    counts = one_hot.sum(1)[..., None]  # (T, N, 1)
    means = one_hot.transpose(1, 2) @ s / counts  # (T, N, D)
    sums = one_hot.transpose(1, 2) @ s
    diff = q[:, :, None] - means[:, None]  # (T, Q, N, D)
    sq = (diff**2).sum(-1)
    right = -sq
    variants = {
        ("the logits are +distance: the closest prototype gets the smallest logit",
         "logits = MINUS the squared distance, so that closer means more likely"): sq,
        ("the distance is not squared (‖q − c‖ instead of ‖q − c‖²)",
         "Prototypical Networks use the squared Euclidean distance: ((q - c) ** 2).sum(-1)"):
            -sq.sqrt(),
        ("the logits are softmax probabilities, not logits",
         "return −‖q − c‖² itself; F.cross_entropy applies the softmax"): right.softmax(-1),
        ("the logits differ from −‖q − c‖² by a constant per query (log_softmax?)",
         "return −‖q − c‖² itself; F.cross_entropy applies the (log-)softmax"):
            right.log_softmax(-1),
        ("the prototypes are sums of the class's embeddings, not their means",
         "divide by the number of support examples of each class"):
            -((q[:, :, None] - sums[:, None]) ** 2).sum(-1),
        ("every class gets the same prototype: the mean was taken over the whole support "
         "set, not over each class",
         "average only the support embeddings whose label is n: e.g. one-hot labels "
         "(T, S, N) transposed, times the embeddings (T, S, D), divided by the counts"):
            -((q - s.mean(1, keepdim=True)) ** 2).sum(-1, keepdim=True).expand(-1, -1, n_way),
        ("the similarity is the cosine (as in Matching Networks), not minus the squared "
         "Euclidean distance", "logits = −((q − c) ** 2).sum(-1)"):
            F.normalize(q, dim=-1) @ F.normalize(means, dim=-1).transpose(1, 2),
        ("the logits are the dot products q · c, not minus the squared distance",
         "−‖q − c‖² = 2 q·c − ‖c‖² − ‖q‖²: the norms matter"): q @ means.transpose(1, 2),
        ("the squared differences are averaged over the embedding dimension, not summed",
         "‖q − c‖² sums the squares over the D coordinates: ((q - c) ** 2).sum(-1)"):
            -(diff**2).mean(-1),
        (f"the prototypes divide each class's sum by S / n_way = {s.shape[1] / n_way:g} (equal "
         "shots assumed), not by the class's own number of support examples",
         "divide by the counts per class, one_hot.sum(1): classes may have different numbers "
         "of shots"): -((q[:, :, None] - sums[:, None] * n_way / s.shape[1]) ** 2).sum(-1),
    }  # fmt: skip
    num_tasks, n_support, dim = s.shape
    if n_support % n_way == 0:
        k = n_support // n_way
        for protos, what in (
            (s.view(num_tasks, n_way, k, dim).mean(2), "class-major [0, 0, 1, 1, ...]"),
            (s.view(num_tasks, k, n_way, dim).mean(1), "interleaved [0, 1, ..., 0, 1, ...]"),
        ):
            variants[
                (
                    f"the prototypes assume the support set is ordered {what} (a reshape), but "
                    f"they must follow y_support, here {y[0].tolist()} in task 0",
                    "group the support embeddings by their labels y_support, not by position",
                )
            ] = -((q[:, :, None] - protos[:, None]) ** 2).sum(-1)
    return variants


@check(
    LESSON,
    points=2,
    forbid=(
        "mlcourse.algorithms.fewshot.protonet_logits",
        "mlcourse.algorithms.fewshot.prototypes",
    ),
)
def protonet_logits(fn: Callable) -> str:
    """Checks ``fn(support_emb, y_support, query_emb, n_way) -> (T, Q, n_way)`` logits
    against :func:`mlcourse.algorithms.fewshot.protonet_logits` in float64, on class-major, shuffled
    and unequal-shot support sets, values and gradients."""
    for seed, labels, n_way, n_query, dim in PROTONET_CASES:
        support, y, query, n_way = _protonet_case(seed, labels, n_way, n_query, dim)
        before = (support.detach().clone(), y.clone(), query.detach().clone())
        got = fn(support, y, query, n_way)
        names = ("support_emb", "y_support", "query_emb")
        for t, b, name in zip((support, y, query), before, names, strict=True):
            if not torch.equal(t.detach(), b):
                raise Fail(f"your function modified {name} in place", "compute new tensors")
        if not isinstance(got, Tensor):
            raise Fail(
                f"protonet_logits should return a tensor, got {_describe(got)}",
                "return the (T, Q, n_way) logits",
            )
        num_tasks = y.shape[0]
        if got.shape == (num_tasks, n_way, n_query) and n_way != n_query:
            raise Fail(
                f"the logits have shape {tuple(got.shape)} = (T, n_way, Q); expected "
                f"(T, Q, n_way) = {(num_tasks, n_query, n_way)}",
                "one row per query, one column per class: transpose the last two dimensions",
            )
        expected = protonet_logits_reference(support, y, query, n_way)
        if got.shape == expected.shape and not _close(got, expected.detach()):
            for (what, hint), value in _protonet_variants(support, y, query, n_way).items():
                if _close(got, value):
                    raise Fail(what, hint)
        try:
            expect_tensor(got, expected, "the logits tensor", atol=ATOL, rtol=RTOL)
        except Fail as fail:
            fail.hint = fail.hint or (
                "for each task t on its own labels y_support[t]: c_n = the mean of the support "
                "embeddings labelled n, logits[t, q, n] = −((query_emb[t, q] − c_n) ** 2).sum()"
            )
            raise
        _expect_same_gradients(got, expected, {"support_emb": support, "query_emb": query})
    return (
        "prototypes are the class means by label (class-major, shuffled and unequal shots) and "
        "the logits −‖f(x_q) − c_n‖² match mlcourse.algorithms.fewshot.protonet_logits, values and "
        "gradients (float64)"
    )


def _expect_same_gradients(got: Tensor, expected: Tensor, inputs: dict[str, Tensor]) -> None:
    if not got.requires_grad:
        raise Fail(
            "the logits do not depend on the embeddings: no gradient can train the network",
            "do not detach, use .item()/.numpy() or torch.no_grad() inside the function",
        )
    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(9), dtype=DTYPE)
    names = list(inputs)
    mine = torch.autograd.grad(
        (got * weights).sum(), [inputs[n] for n in names], allow_unused=True, retain_graph=True
    )
    ref = torch.autograd.grad((expected * weights).sum(), [inputs[n] for n in names])
    for name, g, r in zip(names, mine, ref, strict=True):
        if g is None:
            raise Fail(
                f"the logits do not depend on {name}",
                "compute everything from the tensors you were given, without detaching",
            )
        expect_tensor(g, r, f"the gradient with respect to {name}", atol=ATOL, rtol=RTOL)


# ---------------------------------------------------------------------------------------------
# Images that say who they are.


def _coded_images(codes: Tensor, side: int = 3) -> Tensor:
    """``codes (...)`` → ``(..., 1, side, side)`` images whose every pixel is the code."""
    return codes.to(DTYPE)[..., None, None, None].expand(*codes.shape, 1, side, side).clone()


def _decode(images: Tensor) -> Tensor:
    """``(..., 1, side, side)`` coded images → their codes ``(...)``; ``-1`` where the pixels
    of an image disagree (not one of the test images)."""
    flat = images.detach().flatten(-3)
    code = flat[..., 0]
    ok = (flat == code[..., None]).all(-1) & (code == code.round()) & (code >= 0)
    return torch.where(ok, code, torch.full_like(code, -1)).long()


# ---------------------------------------------------------------------------------------------
# (b) class_major_split

TASK_CODE = 100_000


def _split_case(num_tasks: int, n_way: int, per_class: int) -> Tensor:
    t = torch.arange(num_tasks)[:, None, None]
    n = torch.arange(n_way)[None, :, None]
    j = torch.arange(per_class)[None, None, :]
    return _coded_images(t * TASK_CODE + n * CLASS_CODE + j)  # (T, N, K+Q, 1, 3, 3)


def _expect_four_tensors(got, what: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if not isinstance(got, (tuple, list)) or len(got) != 4:
        raise Fail(
            f"{what} should return 4 tensors (x_support, y_support, x_query, y_query), got "
            f"{_describe(got)}",
            "return x_support, y_support, x_query, y_query",
        )
    for name, value in zip(("x_support", "y_support", "x_query", "y_query"), got, strict=True):
        if not isinstance(value, Tensor):
            raise Fail(
                f"{name} should be a tensor, got {_describe(value)}",
                "return four tensors: x_support, y_support, x_query, y_query",
            )
    return tuple(got)


def _expect_labels(y: Tensor, name: str, num_tasks: int, n_way: int, per_class: int) -> None:
    """Labels ``(T, n_way * per_class)``, int64, class-major ``[0]*k + [1]*k + ...``."""
    shape = (num_tasks, n_way * per_class)
    if y.dtype != torch.int64:
        raise Fail(
            f"{name} has dtype {y.dtype}; class labels must be int64",
            "build them with torch.arange(n_way) (int64), as F.cross_entropy expects",
        )
    if tuple(y.shape) != shape:
        k = "k_shot" if name == "y_support" else "k_query"
        hint = (
            f"{n_way} classes × {per_class} images: repeat each label {k} = {per_class} times, "
            f"torch.arange(n_way).repeat_interleave({k})"
            if y.dim() == 2 and y.shape[0] == num_tasks
            else "repeat the labels for every task, e.g. .expand(num_tasks, -1)"
        )
        raise Fail(
            f"{name} has shape {tuple(y.shape)}, expected {shape} (one row of labels per task)",
            hint,
        )
    class_major = torch.arange(n_way).repeat_interleave(per_class)
    if not (y == class_major).all():
        interleaved = torch.arange(n_way).repeat(per_class)
        if per_class > 1 and (y == interleaved).all():
            raise Fail(
                f"{name} is interleaved [0, 1, 2, ..., 0, 1, 2, ...], not class-major",
                "class-major labels are [0]*k + [1]*k + ...: "
                "torch.arange(n_way).repeat_interleave(k), not .repeat(k)",
            )
        raise Fail(
            f"{name} is not class-major: task 0 has {y[0].tolist()}, expected "
            f"{class_major.tolist()}",
            "labels are [0]*k + [1]*k + ... + [n_way-1]*k in every task",
        )


@check(LESSON, points=1, forbid=("mlcourse.tasks.episodes.episodes_from_images",))
def class_major_split(fn: Callable) -> str:
    """Checks ``fn(images, k_shot) -> (x_support, y_support, x_query, y_query)`` against
    :func:`mlcourse.tasks.episodes.episodes_from_images` on images that carry their task,
    class and drawing in their pixels."""
    for num_tasks, n_way, k_shot, k_query in [(3, 4, 2, 3), (2, 5, 1, 4)]:
        images = _split_case(num_tasks, n_way, k_shot + k_query)
        before = images.clone()
        got = fn(images, k_shot)
        if not torch.equal(images, before):
            raise Fail("your function modified images in place", "index and reshape instead")
        xs, ys, xq, yq = _expect_four_tensors(got, "class_major_split")
        ref = episodes_from_images(images, torch.zeros(num_tasks, n_way), k_shot)
        image_shape = tuple(images.shape[3:])
        for name, x, per_class in (("x_support", xs, k_shot), ("x_query", xq, k_query)):
            shape = (num_tasks, n_way * per_class, *image_shape)
            if tuple(x.shape) != shape:
                swapped = (num_tasks, n_way * (k_query if per_class == k_shot else k_shot))
                hint = (
                    "support and query look swapped: the support set is the FIRST k_shot "
                    "drawings of each class"
                    if tuple(x.shape[:2]) == swapped
                    else "flatten the class and drawing dimensions: x.flatten(1, 2)"
                )
                raise Fail(f"{name} has shape {tuple(x.shape)}, expected {shape}", hint)
        _diagnose_split(xs, xq, num_tasks, n_way, k_shot, k_query)
        _expect_labels(ys, "y_support", num_tasks, n_way, k_shot)
        _expect_labels(yq, "y_query", num_tasks, n_way, k_query)
        for name, value, expected in zip(
            ("x_support", "y_support", "x_query", "y_query"),
            (xs, ys, xq, yq),
            (ref.x_support, ref.y_support, ref.x_query, ref.y_query),
            strict=True,
        ):
            try:
                expect_tensor(value, expected, name, atol=0, rtol=0)
            except Fail as fail:
                fail.hint = fail.hint or (
                    "index and reshape only, keeping the images' dtype: "
                    "images[:, :, :k_shot].flatten(1, 2); labels int64"
                )
                raise
    return (
        "support = the first k_shot drawings of each class, query = the rest, both class-major "
        "with labels [0]*k + [1]*k + ..., identical to mlcourse.tasks.episodes_from_images"
    )


def _diagnose_split(xs: Tensor, xq: Tensor, num_tasks: int, n_way, k_shot, k_query) -> None:
    for name, x, per_class, first in (
        ("x_support", xs, k_shot, 0),
        ("x_query", xq, k_query, k_shot),
    ):
        code = _decode(x)
        if (code < 0).any():
            raise Fail(
                f"{name} holds images that are not among the input images",
                "only index and reshape `images`: no arithmetic on the pixels",
            )
        task, cls, drawing = code // TASK_CODE, code % TASK_CODE // CLASS_CODE, code % CLASS_CODE
        if not (task == torch.arange(num_tasks)[:, None]).all():
            raise Fail(
                f"{name} mixes the tasks: task t must hold only images[t]",
                "keep the task dimension first; flatten only the class and drawing dimensions",
            )
        expected_cls = torch.arange(n_way).repeat_interleave(per_class)
        if not (cls == expected_cls).all():
            if per_class > 1 and (cls == torch.arange(n_way).repeat(per_class)).all():
                raise Fail(
                    f"{name} is ordered drawing by drawing (class 0, 1, 2, ..., 0, 1, ...), "
                    "not class-major",
                    "flatten (n_way, k) in that order: images[:, :, :k].flatten(1, 2), without "
                    "a transpose",
                )
            raise Fail(
                f"{name} is not class-major: task 0 holds classes {cls[0].tolist()}",
                "all images of class 0, then all of class 1, ...",
            )
        expected_drawing = torch.arange(first, first + per_class).repeat(n_way)
        if not (drawing == expected_drawing).all():
            if name == "x_query" and (drawing < k_shot).any():
                raise Fail(
                    "the query set holds drawings that are also in the support set",
                    "the query set is images[:, :, k_shot:], the drawings after the support ones",
                )
            raise Fail(
                f"{name} holds the wrong drawings of each class",
                "support: images[:, :, :k_shot]; query: images[:, :, k_shot:]",
            )


# ---------------------------------------------------------------------------------------------
# (c) sample_episodes

BANK_CLASSES, BANK_DRAWINGS = 10, 8
SAMPLE_SHAPE = (40, 5, 2, 3)  # num_tasks, n_way, k_shot, k_query


def _bank() -> Tensor:
    c = torch.arange(BANK_CLASSES)[:, None]
    j = torch.arange(BANK_DRAWINGS)[None, :]
    return _coded_images(c * CLASS_CODE + j).float()  # (C, D, 1, 3, 3)


def _sample(fn: Callable, bank: Tensor, seed: int):
    num_tasks, n_way, k_shot, k_query = SAMPLE_SHAPE
    before = bank.clone()
    got = fn(bank, num_tasks, n_way, k_shot, k_query, torch.Generator().manual_seed(seed))
    if not torch.equal(bank, before):
        raise Fail("your function modified the bank in place", "index it instead")
    return _expect_four_tensors(got, "sample_episodes")


@check(LESSON, points=2, forbid=("mlcourse.tasks.episodes.sample_bank_episodes",))
def sample_episodes(fn: Callable) -> str:
    """Checks ``fn(bank, num_tasks, n_way, k_shot, k_query, generator) -> (x_support,
    y_support, x_query, y_query)`` by the properties of its episodes, on a bank of 10 classes
    of 8 drawings whose pixels name their class and drawing."""
    num_tasks, n_way, k_shot, k_query = SAMPLE_SHAPE
    bank = _bank()
    xs, ys, xq, yq = _sample(fn, bank, seed=0)
    for name, x, per_class in (("x_support", xs, k_shot), ("x_query", xq, k_query)):
        shape = (num_tasks, n_way * per_class, *bank.shape[2:])
        if tuple(x.shape) != shape:
            raise Fail(
                f"{name} has shape {tuple(x.shape)}, expected {shape} "
                f"(num_tasks, n_way * {'k_shot' if per_class == k_shot else 'k_query'}, "
                "*image_shape)",
                "gather (num_tasks, n_way, k_shot + k_query) images, then split and flatten",
            )
        if x.dtype != bank.dtype:
            raise Fail(
                f"{name} has dtype {x.dtype}; the bank's images are {bank.dtype}",
                "index the bank: no .float(), .double() or .to(...) on the images",
            )
    _expect_labels(ys, "y_support", num_tasks, n_way, k_shot)
    _expect_labels(yq, "y_query", num_tasks, n_way, k_query)
    codes = torch.cat(
        [
            _decode(xs).view(num_tasks, n_way, k_shot),
            _decode(xq).view(num_tasks, n_way, k_query),
        ],
        dim=2,
    )  # (T, N, K+Q): the bank entry of every image, grouped by label
    if (codes < 0).any() or (codes % CLASS_CODE >= BANK_DRAWINGS).any():
        raise Fail(
            "the episodes hold images that are not images of the bank",
            "only index the bank (bank[classes, drawings]): no arithmetic on the pixels",
        )
    cls, drawing = codes // CLASS_CODE, codes % CLASS_CODE
    _diagnose_episodes(cls, drawing, k_shot)
    again = _sample(fn, bank, seed=0)
    if not all(torch.equal(a, b) for a, b in zip((xs, ys, xq, yq), again, strict=True)):
        raise Fail(
            "two calls with identically seeded generators gave different episodes",
            "draw every random number from `generator`, e.g. torch.rand(..., generator=generator)",
        )
    other = _sample(fn, bank, seed=1)
    if torch.equal(other[0], xs) and torch.equal(other[2], xq):
        raise Fail(
            "a generator with another seed gave the same episodes",
            "draw the classes and drawings at random from `generator`",
        )
    return (
        f"{num_tasks} episodes of {n_way}-way {k_shot}-shot with {k_query} queries: distinct "
        "classes in random label order within each task, support and query disjoint drawings "
        "of the labelled class drawn independently for every class and task, class-major "
        "labels, every class and drawing reachable, reproducible from the generator"
    )


def _diagnose_episodes(cls: Tensor, drawing: Tensor, k_shot: int) -> None:
    """``cls, drawing: (T, N, K+Q)`` the bank entry of each image, grouped by label."""
    num_tasks, n_way, per_class = cls.shape
    mixed = (cls != cls[..., :1]).any(-1)  # (T, N)
    if mixed.any():
        t, n = (int(i) for i in mixed.nonzero()[0])
        raise Fail(
            f"the images labelled {n} in task {t} come from different classes "
            f"({sorted(set(cls[t, n].tolist()))})",
            "label n must name one class: all k_shot + k_query images of label n are "
            "drawings of the class drawn for it",
        )
    classes = cls[..., 0]  # (T, N)
    for t in range(num_tasks):
        if len(set(classes[t].tolist())) < n_way:
            raise Fail(
                f"task {t} uses a class twice (classes {classes[t].tolist()})",
                "draw the classes of a task without replacement: "
                "torch.rand(num_tasks, num_classes, generator=g).argsort(-1)[:, :n_way]",
            )
    if (classes == classes[:1]).all():
        raise Fail(
            f"every task uses the same classes {classes[0].tolist()}",
            "draw new classes for every task",
        )
    missing = sorted(set(range(BANK_CLASSES)) - set(classes.flatten().tolist()))
    if missing:
        raise Fail(
            f"class {missing[0]} is never drawn in {num_tasks} tasks",
            "draw from all num_classes = bank.shape[0] classes (an off-by-one?)",
        )
    if (classes.diff(dim=1) > 0).all():
        raise Fail(
            "the labels always follow the order of the class ids (label 0 is the smallest)",
            "keep the classes in their random order: a label must say nothing about the class",
        )
    for t in range(num_tasks):
        for n in range(n_way):
            if len(set(drawing[t, n].tolist())) < per_class:
                both = set(drawing[t, n, :k_shot].tolist()) & set(drawing[t, n, k_shot:].tolist())
                what = (
                    "the same drawing is in the support and the query set"
                    if both
                    else "a drawing is used twice"
                )
                raise Fail(
                    f"{what} (task {t}, label {n}: drawings {drawing[t, n].tolist()})",
                    "draw the k_shot + k_query drawings of a class without replacement, then "
                    "split them: the query set must hold new drawings",
                )
    if (drawing[..., :k_shot] < k_shot).all():
        raise Fail(
            "the support set is always the first drawings of each class",
            "draw the drawings at random too",
        )
    independent = (
        "draw the drawings of every class of every task independently: one random order per "
        "(task, class), e.g. torch.rand(num_tasks, n_way, drawings, generator=g).argsort(-1)"
    )
    if n_way > 1 and (drawing == drawing[:, :1]).all():
        raise Fail(
            "in every task, all classes use the same drawing numbers (task 0: "
            f"{drawing[0, 0].tolist()} for each class): one draw is shared by the classes",
            independent,
        )
    if num_tasks > 1 and (drawing == drawing[:1]).all():
        raise Fail(
            "every task uses the same drawing numbers for its classes: one draw is shared by "
            "the tasks",
            independent,
        )
    unused = sorted(set(range(BANK_DRAWINGS)) - set(drawing.flatten().tolist()))
    if unused:
        raise Fail(
            f"drawing {unused[0]} is never used",
            "draw from all bank.shape[1] drawings of a class (an off-by-one?)",
        )


# ---------------------------------------------------------------------------------------------
# (d) maml_conv_step

N_WAY = 5


@contextmanager
def _one_thread() -> Iterator[None]:
    """Runs the small convolutions of a check on one CPU thread (several threads spend more
    time synchronising than computing on networks this small, badly so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _conv4(seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Conv4(out_features=N_WAY, hidden_channels=4).to(DTYPE)


def _episode(seed: int, k_shot: int = 2, k_query: int = 3):
    tasks = ProceduralCharacters().sample(
        1, N_WAY, k_shot, k_query, generator=torch.Generator().manual_seed(seed), dtype=DTYPE
    )
    return tasks.x_support[0], tasks.y_support[0], tasks.x_query[0], tasks.y_query[0]


def _ce_sum(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def _mse_one_hot(logits: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(logits, F.one_hot(y, logits.shape[-1]).to(logits.dtype))


def _step(model, params, x, y, inner_lr, *, loss_fn=F.cross_entropy, first_order=False):
    return adapt_reference(
        model,
        params,
        x,
        y,
        loss_fn=loss_fn,
        inner_lr=inner_lr,
        num_inner_steps=1,
        first_order=first_order,
    )


def _query_ce(model, params, x, y) -> Tensor:
    return F.cross_entropy(functional_call(model, dict(params), (x,)), y)


@check(
    LESSON,
    points=3,
    forbid=(
        "mlcourse.algorithms.maml.adapt",
        "mlcourse.algorithms.maml.adapt_batch",
        "mlcourse.algorithms.maml.adapt_reference",
        "mlcourse.algorithms.maml._adapt",
    ),
)
def maml_conv_step(fn: Callable) -> str:
    """Checks ``fn(model, params, x_support, y_support, inner_lr) -> dict``: one second-order
    SGD step on the support cross-entropy, for one task, on a small float64 Conv4."""
    with _one_thread():
        return _maml_conv_step(fn)


def _maml_conv_step(fn: Callable) -> str:
    model = _conv4(seed=0)
    theta = params_of(model)
    cases = (  # θ itself, then parameters computed from θ with another step size and episode
        (theta, 1, 2, 0.4),
        (shifted(theta, seed=15, scale=0.05), 2, 1, 0.15),
    )
    for params, seed, k_shot, inner_lr in cases:
        _conv_step_case(fn, model, theta, params, _episode(seed, k_shot=k_shot), inner_lr)
    return (
        "one cross-entropy SGD step on a Conv4 (float64) matches "
        "mlcourse.algorithms.maml.adapt_reference from θ and from parameters computed from θ (step "
        "sizes 0.4 and 0.15), leaves the model untouched, and carries the second-order "
        "meta-gradient to every parameter"
    )


def _conv_step_case(fn, model, theta, params, episode, inner_lr: float) -> None:
    xs, ys, xq, yq = episode
    given = dict(params)
    before = snapshot(model)
    out = fn(model, params, xs, ys, inner_lr)
    expect_model_unchanged(model, before, "maml_conv_step")
    if set(params) != set(given) or any(params[n] is not given[n] for n in given):
        raise Fail(
            "maml_conv_step changed the `params` dict it was given",
            "return a new dict, e.g. `{name: p - inner_lr * g for ...}`",
        )
    if not isinstance(out, Mapping):
        raise Fail(
            f"maml_conv_step should return a dict of tensors, got {type(out).__name__}",
            "return `{name: new_tensor}` with the same names as `params`",
        )
    if set(out) != set(params):
        missing, extra = sorted(set(params) - set(out)), sorted(set(out) - set(params))
        raise Fail(
            f"the returned dict misses {missing}" if missing else f"unknown names {extra}",
            "MAML adapts every parameter: keep all the names of `params`",
        )
    ref = _step(model, params, xs, ys, inner_lr)
    wrong = {
        **step_variants(model, theta, params, xs, ys, inner_lr, loss_fn=F.cross_entropy),
        "the support loss is summed over the images, not averaged (F.cross_entropy's default "
        "is the mean)": _step(model, params, xs, ys, inner_lr, loss_fn=_ce_sum),
        "the loss is the MSE to one-hot labels, not the cross-entropy": _step(
            model, params, xs, ys, inner_lr, loss_fn=_mse_one_hot
        ),
        "only the head moved (that is ANIL); MAML adapts every parameter": {
            **params,
            **_step(model, head_params(params), xs, ys, inner_lr),
        },
    }
    hint = (
        "θ' = θ − inner_lr · ∇_θ F.cross_entropy(functional_call(model, params, (x_support,)), "
        "y_support), with θ = params"
    )
    mistake = first_match(out, wrong, same_dict)
    if mistake:
        raise Fail(mistake, hint)
    step_size_fail(out, params, ref, inner_lr, "your update")
    for name in params:
        try:
            expect_tensor(out[name], ref[name], f"adapted ['{name}']", atol=1e-8, rtol=1e-6)
        except Fail as fail:
            fail.hint = fail.hint or hint
            raise
    second = grads_of(_query_ce(model, ref, xq, yq), theta)
    first = grads_of(
        _query_ce(model, _step(model, params, xs, ys, inner_lr, first_order=True), xq, yq),
        theta,
    )
    mine = grads_of(_query_ce(model, out, xq, yq), theta)
    expect_second_order(mine, theta, second, first, "the query loss after your step")


# ---------------------------------------------------------------------------------------------
# (e) fixed_protonet_loss: find the bug


def _protonet_loss_variants(model, tasks, n_way: int) -> dict:
    """Losses of the usual wrong ProtoNet losses, keyed by (what is wrong, hint)."""
    support = embed_tasks(model, tasks.x_support)
    query = embed_tasks(model, tasks.x_query)

    def loss(protos, emb, labels, sign=-1.0, power=2, reduction="mean"):
        dist = ((emb[:, :, None] - protos[:, None]) ** 2).sum(-1)
        logits = sign * (dist if power == 2 else dist.sqrt())
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction=reduction)

    from_support = prototypes(support, tasks.y_support, n_way)
    from_query = prototypes(query, tasks.y_query, n_way)
    from_both = prototypes(
        torch.cat([support, query], 1), torch.cat([tasks.y_support, tasks.y_query], 1), n_way
    )
    leak_hint = (
        "prototypes come from the support set alone (x_support, y_support); the query labels "
        "are only for scoring, as at test time, where they are unknown"
    )
    return {
        ("the prototypes still include the query images and their labels: that is the planted "
         "bug", leak_hint): loss(from_both, query, tasks.y_query),
        ("the prototypes are computed from the query set and its labels", leak_hint):
            loss(from_query, query, tasks.y_query),
        ("the support set is classified instead of the query set",
         "embed x_query and score those logits against y_query"):
            loss(from_support, support, tasks.y_support),
        ("the logits are +distance: the closest prototype gets the smallest logit",
         "logits = minus the squared distance"): loss(from_support, query, tasks.y_query, 1.0),
        ("the distance is not squared", "Prototypical Networks use ‖f(x) − c‖²"):
            loss(from_support, query, tasks.y_query, power=1),
        ("the loss is summed over the queries, not averaged",
         "F.cross_entropy's default reduction is the mean"):
            loss(from_support, query, tasks.y_query, reduction="sum"),
        ("no gradient flows through the prototypes (the support embeddings were detached)",
         "keep the support embeddings in the graph: the network learns from both sides"):
            loss(from_support.detach(), query, tasks.y_query),
        ("the loss is summed over the tasks (each task's mean cross-entropy, added up)",
         "one mean over every query of every task: F.cross_entropy(logits.flatten(0, 1), "
         "y_query.flatten())"):
            loss(from_support, query, tasks.y_query, reduction="sum") / query.shape[1],
    }  # fmt: skip


@check(
    LESSON,
    points=1,
    forbid=(
        "mlcourse.algorithms.fewshot.protonet_loss",
        "mlcourse.algorithms.fewshot.protonet_logits",
    ),
)
def fixed_protonet_loss(fn: Callable) -> str:
    """Checks ``fn(model, tasks, n_way) -> scalar loss`` against
    :func:`mlcourse.algorithms.fewshot.protonet_loss` on a small float64 Conv4: value and
    gradients."""
    with _one_thread():
        return _fixed_protonet_loss(fn)


def _fixed_protonet_loss(fn: Callable) -> str:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = Conv4(hidden_channels=4).to(DTYPE)
    tasks = ProceduralCharacters().sample(
        2, N_WAY, 2, 3, generator=torch.Generator().manual_seed(4), dtype=DTYPE
    )
    params = params_of(model)
    before = snapshot(model)
    got = fn(model, tasks, N_WAY)
    expect_model_unchanged(model, before, "fixed_protonet_loss")
    if isinstance(got, (tuple, list)):
        raise Fail(
            f"fixed_protonet_loss should return the loss alone, got {_describe(got)}",
            "return one scalar tensor",
        )
    if not isinstance(got, Tensor):
        raise Fail(f"the loss should be a tensor, got {_describe(got)}", "no .item()")
    expected = fewshot_protonet_loss(model, tasks, n_way=N_WAY)[0]
    if got.shape == expected.shape and not _close(got, expected):
        for (what, hint), value in _protonet_loss_variants(model, tasks, N_WAY).items():
            if _close(got, value):
                raise Fail(what, hint)
    try:
        expect_tensor(got, expected, "the loss", atol=ATOL, rtol=RTOL)
    except Fail as fail:
        fail.hint = fail.hint or (
            "prototypes from the support embeddings and labels only, logits −‖f(x_q) − c‖² for "
            "the queries, F.cross_entropy against y_query averaged over every query"
        )
        raise
    mine, ref = grads_of(got, params), grads_of(expected, params)
    if all(g is None for g in mine.values()):
        raise Fail(
            "the loss does not depend on the network's parameters",
            "do not detach the embeddings or compute them under torch.no_grad()",
        )
    detached = grads_of(_protonet_loss_variants(model, tasks, N_WAY)[_DETACHED_KEY], params)
    if same_dict(mine, detached) and not same_dict(mine, ref):
        raise Fail(*_DETACHED_KEY)
    for name in params:
        expect_tensor(mine[name], ref[name], f"the gradient ['{name}']", atol=1e-8, rtol=1e-6)
    return (
        "the loss takes the prototypes from the support set and scores the queries: value and "
        "gradients match mlcourse.algorithms.fewshot.protonet_loss on a Conv4 (float64)"
    )


_DETACHED_KEY = (
    "no gradient flows through the prototypes (the support embeddings were detached)",
    "keep the support embeddings in the graph: the network learns from both sides",
)
