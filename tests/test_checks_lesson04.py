"""Lesson 04's checks accept the reference answers and reject every known-wrong one."""

import pytest
import torch
import torch.nn.functional as F
from own import own

from mlcourse.algorithms import fewshot
from mlcourse.algorithms.fewshot import maml_adapt
from mlcourse.course.checks import lesson04
from mlcourse.models import head_params
from mlcourse.tasks import episodes

reference_logits = own(fewshot.protonet_logits)
protonet_loss = own(fewshot.protonet_loss)
prototypes = own(fewshot.prototypes)
episodes_from_images = own(episodes.episodes_from_images)
sample_bank_episodes = own(episodes.sample_bank_episodes)


def _verdict(result):
    return result.message + " | hint: " + (result.hint or "")


def _assert_rejected(result, expected):
    assert not result.passed, "a wrong answer passed"
    assert expected in _verdict(result), _verdict(result)
    assert result.hint, f"no hint: {_verdict(result)}"


# ---------------------------------------------------------------------------------------------
# (a) protonet_logits


def logits_reference(support_emb, y_support, query_emb, n_way):
    return reference_logits(support_emb, y_support, query_emb, n_way)


def logits_loop(support_emb, y_support, query_emb, n_way):
    """Also right: a loop over classes with boolean masks, and torch.cdist."""
    protos = torch.stack(
        [
            torch.stack([s[y == n].mean(0) for n in range(n_way)])
            for s, y in zip(support_emb, y_support, strict=True)
        ]
    )
    return -(torch.cdist(query_emb, protos) ** 2)


def logits_expanded(support_emb, y_support, query_emb, n_way):
    """Also right: −‖q‖² + 2 q·c − ‖c‖² with one-hot prototypes."""
    one_hot = F.one_hot(y_support, n_way).to(support_emb.dtype)
    protos = one_hot.transpose(1, 2) @ support_emb / one_hot.sum(1)[..., None]
    q2 = (query_emb**2).sum(-1, keepdim=True)
    c2 = (protos**2).sum(-1)[:, None]
    return -(q2 - 2 * query_emb @ protos.transpose(1, 2) + c2)


def _protos(support_emb, y_support, n_way):
    one_hot = F.one_hot(y_support, n_way).to(support_emb.dtype)
    return one_hot.transpose(1, 2) @ support_emb / one_hot.sum(1)[..., None]


def _sqdist(query_emb, protos):
    return ((query_emb[:, :, None] - protos[:, None]) ** 2).sum(-1)


def logits_stub(support_emb, y_support, query_emb, n_way):
    raise NotImplementedError()


def logits_plus_distance(s, y, q, n):
    return _sqdist(q, _protos(s, y, n))


def logits_not_squared(s, y, q, n):
    return -_sqdist(q, _protos(s, y, n)).sqrt()


def logits_softmax(s, y, q, n):
    return (-_sqdist(q, _protos(s, y, n))).softmax(-1)


def logits_log_softmax(s, y, q, n):
    return (-_sqdist(q, _protos(s, y, n))).log_softmax(-1)


def logits_sum_prototypes(s, y, q, n):
    return -_sqdist(q, F.one_hot(y, n).to(s.dtype).transpose(1, 2) @ s)


def logits_mean_over_support(s, y, q, n):
    return -_sqdist(q, s.mean(1, keepdim=True).expand(-1, n, -1))


