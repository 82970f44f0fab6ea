"""Few-shot classification on N-way K-shot episodes: metric-based and optimisation-based.

Metric-based methods embed the images and classify each query by its similarity to the
support set: Prototypical Networks (Snell et al., 2017) compare with the mean embedding of
each class, Matching Networks (Vinyals et al., 2016) attend over every support image.
Optimisation-based methods adapt a classifier on the support set: MAML (Finn et al., 2017)
adapts every parameter, ANIL (Raghu et al., 2020) only the head. Every function takes all
the tasks of a batch at once; nothing loops over tasks in Python except the ``*_loop``
references. Introduced in lesson 04 (``notebooks/04_few_shot_classification.ipynb``).

An episode batch is a :class:`mlcourse.tasks.TaskBatch` with ``x_support: (T, N*K, C, H, W)``,
``y_support: (T, N*K)`` integer labels in ``0..N-1``, ``x_query: (T, N*Q, C, H, W)`` and
``y_query: (T, N*Q)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from mlcourse.algorithms.maml import adapt_batch, adapt_reference
from mlcourse.models import head_params
from mlcourse.stats import ci95
from mlcourse.validation import check_model, check_params, check_tasks

Params = dict[str, Tensor]
EmbedFn = Callable[[Tensor], Tensor]

__all__ = [
    "FullContextEmbedding",
    "accuracy_ci95",
    "embed_tasks",
    "episode_accuracy",
    "evaluate_maml",
    "evaluate_matching",
    "evaluate_protonet",
    "maml_adapt",
    "maml_classification_loss",
    "maml_classification_loss_loop",
    "matching_attention",
    "matching_logits",
    "matching_loss",
    "protonet_logits",
    "protonet_loss",
    "prototypes",
]


# ---------------------------------------------------------------------------------------------
# Embedding a batch of tasks.


def embed_tasks(model: EmbedFn, x: Tensor) -> Tensor:
    """Embeds the images of every task: ``(T, M, C, H, W)`` → ``(T, M, D)``.

    When the model treats each image on its own (GroupNorm, no norm) the tasks are flattened
    into one batch of ``T * M`` images, one forward pass. When it normalises with batch
    statistics (``nn.BatchNorm*`` without running statistics, e.g. ``Conv4(norm="batch")``),
    flattening would mix the tasks' statistics, so the model is mapped over tasks with
    ``torch.func.vmap``: each task is normalised with its own statistics. A plain function
    (not an ``nn.Module``) is mapped with ``vmap`` too, as we cannot see inside it.

    Args:
        model: ``(B, C, H, W)`` images → ``(B, D)`` embeddings; an ``nn.Module`` or a function.
        x: ``(T, M, C, H, W)`` images of ``T`` tasks.

    Returns:
        ``(T, M, D)`` embeddings.

    Example:
        >>> from mlcourse.models import Conv4
        >>> embed_tasks(Conv4(hidden_channels=8), torch.zeros(3, 10, 1, 28, 28)).shape
        torch.Size([3, 10, 8])
    """
    if x.dim() < 3:
        raise ValueError(
            f"x has shape {tuple(x.shape)}; expected (num_tasks, k, *input_shape). For a "
            "single task add the task dimension with .unsqueeze(0)"
        )
    if isinstance(model, nn.Module):
        check_model(model)
        if not any(isinstance(m, _BatchNorm) for m in model.modules()):
            return model(x.flatten(0, 1)).unflatten(0, x.shape[:2])
    return vmap(model)(x)


# ---------------------------------------------------------------------------------------------
# Prototypical Networks.


def prototypes(embeddings: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """The prototype of each class: the mean embedding of its support examples.

    ``c_n = (1 / |S_n|) Σ_{i: y_i = n} e_i``, computed for all tasks at once as a matrix
    product with the one-hot labels, so the order of the support examples does not matter.

    Args:
        embeddings: ``(T, S, D)`` support embeddings.
        labels: ``(T, S)`` integer labels in ``0..n_way-1``; every class must appear in every
            task.
        n_way: number of classes.

    Returns:
        ``(T, n_way, D)`` prototypes.

    Example:
        >>> e = torch.tensor([[[0.0, 0.0], [2.0, 4.0], [1.0, 1.0]]])
        >>> prototypes(e, torch.tensor([[0, 0, 1]]), n_way=2)
        tensor([[[1., 2.],
                 [1., 1.]]])
    """
    _check_embeddings("embeddings", embeddings, labels)
    one_hot = _one_hot(labels, n_way, embeddings.dtype)  # (T, S, N)
    counts = one_hot.sum(1)  # (T, N)
    return one_hot.transpose(1, 2) @ embeddings / counts.unsqueeze(-1)


def protonet_logits(
    support_emb: Tensor, support_labels: Tensor, query_emb: Tensor, n_way: int
) -> Tensor:
    """Prototypical Networks' logits: minus the squared Euclidean distance to each prototype.

    ``logit[q, n] = -‖f(x_q) - c_n‖²``; a softmax over ``n`` gives Snell et al.'s
    ``p(y = n | x_q)``.

    Args:
        support_emb: ``(T, S, D)`` support embeddings.
        support_labels: ``(T, S)`` integer labels in ``0..n_way-1``.
        query_emb: ``(T, Q, D)`` query embeddings.
        n_way: number of classes.

    Returns:
        ``(T, Q, n_way)`` logits.

    Example:
        >>> s = torch.tensor([[[0.0, 0.0], [3.0, 0.0]]])
        >>> protonet_logits(s, torch.tensor([[0, 1]]), torch.tensor([[[1.0, 0.0]]]), n_way=2)
        tensor([[[-1., -4.]]])
    """
    _check_embeddings("query_emb", query_emb, like=support_emb)
    centres = prototypes(support_emb, support_labels, n_way)  # (T, N, D)
    return -((query_emb.unsqueeze(2) - centres.unsqueeze(1)) ** 2).sum(-1)


# ---------------------------------------------------------------------------------------------
# Matching Networks.


def matching_attention(support_emb: Tensor, query_emb: Tensor, *, temperature: float = 1.0):
    """Matching Networks' attention of each query over the support set.

    ``a(x_q, x_i) = softmax_i(cos(f(x_q), g(x_i)) / temperature)`` (Vinyals et al., eq. 2).

    Args:
        support_emb: ``(T, S, D)`` support embeddings ``g(x_i)``.
        query_emb: ``(T, Q, D)`` query embeddings ``f(x_q)``.
        temperature: divides the cosine similarities; the paper uses none (``1.0``).

    Returns:
        ``(T, Q, S)`` attention weights; each row sums to 1.

    Example:
        >>> s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        >>> matching_attention(s, torch.tensor([[[2.0, 0.0]]]), temperature=0.5)
        tensor([[[0.8808, 0.1192]]])
    """
    return _log_attention(support_emb, query_emb, temperature).exp()


def matching_logits(
    support_emb: Tensor,
    support_labels: Tensor,
    query_emb: Tensor,
    n_way: int,
    *,
    temperature: float = 1.0,
) -> Tensor:
    """Matching Networks' log-probabilities: the attention-weighted vote of the support labels.

    ``p(y = n | x_q) = Σ_i a(x_q, x_i) [y_i = n]`` (Vinyals et al., eq. 1), returned as its
    logarithm, computed stably as a ``logsumexp`` of the log-attention over each class's
    support examples. The rows are normalised log-probabilities, so ``F.nll_loss`` (or
    ``F.cross_entropy``, which leaves them unchanged) gives the training loss.

    The paper's cosine similarities lie in ``[-1, 1]``, so with ``temperature=1`` the
    attention is never sharp (5-way 1-shot: ``p ≤ 0.65``) and the loss cannot go below
    ``≈0.43``; a smaller temperature (e.g. 0.1) lets it approach 0 and often trains faster.

    Args:
        support_emb: ``(T, S, D)`` support embeddings ``g(x_i)``.
        support_labels: ``(T, S)`` integer labels in ``0..n_way-1``.
        query_emb: ``(T, Q, D)`` query embeddings ``f(x_q)``.
        n_way: number of classes.
        temperature: divides the cosine similarities (see :func:`matching_attention`).

    Returns:
        ``(T, Q, n_way)`` log-probabilities.

    Example:
        >>> s = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]]])
        >>> y = torch.tensor([[0, 1, 1]])
        >>> matching_logits(s, y, torch.tensor([[[1.0, 1.0]]]), n_way=2).exp()
        tensor([[[0.3333, 0.6667]]])
    """
    _check_embeddings("support_emb", support_emb, support_labels)
    one_hot = _one_hot(support_labels, n_way, support_emb.dtype)  # (T, S, N)
    log_attn = _log_attention(support_emb, query_emb, temperature)  # (T, Q, S)
    # log Σ_{i in class n} a_i, with -inf where the support example is not of class n.
    masked = log_attn.unsqueeze(-1).masked_fill(one_hot.unsqueeze(1) == 0, -math.inf)
    return masked.logsumexp(dim=2)


class FullContextEmbedding(nn.Module):
    """Matching Networks' full context embeddings (Vinyals et al., 2016, appendix A.2).

    Each embedding is conditioned on the whole support set of its task:

    - support: ``g(x_i) = h→_i + h←_i + g'(x_i)``, where ``h→, h←`` are the hidden states of a
      bidirectional LSTM run over the support embeddings ``g'`` in the order given (so ``g``
      depends on that order);
    - query: ``f(x) = h_K`` after ``K = num_steps`` steps of an attention LSTM,
      ``ĥ_k, c_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1})``, ``h_k = ĥ_k + f'(x)``,
      ``r_k = Σ_i softmax_i(h_kᵀ g(x_i)) g(x_i)``, starting from ``ĥ_0 = c_0 = 0`` (so
      ``h_0 = f'(x)``; ``num_steps=0`` leaves the query embeddings as they are).

    The paper's LSTM reads the concatenation ``[h_{k-1}, r_{k-1}]`` as its previous hidden
    state; since the gates are linear in their inputs, feeding ``[f'(x), r_{k-1}]`` as the input
    and ``h_{k-1}`` as the hidden state of an ``nn.LSTMCell(2D, D)`` computes the same thing.
    The paper does not give ``K``; 5 is our choice.

    Args:
        embedding_dim: ``D``, the size of the embeddings ``f'`` and ``g'``.
        num_steps: ``K``, the attention LSTM's processing steps.

    Example:
        >>> fce = FullContextEmbedding(8, num_steps=2)
        >>> g, f = fce(torch.randn(3, 5, 8), torch.randn(3, 15, 8))
        >>> g.shape, f.shape
        (torch.Size([3, 5, 8]), torch.Size([3, 15, 8]))
    """

    def __init__(self, embedding_dim: int, num_steps: int = 5):
        super().__init__()
        if num_steps < 0:
            raise ValueError(f"num_steps must be non-negative, got {num_steps}")
        self.embedding_dim, self.num_steps = embedding_dim, num_steps
        self.support_lstm = nn.LSTM(
            embedding_dim, embedding_dim, batch_first=True, bidirectional=True
        )
        self.query_cell = nn.LSTMCell(2 * embedding_dim, embedding_dim)

    def forward(self, support_emb: Tensor, query_emb: Tensor) -> tuple[Tensor, Tensor]:
        """``(T, S, D)`` support and ``(T, Q, D)`` query embeddings → the same shapes,
        in context."""
        _check_embeddings("query_emb", query_emb, like=support_emb)
        if support_emb.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"embeddings have {support_emb.shape[-1]} features but FullContextEmbedding was "
                f"built for {self.embedding_dim}: build it with "
                f"FullContextEmbedding({support_emb.shape[-1]})"
            )
        both_ways, _ = self.support_lstm(support_emb)  # (T, S, 2D)
        g = both_ways[..., : self.embedding_dim] + both_ways[..., self.embedding_dim :]
        g = g + support_emb
        t, q, d = query_emb.shape
        h, c = query_emb, query_emb.new_zeros(t * q, d)
        for _ in range(self.num_steps):
            readout = torch.softmax(h @ g.transpose(1, 2), dim=-1) @ g  # (T, Q, D)
            cell_in = torch.cat([query_emb, readout], dim=-1).flatten(0, 1)
            h_hat, c = self.query_cell(cell_in, (h.flatten(0, 1), c))
            h = h_hat.unflatten(0, (t, q)) + query_emb
        return g, h


# ---------------------------------------------------------------------------------------------
# Metric-based losses and evaluation.


def protonet_loss(model: EmbedFn, tasks, *, n_way: int | None = None) -> tuple[Tensor, Tensor]:
    """Prototypical Networks' training loss on a batch of episodes, and the query accuracy.

    Support and query images of all tasks are embedded together (see :func:`embed_tasks`
    for how batch statistics are kept per task), then every query is classified by
    :func:`protonet_logits`.

    Args:
        model: the embedding network, ``(B, C, H, W)`` → ``(B, D)``, e.g. ``Conv4()``.
        tasks: episodes with ``x_support, y_support, x_query, y_query`` (module docstring).
        n_way: number of classes; by default one more than the largest support label.

    Returns:
        ``(loss, accuracy)``: the mean cross-entropy over all queries of all tasks (scalar,
        differentiable) and the fraction of queries classified correctly (scalar, detached).

    Example:
        >>> from mlcourse.models import Conv4
        >>> from mlcourse.tasks import TaskBatch
        >>> y = torch.arange(5).repeat(2, 1)
        >>> tasks = TaskBatch(torch.randn(2, 5, 1, 28, 28), y, torch.randn(2, 5, 1, 28, 28), y)
        >>> loss, acc = protonet_loss(Conv4(hidden_channels=8), tasks)
        >>> loss.shape, 0 <= acc.item() <= 1
        (torch.Size([]), True)
    """
    logits, y_query = _protonet_query_logits(model, tasks, n_way)
    return _loss_and_accuracy(F.cross_entropy, logits, y_query)


def matching_loss(
    model: EmbedFn,
    tasks,
    *,
    n_way: int | None = None,
    temperature: float = 1.0,
    fce: FullContextEmbedding | None = None,
) -> tuple[Tensor, Tensor]:
    """Matching Networks' training loss on a batch of episodes, and the query accuracy.

    Args:
        model: the embedding network ``f' = g'``, ``(B, C, H, W)`` → ``(B, D)``.
        tasks: episodes with ``x_support, y_support, x_query, y_query`` (module docstring).
        n_way: number of classes; by default one more than the largest support label.
        temperature: divides the cosine similarities (see :func:`matching_logits`).
        fce: optional :class:`FullContextEmbedding` applied to the embeddings (train its
            parameters along with the model's).

    Returns:
        ``(loss, accuracy)``: the mean negative log-likelihood of the query labels (scalar,
        differentiable) and the fraction of queries classified correctly (scalar, detached).

    Example:
        >>> from mlcourse.models import Conv4
        >>> from mlcourse.tasks import TaskBatch
        >>> y = torch.arange(5).repeat(2, 1)
        >>> tasks = TaskBatch(torch.randn(2, 5, 1, 28, 28), y, torch.randn(2, 5, 1, 28, 28), y)
        >>> loss, acc = matching_loss(Conv4(hidden_channels=8), tasks)
        >>> loss.shape, 0 <= acc.item() <= 1
        (torch.Size([]), True)
    """
    logits, y_query = _matching_query_logits(model, tasks, n_way, temperature, fce)
    return _loss_and_accuracy(F.nll_loss, logits, y_query)


def episode_accuracy(logits: Tensor, y_query: Tensor) -> Tensor:
    """The fraction of each task's queries whose largest logit is the true class.

    Args:
        logits: ``(T, Q, n_way)`` logits (or log-probabilities).
        y_query: ``(T, Q)`` integer labels.

    Returns:
        ``(T,)`` accuracies in ``[0, 1]``.

    Example:
        >>> logits = torch.tensor([[[2.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [3.0, 1.0]]])
        >>> episode_accuracy(logits, torch.tensor([[0, 1], [0, 1]]))
        tensor([1.0000, 0.5000])
    """
    if logits.shape[:-1] != y_query.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and y_query {tuple(y_query.shape)} disagree: "
            "expected (T, Q, n_way) and (T, Q)"
        )
    return (logits.argmax(-1) == y_query).to(logits.dtype).mean(-1)


@torch.no_grad()
def evaluate_protonet(model: EmbedFn, tasks, *, n_way: int | None = None) -> Tensor:
    """Per-episode query accuracy of a Prototypical Network (no gradients).

    Args:
        model, tasks, n_way: as in :func:`protonet_loss`.

    Returns:
        ``(T,)`` accuracies in ``[0, 1]``; summarise them with :func:`accuracy_ci95`.

    Example:
        >>> from mlcourse.models import Conv4
        >>> from mlcourse.tasks import TaskBatch
        >>> y = torch.arange(5).repeat(4, 1)
        >>> tasks = TaskBatch(torch.randn(4, 5, 1, 28, 28), y, torch.randn(4, 5, 1, 28, 28), y)
        >>> evaluate_protonet(Conv4(hidden_channels=8), tasks).shape
        torch.Size([4])
    """
    return episode_accuracy(*_protonet_query_logits(model, tasks, n_way))


@torch.no_grad()
def evaluate_matching(
    model: EmbedFn,
    tasks,
    *,
    n_way: int | None = None,
    temperature: float = 1.0,
    fce: FullContextEmbedding | None = None,
) -> Tensor:
    """Per-episode query accuracy of a Matching Network (no gradients).

    Args:
        model, tasks, n_way, temperature, fce: as in :func:`matching_loss`.

    Returns:
        ``(T,)`` accuracies in ``[0, 1]``.

    Example:
        >>> from mlcourse.models import Conv4
        >>> from mlcourse.tasks import TaskBatch
        >>> y = torch.arange(5).repeat(4, 1)
        >>> tasks = TaskBatch(torch.randn(4, 5, 1, 28, 28), y, torch.randn(4, 5, 1, 28, 28), y)
        >>> evaluate_matching(Conv4(hidden_channels=8), tasks).shape
        torch.Size([4])
    """
    return episode_accuracy(*_matching_query_logits(model, tasks, n_way, temperature, fce))


# ---------------------------------------------------------------------------------------------
# MAML and ANIL for classification.


def maml_adapt(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x_support: Tensor,
    y_support: Tensor,
    *,
    inner_lr: float | Mapping[str, Tensor],
    num_inner_steps: int = 1,
    first_order: bool = False,
    anil: bool = False,
) -> Params:
    """Adapts a classifier to every task with cross-entropy gradient steps on its support set.

    This is :func:`mlcourse.algorithms.maml.adapt_batch` with ``loss_fn=F.cross_entropy``. With
    ``anil=True`` only the head (``head.*``, see :func:`mlcourse.models.head_params`) is
    adapted; the body stays the model's own parameters, shared by every task, and the
    meta-gradient still reaches it through the head's inputs.

    Args:
        model: a classifier, e.g. ``Conv4(out_features=n_way)``, without running statistics.
        params: ``{name: tensor}`` to start from, usually ``params_of(model)``.
        x_support: ``(T, N*K, C, H, W)`` support images.
        y_support: ``(T, N*K)`` integer labels.
        inner_lr: step size, a float or ``{name: tensor}`` (Meta-SGD).
        num_inner_steps: gradient steps per task.
        first_order: drop the second-order terms of the meta-gradient (FOMAML).
        anil: adapt the ``head.*`` entries of ``params`` only.

    Returns:
        ``{name: (T, *param_shape)}`` for the adapted names (all of ``params``, or its head).

    Example:
        >>> from mlcourse.algorithms.maml import params_of
        >>> from mlcourse.models import Conv4
        >>> model = Conv4(out_features=5, hidden_channels=8)
        >>> x, y = torch.randn(3, 5, 1, 28, 28), torch.arange(5).repeat(3, 1)
        >>> fast = maml_adapt(model, params_of(model), x, y, inner_lr=0.4, anil=True)
        >>> {n: tuple(p.shape) for n, p in fast.items()}
        {'head.weight': (3, 5, 8), 'head.bias': (3, 5)}
    """
    to_adapt = head_params(params) if anil else params
    return adapt_batch(
        model,
        to_adapt,
        x_support,
        y_support,
        loss_fn=F.cross_entropy,
        inner_lr=inner_lr,
        num_inner_steps=num_inner_steps,
        first_order=first_order,
    )


def maml_classification_loss(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks,
    *,
    inner_lr: float | Mapping[str, Tensor],
    num_inner_steps: int = 1,
    first_order: bool = False,
    anil: bool = False,
) -> tuple[Tensor, Tensor]:
    """The MAML (or ANIL) meta-loss of a batch of episodes, and the query accuracy.

    Each task adapts ``params`` on its support set (:func:`maml_adapt`), then classifies its
    queries with its adapted parameters; the loss is the mean query cross-entropy, which is
    :func:`mlcourse.algorithms.maml.meta_loss` with ``loss_fn=F.cross_entropy``. Calling
    ``.backward()`` on it gives the meta-gradient (second order unless ``first_order``); with
    ``anil=True`` it reaches the body through the module's own parameters.

    Args:
        model, params, inner_lr, num_inner_steps, first_order, anil: as in :func:`maml_adapt`.
        tasks: episodes with ``x_support, y_support, x_query, y_query`` (module docstring).

    Returns:
        ``(loss, accuracy)``: the meta-loss (scalar, differentiable) and the fraction of
        queries classified correctly after adaptation (scalar, detached).

    Example:
        >>> from mlcourse.algorithms.maml import params_of
        >>> from mlcourse.models import Conv4
        >>> from mlcourse.tasks import TaskBatch
        >>> model = Conv4(out_features=5, hidden_channels=8)
        >>> y = torch.arange(5).repeat(2, 1)
        >>> tasks = TaskBatch(torch.randn(2, 5, 1, 28, 28), y, torch.randn(2, 5, 1, 28, 28), y)
        >>> loss, acc = maml_classification_loss(model, params_of(model), tasks, inner_lr=0.4)
        >>> loss.backward(); model.features[0][0].weight.grad.shape
        torch.Size([8, 1, 3, 3])
    """
    check_model(model)
    x_support, y_support, x_query, y_query = check_tasks(check_params(model, params), tasks)
    adapted = maml_adapt(
        model,
        params,
        x_support,
        y_support,
        inner_lr=inner_lr,
        num_inner_steps=num_inner_steps,
        first_order=first_order,
        anil=anil,
    )
    logits = vmap(_forward(model))(adapted, x_query)
    return _loss_and_accuracy(F.cross_entropy, logits, y_query)


def maml_classification_loss_loop(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks,
    *,
    inner_lr: float | Mapping[str, Tensor],
    num_inner_steps: int = 1,
    first_order: bool = False,
    anil: bool = False,
) -> tuple[Tensor, Tensor]:
    """The per-task loop version of :func:`maml_classification_loss` (the reference).

    One task at a time with :func:`mlcourse.algorithms.maml.adapt_reference`; same arguments and
    results, kept as the oracle and as the baseline of the speed benchmark.
    """
    check_model(model)
    x_support, y_support, x_query, y_query = check_tasks(check_params(model, params), tasks)
    to_adapt = head_params(params) if anil else dict(params)
    logits = []
    for xs, ys, xq in zip(x_support, y_support, x_query, strict=True):
        adapted = adapt_reference(
            model,
            to_adapt,
            xs,
            ys,
            loss_fn=F.cross_entropy,
            inner_lr=inner_lr,
            num_inner_steps=num_inner_steps,
            first_order=first_order,
        )
        logits.append(functional_call(model, adapted, (xq,)))
    return _loss_and_accuracy(F.cross_entropy, torch.stack(logits), y_query)


def evaluate_maml(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks,
    *,
    inner_lr: float | Mapping[str, Tensor],
    num_inner_steps: int,
    anil: bool = False,
) -> Tensor:
    """Per-episode query accuracy after adapting on each support set (no meta-gradient).

    The papers adapt with more steps at test time than in training (e.g. MAML on Omniglot:
    1 step in training, 3 at test); give that number here. No graph is kept: only the inner
    gradients are taken.

    Args:
        model, params, inner_lr, anil: as in :func:`maml_adapt`.
        tasks: episodes with ``x_support, y_support, x_query, y_query`` (module docstring).
        num_inner_steps: gradient steps on each support set.

    Returns:
        ``(T,)`` accuracies in ``[0, 1]``.

    Example:
        >>> from mlcourse.algorithms.maml import params_of
        >>> from mlcourse.models import Conv4
        >>> from mlcourse.tasks import TaskBatch
        >>> model = Conv4(out_features=5, hidden_channels=8)
        >>> y = torch.arange(5).repeat(4, 1)
        >>> tasks = TaskBatch(torch.randn(4, 5, 1, 28, 28), y, torch.randn(4, 5, 1, 28, 28), y)
        >>> evaluate_maml(model, params_of(model), tasks, inner_lr=0.4, num_inner_steps=3).shape
        torch.Size([4])
    """
    check_model(model)
    x_support, y_support, x_query, y_query = check_tasks(check_params(model, params), tasks)
    with torch.no_grad():  # adapt_batch still takes the inner gradients, building no graph
        adapted = maml_adapt(
            model,
            params,
            x_support,
            y_support,
            inner_lr=inner_lr,
            num_inner_steps=num_inner_steps,
            first_order=True,
            anil=anil,
        )
        return episode_accuracy(vmap(_forward(model))(adapted, x_query), y_query)


# ---------------------------------------------------------------------------------------------
# Reporting.


def accuracy_ci95(accuracies: Tensor | Sequence[float]) -> tuple[float, float]:
    """Mean accuracy over test episodes and the half-width of its 95% confidence interval.

    The papers report ``mean ± 1.96 · std / √E`` over ``E`` test episodes (e.g. 600), in
    percent; ``std`` here is the sample standard deviation (Bessel-corrected).

    Args:
        accuracies: ``(E,)`` per-episode accuracies in ``[0, 1]``, e.g. from
            :func:`evaluate_protonet`; ``E >= 2``.

    Returns:
        ``(mean, half_width)`` in percent, as floats.

    Example:
        >>> mean, half_width = accuracy_ci95(torch.tensor([0.9, 1.0, 0.8, 1.0]))
        >>> round(mean, 2), round(half_width, 2)
        (92.5, 9.38)
    """
    acc = torch.as_tensor(accuracies, dtype=torch.float64).flatten()
    if acc.numel() < 2:
        raise ValueError(f"need at least 2 episodes for an interval, got {acc.numel()}")
    if acc.min() < 0 or acc.max() > 1:
        raise ValueError(
            "accuracies must be fractions in [0, 1] (per-episode accuracies, not percentages)"
        )
    mean, half_width = ci95(acc)
    return 100 * mean, 100 * half_width


# ---------------------------------------------------------------------------------------------
# Internals.


def _forward(model: nn.Module) -> Callable[[Params, Tensor], Tensor]:
    def one_task(p: Params, x: Tensor) -> Tensor:
        return functional_call(model, p, (x,))

    return one_task


def _loss_and_accuracy(loss_fn, logits: Tensor, y_query: Tensor) -> tuple[Tensor, Tensor]:
    loss = loss_fn(logits.flatten(0, 1), y_query.flatten())
    return loss, episode_accuracy(logits.detach(), y_query).mean()


def _episodes(model: EmbedFn, tasks, n_way: int | None):
    """Checks a batch of episodes and returns its four tensors and ``n_way``."""
    reference = None
    if isinstance(model, nn.Module):
        reference = next(iter(model.parameters()), None)
    if reference is None:  # a function, or a module without parameters: check against the data
        reference = getattr(tasks, "x_support", None)
    if not isinstance(reference, Tensor):
        reference = torch.empty(0)
    xs, ys, xq, yq = check_tasks({"reference": reference}, tasks)
    for name, y in (("y_support", ys), ("y_query", yq)):
        if y.dim() != 2 or y.is_floating_point():
            raise ValueError(
                f"{name} must hold integer class labels of shape (num_tasks, k), got "
                f"{y.dtype} {tuple(y.shape)}"
            )
    if n_way is None:
        n_way = int(ys.max()) + 1
    return xs, ys, xq, yq, n_way


def _embed_episodes(model: EmbedFn, xs: Tensor, xq: Tensor) -> tuple[Tensor, Tensor]:
    """Support and query embeddings of all tasks, from one forward pass."""
    both = embed_tasks(model, torch.cat([xs, xq], dim=1))
    return both[:, : xs.shape[1]], both[:, xs.shape[1] :]


def _protonet_query_logits(model, tasks, n_way):
    xs, ys, xq, yq, n_way = _episodes(model, tasks, n_way)
    support_emb, query_emb = _embed_episodes(model, xs, xq)
    return protonet_logits(support_emb, ys, query_emb, n_way), yq


def _matching_query_logits(model, tasks, n_way, temperature, fce):
    xs, ys, xq, yq, n_way = _episodes(model, tasks, n_way)
    support_emb, query_emb = _embed_episodes(model, xs, xq)
    if fce is not None:
        support_emb, query_emb = fce(support_emb, query_emb)
    return matching_logits(support_emb, ys, query_emb, n_way, temperature=temperature), yq


def _log_attention(support_emb: Tensor, query_emb: Tensor, temperature: float) -> Tensor:
    _check_embeddings("query_emb", query_emb, like=support_emb)
    if not temperature > 0:  # also refuses NaN
        raise ValueError(
            f"temperature must be positive, got {temperature}: it divides the cosine "
            "similarities; use 1.0 (the paper's) or a small positive value such as 0.1 for a "
            "sharper attention"
        )
    cosine = F.normalize(query_emb, dim=-1) @ F.normalize(support_emb, dim=-1).transpose(1, 2)
    return torch.log_softmax(cosine / temperature, dim=-1)


def _one_hot(labels: Tensor, n_way: int, dtype: torch.dtype) -> Tensor:
    """``(T, S)`` labels → ``(T, S, n_way)`` one-hot, checking that every class is present."""
    if labels.is_floating_point():
        raise TypeError(f"labels must be integers, got {labels.dtype}: use .long()")
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_way):
        raise ValueError(
            f"labels must lie in 0..{n_way - 1} (n_way={n_way}), got values from "
            f"{int(labels.min())} to {int(labels.max())}"
        )
    one_hot = F.one_hot(labels, n_way).to(dtype)
    missing = one_hot.sum(1) == 0  # (T, N)
    if missing.any():
        task, cls = (int(i) for i in missing.nonzero()[0])
        raise ValueError(
            f"class {cls} has no support example in task {task}: every one of the n_way={n_way} "
            "classes needs at least one (is n_way right?)"
        )
    return one_hot


def _check_embeddings(
    name: str, emb: Tensor, labels: Tensor | None = None, *, like: Tensor | None = None
) -> None:
    if emb.dim() != 3:
        raise ValueError(
            f"{name} has shape {tuple(emb.shape)}; expected (num_tasks, k, embedding_dim). For "
            "a single task add the task dimension with .unsqueeze(0)"
        )
    if labels is not None and labels.shape != emb.shape[:2]:
        raise ValueError(
            f"{name} {tuple(emb.shape)} and its labels {tuple(labels.shape)} disagree: expected "
            "(num_tasks, k, D) and (num_tasks, k)"
        )
    if like is not None and (like.dim() != 3 or like.shape[::2] != emb.shape[::2]):
        raise ValueError(
            f"{name} has shape {tuple(emb.shape)} but the support embeddings have "
            f"{tuple(like.shape)}: they must agree in num_tasks and embedding_dim"
        )