def logits_class_major_reshape(s, y, q, n):
    t, num, d = s.shape
    return -_sqdist(q, s.reshape(t, n, num // n, d).mean(2))


def logits_interleaved_reshape(s, y, q, n):
    t, num, d = s.shape
    return -_sqdist(q, s.reshape(t, num // n, n, d).mean(1))


def logits_cosine(s, y, q, n):
    return F.normalize(q, dim=-1) @ F.normalize(_protos(s, y, n), dim=-1).transpose(1, 2)


def logits_dot(s, y, q, n):
    return q @ _protos(s, y, n).transpose(1, 2)


def logits_transposed(s, y, q, n):
    return -_sqdist(q, _protos(s, y, n)).transpose(1, 2)


def logits_float32(s, y, q, n):
    return -_sqdist(q, _protos(s, y, n)).float()


def logits_detached(s, y, q, n):
    return -_sqdist(q.detach(), _protos(s.detach(), y, n))


def logits_support_detached(s, y, q, n):
    return -_sqdist(q, _protos(s.detach(), y, n))


def logits_numpy(s, y, q, n):
    return -_sqdist(q, _protos(s, y, n)).detach().numpy()


def logits_in_place(s, y, q, n):
    y[:] = y.sort(dim=1).values  # "sorts" the labels, breaking their pairing with s
    return -_sqdist(q, _protos(s, y, n))


def logits_query_prototypes(s, y, q, n):
    """Prototypes from the query set (the labels are only valid for the support set)."""
    return -_sqdist(q, q[:, :n])


def logits_first_task_labels(s, y, q, n):
    """Groups every task's support set by the labels of task 0."""
    return -_sqdist(q, _protos(s, y[:1].expand(s.shape[0], -1), n))


def logits_mean_over_dim(s, y, q, n):
    return -((q[:, :, None] - _protos(s, y, n)[:, None]) ** 2).mean(-1)


def logits_equal_shots(s, y, q, n):
    """Divides the class sums by S / n_way: right only when every class has as many shots."""
    sums = F.one_hot(y, n).to(s.dtype).transpose(1, 2) @ s
    return -_sqdist(q, sums / (s.shape[1] // n))


@pytest.mark.parametrize("answer", [logits_reference, logits_loop, logits_expanded])
def test_protonet_logits_accepts_right_answers(answer):
    result = lesson04.protonet_logits(answer)
    assert result.passed, _verdict(result)


WRONG_LOGITS = {
    logits_stub: "not implemented yet",
    logits_plus_distance: "+distance",
    logits_not_squared: "not squared",
    logits_softmax: "softmax probabilities",
    logits_log_softmax: "constant per query",
    logits_sum_prototypes: "sums",
    logits_mean_over_support: "same prototype",
    logits_class_major_reshape: "ordered class-major",
    logits_interleaved_reshape: "ordered interleaved",
    logits_cosine: "cosine",
    logits_dot: "dot products",
    logits_transposed: "(T, n_way, Q)",
    logits_float32: "dtype",
    logits_detached: "do not depend on the embeddings",
    logits_support_detached: "do not depend on support_emb",
    logits_numpy: "should return a tensor",
    logits_in_place: "in place",
    logits_query_prototypes: "differs from the reference",
    logits_first_task_labels: "its own labels",
    logits_mean_over_dim: "averaged over the embedding dimension",
    logits_equal_shots: "equal shots assumed",
}


@pytest.mark.parametrize("answer", list(WRONG_LOGITS), ids=lambda f: f.__name__)
def test_protonet_logits_rejects_known_wrong_answers(answer):
    _assert_rejected(lesson04.protonet_logits(answer), WRONG_LOGITS[answer])


# ---------------------------------------------------------------------------------------------
# (b) class_major_split


def split_reference(images, k_shot):
    b = episodes_from_images(images, torch.zeros(images.shape[:2]), k_shot)
    return b.x_support, b.y_support, b.x_query, b.y_query


def split_by_hand(images, k_shot):
    """Also right: reshape and arange."""
    t, n, per_class = images.shape[:3]
    rest = images.shape[3:]
    k_query = per_class - k_shot
    xs = images[:, :, :k_shot].reshape(t, n * k_shot, *rest)
    xq = images[:, :, k_shot:].reshape(t, n * k_query, *rest)
    ys = torch.arange(n).repeat_interleave(k_shot).repeat(t, 1)
    yq = torch.arange(n).repeat_interleave(k_query).repeat(t, 1)
    return xs, ys, xq, yq


def _with(**changes):
    def answer(images, k_shot):
        xs, ys, xq, yq = split_reference(images, k_shot)
        out = {"xs": xs, "ys": ys, "xq": xq, "yq": yq}
        for key, make in changes.items():
            out[key] = make(images, k_shot, out)
        return out["xs"], out["ys"], out["xq"], out["yq"]

    answer.__name__ = "split_" + "_".join(changes)
    return answer


def split_stub(images, k_shot):
    raise NotImplementedError()


def split_swapped(images, k_shot):
    xs, ys, xq, yq = split_reference(images, k_shot)
    return xq, yq, xs, ys


def split_shot_major(images, k_shot):
    xs, ys, xq, yq = split_reference(images, k_shot)
    t, n = images.shape[:2]
    xs = images[:, :, :k_shot].transpose(1, 2).flatten(1, 2)
    xq = images[:, :, k_shot:].transpose(1, 2).flatten(1, 2)
    return xs, ys, xq, yq


def split_query_overlaps(images, k_shot):
    xs, ys, _, yq = split_reference(images, k_shot)
    k_query = images.shape[2] - k_shot
    xq = images[:, :, :k_query].flatten(1, 2)  # the first drawings again
    return xs, ys, xq, yq


def split_last_drawings_as_support(images, k_shot):
    xs, ys, xq, yq = split_reference(images, k_shot)
    xs = images[:, :, -k_shot:].flatten(1, 2)
    return xs, ys, xq, yq


def split_tasks_mixed(images, k_shot):
    xs, ys, xq, yq = split_reference(images, k_shot)
    return xs.flip(0), ys, xq, yq


def split_tuple_of_3(images, k_shot):
    return split_reference(images, k_shot)[:3]


def split_in_place(images, k_shot):
    out = split_reference(images, k_shot)
    images.zero_()
    return out


def split_as_taskbatch(images, k_shot):
    return episodes_from_images(images, torch.zeros(images.shape[:2]), k_shot)


@pytest.mark.parametrize("answer", [split_reference, split_by_hand])
def test_class_major_split_accepts_right_answers(answer):
    result = lesson04.class_major_split(answer)
    assert result.passed, _verdict(result)


WRONG_SPLITS = [
    (split_stub, "not implemented yet"),
    (split_swapped, "swapped"),
    (split_shot_major, "drawing by drawing"),
    (split_query_overlaps, "also in the support set"),
    (split_last_drawings_as_support, "wrong drawings"),
    (split_tasks_mixed, "mixes the tasks"),
    (split_tuple_of_3, "should return 4 tensors"),
    (split_in_place, "in place"),
    (split_as_taskbatch, "should return 4 tensors"),
    (
        _with(ys=lambda im, k, o: torch.arange(im.shape[1]).repeat(k).repeat(im.shape[0], 1)),
        "repeat_interleave",
    ),
    (_with(ys=lambda im, k, o: o["ys"].float()), "int64"),
    (_with(ys=lambda im, k, o: o["ys"][0]), "one row of labels per task"),
    (_with(yq=lambda im, k, o: o["yq"].flip(1)), "not class-major"),
    (_with(xs=lambda im, k, o: o["xs"].float()), "dtype"),
    (_with(xs=lambda im, k, o: o["xs"].squeeze(2)), "flatten"),
    # the query labels built with k_shot repeats, as for the support set
    (
        _with(
            yq=lambda im, k, o: (
                torch.arange(im.shape[1]).repeat_interleave(k).expand(im.shape[0], -1)
            )
        ),
        "repeat each label k_query",
    ),
]


@pytest.mark.parametrize(
    ("answer", "expected"), WRONG_SPLITS, ids=[a.__name__ for a, _ in WRONG_SPLITS]
)
def test_class_major_split_rejects_known_wrong_answers(answer, expected):
    _assert_rejected(lesson04.class_major_split(answer), expected)


# ---------------------------------------------------------------------------------------------
# (c) sample_episodes


def sample_reference(bank, num_tasks, n_way, k_shot, k_query, generator):
    b = sample_bank_episodes(bank, num_tasks, n_way, k_shot, k_query, generator=generator)
    return b.x_support, b.y_support, b.x_query, b.y_query


def sample_with_randperm(bank, num_tasks, n_way, k_shot, k_query, generator):
    """Also right: a loop over tasks with randperm."""
    per_class = k_shot + k_query
    episodes = []
    for _ in range(num_tasks):
        classes = torch.randperm(bank.shape[0], generator=generator)[:n_way]
        picks = torch.stack(
            [torch.randperm(bank.shape[1], generator=generator)[:per_class] for _ in classes]
        )
        episodes.append(bank[classes[:, None], picks])
    return split_by_hand(torch.stack(episodes), k_shot)


def _sampler(choose_classes, choose_drawings, *, labels=None, name):
    """A sampler built from a way of drawing the classes (T, N) and the drawings (T, N, K+Q)."""

    def answer(bank, num_tasks, n_way, k_shot, k_query, generator):
        classes = choose_classes(bank, num_tasks, n_way, generator)
        picks = choose_drawings(bank, classes, k_shot + k_query, generator)
        xs, ys, xq, yq = split_by_hand(bank[classes[..., None], picks], k_shot)
        if labels is not None:
            ys = labels(n_way, k_shot).expand(num_tasks, -1)
        return xs, ys, xq, yq

    answer.__name__ = name
    return answer


def classes_right(bank, t, n, g):
    return torch.rand(t, bank.shape[0], generator=g).argsort(-1)[:, :n]


def drawings_right(bank, classes, m, g):
    return torch.rand(*classes.shape, bank.shape[1], generator=g).argsort(-1)[..., :m]


def classes_with_replacement(bank, t, n, g):
    return torch.randint(bank.shape[0], (t, n), generator=g)


def classes_same_for_all(bank, t, n, g):
    return torch.randperm(bank.shape[0], generator=g)[:n].expand(t, -1)


def classes_sorted(bank, t, n, g):
    return classes_right(bank, t, n, g).sort(-1).values


def classes_off_by_one(bank, t, n, g):
    return torch.rand(t, bank.shape[0] - 1, generator=g).argsort(-1)[:, :n]


def classes_no_generator(bank, t, n, g):
    return torch.rand(t, bank.shape[0]).argsort(-1)[:, :n]


def drawings_with_replacement(bank, classes, m, g):
    return torch.randint(bank.shape[1], (*classes.shape, m), generator=g)


def drawings_first(bank, classes, m, g):
    return torch.arange(m).expand(*classes.shape, m)


def drawings_off_by_one(bank, classes, m, g):
    return torch.rand(*classes.shape, bank.shape[1] - 1, generator=g).argsort(-1)[..., :m]


def drawings_no_generator(bank, classes, m, g):
    return torch.rand(*classes.shape, bank.shape[1]).argsort(-1)[..., :m]


def sample_query_reuses_support(bank, num_tasks, n_way, k_shot, k_query, generator):
    classes = classes_right(bank, num_tasks, n_way, generator)
    picks = drawings_right(bank, classes, max(k_shot, k_query), generator)
    xs = bank[classes[..., None], picks[..., :k_shot]].flatten(1, 2)
    xq = bank[classes[..., None], picks[..., :k_query]].flatten(1, 2)
    ys = torch.arange(n_way).repeat_interleave(k_shot).expand(num_tasks, -1)
    yq = torch.arange(n_way).repeat_interleave(k_query).expand(num_tasks, -1)
    return xs, ys, xq, yq


def sample_labels_not_matching_images(bank, num_tasks, n_way, k_shot, k_query, generator):
    """Images class-major, labels interleaved."""
    xs, ys, xq, yq = sample_reference(bank, num_tasks, n_way, k_shot, k_query, generator)
    return xs, torch.arange(n_way).repeat(k_shot).expand(num_tasks, -1), xq, yq


def sample_images_interleaved(bank, num_tasks, n_way, k_shot, k_query, generator):
    """Images and labels both interleaved: consistent, but not the course's layout."""
    classes = classes_right(bank, num_tasks, n_way, generator)
    picks = drawings_right(bank, classes, k_shot + k_query, generator)
    images = bank[classes[..., None], picks]
    xs = images[:, :, :k_shot].transpose(1, 2).flatten(1, 2)
    xq = images[:, :, k_shot:].transpose(1, 2).flatten(1, 2)
    ys = torch.arange(n_way).repeat(k_shot).expand(num_tasks, -1)
    yq = torch.arange(n_way).repeat(k_query).expand(num_tasks, -1)
    return xs, ys, xq, yq


def sample_class_ids_as_labels(bank, num_tasks, n_way, k_shot, k_query, generator):
    classes = classes_right(bank, num_tasks, n_way, generator)
    picks = drawings_right(bank, classes, k_shot + k_query, generator)
    xs, _, xq, _ = split_by_hand(bank[classes[..., None], picks], k_shot)
    return xs, classes.repeat_interleave(k_shot, 1), xq, classes.repeat_interleave(k_query, 1)


def drawings_shared_by_classes(bank, classes, m, g):
    """One random order of the drawings per task, used for all of its classes."""
    order = torch.rand(classes.shape[0], 1, bank.shape[1], generator=g).argsort(-1)
    return order[..., :m].expand(*classes.shape, m)


def drawings_shared_by_tasks(bank, classes, m, g):
    """One random order per class position, used by every task."""
    order = torch.rand(1, classes.shape[1], bank.shape[1], generator=g).argsort(-1)
    return order[..., :m].expand(*classes.shape, m)


def sample_stub(bank, num_tasks, n_way, k_shot, k_query, generator):
    raise NotImplementedError()


def sample_normalises_in_place(bank, num_tasks, n_way, k_shot, k_query, generator):
    bank /= bank.max()
    return sample_reference(bank, num_tasks, n_way, k_shot, k_query, generator)


def sample_float64(bank, num_tasks, n_way, k_shot, k_query, generator):
    xs, ys, xq, yq = sample_reference(bank, num_tasks, n_way, k_shot, k_query, generator)
    return xs.double(), ys, xq.double(), yq


def sample_single_episode(bank, num_tasks, n_way, k_shot, k_query, generator):
    xs, ys, xq, yq = sample_reference(bank, 1, n_way, k_shot, k_query, generator)
    return xs[0], ys[0], xq[0], yq[0]


@pytest.mark.parametrize(
    "answer",
    [
        sample_reference,
        sample_with_randperm,
        _sampler(classes_right, drawings_right, name="sample_argsort"),
    ],
    ids=lambda f: f.__name__,
)
def test_sample_episodes_accepts_right_answers(answer):
    result = lesson04.sample_episodes(answer)
    assert result.passed, _verdict(result)


def _pair(classes, drawings):
    return _sampler(classes, drawings, name=f"{classes.__name__}+{drawings.__name__}")


WRONG_SAMPLERS = [
    (sample_stub, "not implemented yet"),
    (_pair(classes_with_replacement, drawings_right), "uses a class twice"),
    (_pair(classes_same_for_all, drawings_right), "every task uses the same classes"),
    (_pair(classes_sorted, drawings_right), "order of the class ids"),
    (_pair(classes_off_by_one, drawings_right), "never drawn"),
    (_pair(classes_no_generator, drawings_right), "identically seeded"),
    (_pair(classes_right, drawings_with_replacement), "support and the query"),
    (_pair(classes_right, drawings_first), "always the first drawings"),
    (_pair(classes_right, drawings_off_by_one), "never used"),
    (_pair(classes_right, drawings_no_generator), "identically seeded"),
    (
        _sampler(
            classes_right,
            drawings_right,
            labels=lambda n, k: torch.arange(n).repeat_interleave(k).float(),
            name="float_labels",
        ),
        "int64",
    ),
    (sample_query_reuses_support, "support and the query"),
    (sample_labels_not_matching_images, "interleaved"),
    (sample_images_interleaved, "interleaved"),
    (sample_class_ids_as_labels, "not class-major"),
    (sample_normalises_in_place, "in place"),
    (sample_float64, "dtype"),
    (sample_single_episode, "has shape"),
    (_pair(classes_right, drawings_shared_by_classes), "shared by the classes"),
    (_pair(classes_right, drawings_shared_by_tasks), "shared by the tasks"),
]


@pytest.mark.parametrize(
    ("answer", "expected"), WRONG_SAMPLERS, ids=[a.__name__ for a, _ in WRONG_SAMPLERS]
)
def test_sample_episodes_rejects_known_wrong_answers(answer, expected):
    _assert_rejected(lesson04.sample_episodes(answer), expected)


def test_labels_that_do_not_follow_their_images_are_named():
    """Class-major labels, but the images of label 0 are drawn from several classes."""

    def answer(bank, num_tasks, n_way, k_shot, k_query, generator):
        xs, ys, xq, yq = sample_reference(bank, num_tasks, n_way, k_shot, k_query, generator)
        return xs, ys, xq.flip(1), yq

    _assert_rejected(lesson04.sample_episodes(answer), "come from different classes")


# ---------------------------------------------------------------------------------------------
# (d) maml_conv_step


def step_autograd(model, params, x_support, y_support, inner_lr):
    loss = F.cross_entropy(torch.func.functional_call(model, params, (x_support,)), y_support)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    return {n: p - inner_lr * g for (n, p), g in zip(params.items(), grads, strict=True)}


def step_vectorized(model, params, x_support, y_support, inner_lr):
    """Also right: mlcourse.algorithms.fewshot.maml_adapt on a batch of one task."""
    fast = maml_adapt(model, params, x_support[None], y_support[None], inner_lr=inner_lr)
    return {n: p[0] for n, p in fast.items()}


def step_func_grad(model, params, x_support, y_support, inner_lr):
    """Also right: torch.func.grad keeps the graph to θ."""

    def loss(p):
        return F.cross_entropy(torch.func.functional_call(model, p, (x_support,)), y_support)

    g = torch.func.grad(loss)(params)
    return {n: p - inner_lr * g[n] for n, p in params.items()}


def _step_with(*, create_graph=True, sign=1.0, reduction="mean", detach=False, head_only=False):
    def answer(model, params, x_support, y_support, inner_lr):
        names = [n for n in params if not head_only or n.startswith("head.")]
        loss = F.cross_entropy(
            torch.func.functional_call(model, params, (x_support,)), y_support, reduction=reduction
        )
        grads = dict(
            zip(
                names,
                torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph),
                strict=True,
            )
        )
        new = dict(params)
        for n in names:
            new[n] = params[n] - sign * inner_lr * grads[n]
        if detach:
            new = {n: p.detach() for n, p in new.items()}
        return new

    return answer


def step_stub(model, params, x_support, y_support, inner_lr):
    raise NotImplementedError()


def step_in_place(model, params, x_support, y_support, inner_lr):
    fast = step_autograd(model, params, x_support, y_support, inner_lr)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(fast[n])
    return fast


def step_mutates_dict(model, params, x_support, y_support, inner_lr):
    fast = step_autograd(model, params, x_support, y_support, inner_lr)
    params.update(fast)
    return params


def step_no_step(model, params, x_support, y_support, inner_lr):
    return dict(params)


def step_mse(model, params, x_support, y_support, inner_lr):
    logits = torch.func.functional_call(model, params, (x_support,))
    loss = F.mse_loss(logits, F.one_hot(y_support, logits.shape[-1]).to(logits.dtype))
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    return {n: p - inner_lr * g for (n, p), g in zip(params.items(), grads, strict=True)}


def step_head_dict_only(model, params, x_support, y_support, inner_lr):
    head = head_params(params)
    fast = _step_with(head_only=True)(model, params, x_support, y_support, inner_lr)
    return {n: fast[n] for n in head}


def step_list(model, params, x_support, y_support, inner_lr):
    return list(step_autograd(model, params, x_support, y_support, inner_lr).values())


def step_float32(model, params, x_support, y_support, inner_lr):
    return {
        n: p.float()
        for n, p in step_autograd(model, params, x_support, y_support, inner_lr).items()
    }


def step_model_gradient(model, params, x_support, y_support, inner_lr):
    """Runs the model on its own parameters (`model(x)`), whatever `params` holds."""
    loss = F.cross_entropy(model(x_support), y_support)
    grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    return {n: p - inner_lr * g for (n, p), g in zip(params.items(), grads, strict=True)}


def step_hard_coded_lr(model, params, x_support, y_support, inner_lr):
    """The lesson's step size, 0.4, whatever inner_lr is."""
    return step_autograd(model, params, x_support, y_support, 0.4)


def step_two_steps(model, params, x_support, y_support, inner_lr):
    once = step_autograd(model, params, x_support, y_support, inner_lr)
    return step_autograd(model, once, x_support, y_support, inner_lr)


@pytest.mark.parametrize("answer", [step_autograd, step_vectorized, step_func_grad])
def test_maml_conv_step_accepts_right_answers(answer):
    result = lesson04.maml_conv_step(answer)
    assert result.passed, _verdict(result)


WRONG_STEPS = [
    (step_stub, "not implemented yet"),
    (step_in_place, "in-place"),
    (step_mutates_dict, "changed the `params` dict"),
    (step_no_step, "no step was taken"),
    (step_mse, "MSE"),
    (step_list, "should return a dict"),
    (step_head_dict_only, "misses"),
    (step_float32, "dtype"),
    (step_two_steps, "differs from the reference"),
    (_step_with(sign=-1.0), "wrong sign"),
    (_step_with(reduction="sum"), "summed"),
    (_step_with(head_only=True), "ANIL"),
    (_step_with(create_graph=False), "first-order"),
    (_step_with(detach=True), "do not depend on θ"),
    (step_model_gradient, "model's own parameters"),
    (step_hard_coded_lr, "step of size 0.4 in the right direction, but inner_lr = 0.15"),
]


@pytest.mark.parametrize(
    ("answer", "expected"), WRONG_STEPS, ids=[str(i) for i in range(len(WRONG_STEPS))]
)
def test_maml_conv_step_rejects_known_wrong_answers(answer, expected):
    _assert_rejected(lesson04.maml_conv_step(answer), expected)


def test_every_check_runs_in_seconds():
    import time

    for check, answer in [
        (lesson04.protonet_logits, logits_reference),
        (lesson04.class_major_split, split_reference),
        (lesson04.sample_episodes, sample_reference),
        (lesson04.maml_conv_step, step_autograd),
        (lesson04.fixed_protonet_loss, loss_reference),
    ]:
        start = time.perf_counter()
        assert check(answer).passed
        assert time.perf_counter() - start < 30  # a few seconds, on a busy shared CPU too


# ---------------------------------------------------------------------------------------------
# (e) fixed_protonet_loss


def _loss_from(*, protos_from="support", score="query", sign=-1.0, power=2, reduction="mean",
               detach_support=False, detach_all=False):  # fmt: skip
    def answer(model, tasks, n_way):
        support = fewshot.embed_tasks(model, tasks.x_support)
        query = fewshot.embed_tasks(model, tasks.x_query)
        if detach_support:
            support = support.detach()
        if detach_all:
            support, query = support.detach(), query.detach()
        sets = {
            "support": (support, tasks.y_support),
            "query": (query, tasks.y_query),
            "both": (
                torch.cat([support, query], 1),
                torch.cat([tasks.y_support, tasks.y_query], 1),
            ),
        }
        protos = prototypes(*sets[protos_from], n_way)
        emb, labels = sets[score]
        dist = ((emb[:, :, None] - protos[:, None]) ** 2).sum(-1)
        logits = sign * (dist if power == 2 else dist.sqrt())
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction=reduction)

    return answer


def loss_summed_over_tasks(model, tasks, n_way):
    """Each task's mean cross-entropy, added up."""
    support = fewshot.embed_tasks(model, tasks.x_support)
    query = fewshot.embed_tasks(model, tasks.x_query)
    protos = prototypes(support, tasks.y_support, n_way)
    logits = -((query[:, :, None] - protos[:, None]) ** 2).sum(-1)
    return sum(F.cross_entropy(lt, yt) for lt, yt in zip(logits, tasks.y_query, strict=True))


def loss_reference(model, tasks, n_way):
    return protonet_loss(model, tasks, n_way=n_way)[0]


def loss_stub(model, tasks, n_way):
    raise NotImplementedError()


def loss_with_accuracy(model, tasks, n_way):
    return protonet_loss(model, tasks, n_way=n_way)


def loss_item(model, tasks, n_way):
    return loss_reference(model, tasks, n_way).item()


def loss_optimizer_step(model, tasks, n_way):
    loss = loss_reference(model, tasks, n_way)
    torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()
    loss.backward(retain_graph=True)
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    return loss


@pytest.mark.parametrize("answer", [loss_reference, _loss_from()], ids=["reference", "by_hand"])
def test_fixed_protonet_loss_accepts_right_answers(answer):
    result = lesson04.fixed_protonet_loss(answer)
    assert result.passed, _verdict(result)


WRONG_LOSSES = [
    (loss_stub, "not implemented yet"),
    (_loss_from(protos_from="both"), "planted bug"),
    (_loss_from(protos_from="query"), "computed from the query set"),
    (_loss_from(score="support"), "support set is classified"),
    (_loss_from(sign=1.0), "+distance"),
    (_loss_from(power=1), "not squared"),
    (_loss_from(reduction="sum"), "summed"),
    (_loss_from(detach_support=True), "no gradient flows through the prototypes"),
    (_loss_from(detach_all=True), "does not depend on the network"),
    (loss_with_accuracy, "loss alone"),
    (loss_item, "should be a tensor"),
    (loss_optimizer_step, "in-place"),
    (loss_summed_over_tasks, "summed over the tasks"),
]


@pytest.mark.parametrize(
    ("answer", "expected"), WRONG_LOSSES, ids=[str(i) for i in range(len(WRONG_LOSSES))]
)
def test_fixed_protonet_loss_rejects_known_wrong_answers(answer, expected):
    _assert_rejected(lesson04.fixed_protonet_loss(answer), expected)
