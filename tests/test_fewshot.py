"""Few-shot classification: the metric-based formulas against hand loops, the MAML/ANIL glue
against mlcourse.algorithms.maml's per-task loop, and a seeded learning threshold."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from mlcourse.algorithms.fewshot import (
    FullContextEmbedding,
    accuracy_ci95,
    embed_tasks,
    episode_accuracy,
    evaluate_maml,
    evaluate_matching,
    evaluate_protonet,
    maml_adapt,
    maml_classification_loss,
    maml_classification_loss_loop,
    matching_attention,
    matching_logits,
    matching_loss,
    protonet_logits,
    protonet_loss,
    prototypes,
)
from mlcourse.algorithms.maml import meta_loss, meta_loss_loop, params_of
from mlcourse.models import Conv4, head_params
from mlcourse.tasks import TaskBatch

N_WAY = 5
F64 = torch.float64


def episodes(num_tasks=3, k_shot=2, k_query=3, dtype=F64, seed=0):
    """Random 5-way episodes in the data side's format (class-major labels)."""
    g = torch.Generator().manual_seed(seed)

    def split(k):
        x = torch.randn(num_tasks, N_WAY * k, 1, 28, 28, generator=g, dtype=dtype)
        y = torch.arange(N_WAY).repeat_interleave(k).repeat(num_tasks, 1)
        return x, y

    return TaskBatch(*split(k_shot), *split(k_query))


def embeddings(num_tasks=3, k_shot=3, k_query=4, dim=6, seed=0):
    """Random support/query embeddings with labels in a random (not class-major) order."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(N_WAY).repeat_interleave(k_shot)
    y = torch.stack([labels[torch.randperm(len(labels), generator=g)] for _ in range(num_tasks)])
    s = torch.randn(num_tasks, N_WAY * k_shot, dim, generator=g, dtype=F64)
    q = torch.randn(num_tasks, k_query, dim, generator=g, dtype=F64)
    return s, y, q


def conv4(out_features=None, norm="group", dtype=F64, seed=0):
    torch.manual_seed(seed)
    return Conv4(out_features, hidden_channels=8, norm=norm).to(dtype)


def grads(loss, tensors):
    return torch.autograd.grad(loss, list(tensors))


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------
# Prototypical Networks


def test_prototypes_are_the_class_means():
    s, y, _ = embeddings()
    got = prototypes(s, y, N_WAY)
    assert got.shape == (3, N_WAY, 6)
    for t in range(3):
        for n in range(N_WAY):
            torch.testing.assert_close(got[t, n], s[t][y[t] == n].mean(0), rtol=0, atol=1e-14)


def test_prototypes_with_unequal_shots():
    s = torch.arange(8, dtype=F64).reshape(1, 4, 2)
    got = prototypes(s, torch.tensor([[1, 0, 1, 1]]), 2)
    expected = torch.tensor([[[2.0, 3.0], [(0 + 4 + 6) / 3, (1 + 5 + 7) / 3]]], dtype=F64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-14)


def test_protonet_logits_are_minus_squared_distances():
    s, y, q = embeddings()
    got = protonet_logits(s, y, q, N_WAY)
    assert got.shape == (3, 4, N_WAY)
    for t in range(3):
        for i in range(4):
            for n in range(N_WAY):
                centre = s[t][y[t] == n].mean(0)
                expected = -((q[t, i] - centre) ** 2).sum()
                assert abs(got[t, i, n].item() - expected.item()) < 1e-12


def test_protonet_is_invariant_to_the_order_of_the_support_set():
    s, y, q = embeddings()
    perm = torch.randperm(s.shape[1], generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        protonet_logits(s[:, perm], y[:, perm], q, N_WAY),
        protonet_logits(s, y, q, N_WAY),
        rtol=0,
        atol=1e-12,
    )


def test_label_errors_say_what_is_wrong():
    s, y, q = embeddings()
    with pytest.raises(ValueError, match="class 4 has no support example in task 0"):
        prototypes(s, y.clamp(max=3), N_WAY)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.4"):
        prototypes(s, y + 1, N_WAY)
    with pytest.raises(TypeError, match="integers"):
        prototypes(s, y.double(), N_WAY)
    with pytest.raises(ValueError, match="unsqueeze"):
        prototypes(s[0], y[0], N_WAY)
    with pytest.raises(ValueError, match="agree in num_tasks and embedding_dim"):
        protonet_logits(s, y, q[..., :3], N_WAY)


# ---------------------------------------------------------------------------------------------
# Matching Networks


def test_matching_attention_is_a_softmax_of_cosines():
    s, _, q = embeddings()
    got = matching_attention(s, q, temperature=0.3)
    assert got.shape == (3, 4, s.shape[1])
    torch.testing.assert_close(got.sum(-1), torch.ones(3, 4, dtype=F64), rtol=0, atol=1e-14)
    for t in range(3):
        for i in range(4):
            cos = torch.stack([F.cosine_similarity(q[t, i], s[t, j], dim=0) for j in range(15)])
            torch.testing.assert_close(got[t, i], torch.softmax(cos / 0.3, 0), rtol=0, atol=1e-14)


def test_matching_logits_are_the_log_of_the_attention_weighted_labels():
    s, y, q = embeddings()
    log_p = matching_logits(s, y, q, N_WAY, temperature=0.3)
    attention = matching_attention(s, q, temperature=0.3)
    expected = attention @ F.one_hot(y, N_WAY).to(F64)  # Σ_i a_i y_i
    torch.testing.assert_close(log_p.exp(), expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(3, 4, dtype=F64))
    perm = torch.randperm(s.shape[1], generator=torch.Generator().manual_seed(3))
    shuffled = matching_logits(s[:, perm], y[:, perm], q, N_WAY, temperature=0.3)
    torch.testing.assert_close(shuffled, log_p, rtol=0, atol=1e-12)


def test_matching_logits_stay_finite_with_a_sharp_temperature():
    s, y, q = embeddings()
    s, q = s.float(), q.float()
    s.requires_grad_()
    log_p = matching_logits(s, y, q, N_WAY, temperature=1e-3)
    assert torch.isfinite(log_p).all()  # the naive log(attention @ one_hot) gives -inf here
    (g,) = grads(F.nll_loss(log_p.flatten(0, 1), torch.zeros(12, dtype=torch.long)), [s])
    assert torch.isfinite(g).all()


def embedding_errors():
    """``(call, message)``: each function handed one mis-shaped argument."""
    s, y, q = embeddings()
    fce = FullContextEmbedding(6, num_steps=1).double()
    no_task = r"has shape \(15, 6\); expected \(num_tasks, k, embedding_dim\)"
    other_dim = r"query_emb has shape \(3, 4, 5\) but the support embeddings have \(3, 15, 6\)"
    labels = r"support_emb \(3, 15, 6\) and its labels \(3, 14\) disagree"
    return [
        (lambda: prototypes(s[0], y[0], N_WAY), "embeddings " + no_task),
        (lambda: prototypes(s, y[:, 1:], N_WAY), labels.replace("support_emb", "embeddings")),
        (lambda: protonet_logits(s, y, q[..., :5], N_WAY), other_dim),
        (lambda: protonet_logits(s[0], y, q, N_WAY), r"query_emb has shape \(3, 4, 6\) but the"),
        (lambda: matching_attention(s, q[..., :5]), other_dim),
        (lambda: matching_attention(s[0], q), r"query_emb has shape \(3, 4, 6\) but the support"),
        (lambda: matching_logits(s, y[:, 1:], q, N_WAY), labels),
        (lambda: fce(s, q[..., :5]), other_dim),
        (lambda: fce(s[0], q), r"query_emb has shape \(3, 4, 6\) but the support"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_mis_shaped_embeddings_are_refused_naming_the_argument(case):
    call, message = embedding_errors()[case]
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("temperature", [0.0, -0.5, float("nan")])
def test_matching_networks_refuse_a_temperature_that_is_not_positive(temperature):
    """Dividing by zero (or flipping the sign) would give NaN or inverted attention: refused
    with what to use instead, in the attention, the logits and the loss."""
    s, y, q = embeddings()
    fragment = f"temperature must be positive, got {temperature}: .* use 1.0"
    with pytest.raises(ValueError, match=fragment):
        matching_attention(s, q, temperature=temperature)
    with pytest.raises(ValueError, match=fragment):
        matching_logits(s, y, q, N_WAY, temperature=temperature)


def test_full_context_embeddings_shapes_and_gradients():
    torch.manual_seed(0)
    fce = FullContextEmbedding(6, num_steps=3).double()
    s, y, q = embeddings()
    s.requires_grad_()
    q.requires_grad_()
    g, f = fce(s, q)
    assert g.shape == s.shape and f.shape == q.shape
    loss = F.nll_loss(matching_logits(g, y, f, N_WAY).flatten(0, 1), torch.zeros(12).long())
    tensors = [s, q, *fce.parameters()]
    assert all(t.abs().sum() > 0 for t in grads(loss, tensors))


def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One LSTM step written out (gates i, f, g, o, as in torch.nn.LSTM)."""
    i, f, g, o = (w_ih @ x + b_ih + w_hh @ h + b_hh).chunk(4)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def test_full_context_embeddings_follow_the_papers_equations():
    """Vinyals et al., appendix A.2, transcribed one support item and one step at a time."""
    torch.manual_seed(0)
    d, steps = 6, 3
    fce = FullContextEmbedding(d, num_steps=steps).double()
    s, _, q = embeddings()
    g_got, f_got = fce(s, q)
    lstm, cell = fce.support_lstm, fce.query_cell
    forward = (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
    backward = (
        lstm.weight_ih_l0_reverse,
        lstm.weight_hh_l0_reverse,
        lstm.bias_ih_l0_reverse,
        lstm.bias_hh_l0_reverse,
    )
    for t in range(s.shape[0]):
        items = list(s[t])
        zero = torch.zeros(d, dtype=F64)
        h_fwd, h_bwd, state = [], [None] * len(items), (zero, zero)
        for x in items:  # h→_i, c→_i = LSTM(g'(x_i), h→_{i-1}, c→_{i-1})
            state = lstm_step(x, *state, *forward)
            h_fwd.append(state[0])
        state = (zero, zero)
        for i in reversed(range(len(items))):  # h←_i, c←_i = LSTM(g'(x_i), h←_{i+1}, c←_{i+1})
            state = lstm_step(items[i], *state, *backward)
            h_bwd[i] = state[0]
        g = torch.stack([h_fwd[i] + h_bwd[i] + items[i] for i in range(len(items))])
        torch.testing.assert_close(g_got[t], g, rtol=0, atol=1e-12)
        # ĥ_k, c_k = LSTM(f', [h_{k-1}, r_{k-1}], c_{k-1}); h_k = ĥ_k + f'; r = Σ a(h, g_i) g_i,
        # with the cell's weights split into the parts that read f', h and r.
        w_f, w_r = cell.weight_ih[:, :d], cell.weight_ih[:, d:]
        for i in range(q.shape[1]):
            f_prime = q[t, i]
            h, c = f_prime, zero
            for _ in range(steps):
                r = torch.softmax(g @ h, 0) @ g
                gates = w_f @ f_prime + cell.weight_hh @ h + w_r @ r + cell.bias_ih + cell.bias_hh
                i_, f_, g_, o_ = gates.chunk(4)
                c = torch.sigmoid(f_) * c + torch.sigmoid(i_) * torch.tanh(g_)
                h = torch.sigmoid(o_) * torch.tanh(c) + f_prime
            torch.testing.assert_close(f_got[t, i], h, rtol=0, atol=1e-12)


def test_full_context_embeddings_treat_each_query_on_its_own():
    torch.manual_seed(0)
    fce = FullContextEmbedding(6, num_steps=3).double()
    s, _, q = embeddings()
    g, f = fce(s, q)
    g1, f1 = fce(s, q[:, 2:3])
    torch.testing.assert_close(f1, f[:, 2:3], rtol=0, atol=1e-12)
    torch.testing.assert_close(g1, g, rtol=0, atol=0)
    _, f0 = FullContextEmbedding(6, num_steps=0).double()(s, q)
    assert torch.equal(f0, q)  # no processing step: f = f'
    with pytest.raises(ValueError, match=r"FullContextEmbedding\(4\)"):
        fce(s[..., :4], q[..., :4])


def test_matching_loss_trains_the_full_context_embeddings():
    model, tasks = conv4(), episodes()
    fce = FullContextEmbedding(model.embedding_dim, num_steps=2).double()
    loss, acc = matching_loss(model, tasks, fce=fce, temperature=0.5)
    loss.backward()
    assert all(p.grad is not None for p in [*fce.parameters(), *model.parameters()])
    assert evaluate_matching(model, tasks, fce=fce).shape == (3,)


def test_matching_loss_equals_the_formula_with_the_temperature_given_and_one_by_default():
    model, tasks = conv4(), episodes()
    s = model(tasks.x_support.flatten(0, 1)).unflatten(0, (3, 10))
    q = model(tasks.x_query.flatten(0, 1)).unflatten(0, (3, 15))
    for kw in ({}, {"temperature": 0.3}):
        loss, _ = matching_loss(model, tasks, **kw)
        log_p = matching_logits(s, tasks.y_support, q, N_WAY, temperature=kw.get("temperature", 1))
        expected = F.nll_loss(log_p.flatten(0, 1), tasks.y_query.flatten())
        assert abs(loss.item() - expected.item()) < 1e-12
    default = matching_logits(s, tasks.y_support, q, N_WAY)
    assert torch.equal(default, matching_logits(s, tasks.y_support, q, N_WAY, temperature=1.0))
    assert torch.equal(matching_attention(s, q), matching_attention(s, q, temperature=1.0))


@pytest.mark.parametrize("loss", [protonet_loss, matching_loss])
def test_metric_losses_use_the_n_way_given(loss):
    """An ``n_way`` that the episodes' labels do not fill is refused, not replaced by theirs."""
    model, tasks = conv4(), episodes()
    with pytest.raises(ValueError, match="n_way=7"):
        loss(model, tasks, n_way=7)


# ---------------------------------------------------------------------------------------------
# Metric-based losses on Conv4


@pytest.mark.parametrize("kind", ["function", "module without parameters"])
def test_metric_losses_check_episodes_against_the_data_when_the_model_has_no_parameters(kind):
    """A plain function, or a module with no parameters, works on float64 episodes."""
    model = (lambda x: x.flatten(1)) if kind == "function" else torch.nn.Flatten()
    tasks = episodes()
    for loss_fn in (protonet_loss, matching_loss):
        loss, _ = loss_fn(model, tasks)
        assert loss.dtype == F64 and torch.isfinite(loss)


@pytest.mark.parametrize("field", ["y_support", "y_query"])
def test_episode_labels_must_be_integers_and_the_error_names_them(field):
    tasks = episodes()
    bad = dataclasses.replace(tasks, **{field: getattr(tasks, field).double()})
    for loss_fn in (protonet_loss, matching_loss):
        with pytest.raises(ValueError, match=f"{field} must hold integer class labels"):
            loss_fn(conv4(), bad)


def test_protonet_loss_equals_the_formula_on_the_embeddings():
    model, tasks = conv4(), episodes()
    loss, acc = protonet_loss(model, tasks)
    s = model(tasks.x_support.flatten(0, 1)).unflatten(0, (3, 10))
    q = model(tasks.x_query.flatten(0, 1)).unflatten(0, (3, 15))
    logits = protonet_logits(s, tasks.y_support, q, N_WAY)
    expected = F.cross_entropy(logits.flatten(0, 1), tasks.y_query.flatten())
    assert abs(loss.item() - expected.item()) < 1e-12
    assert acc.item() == episode_accuracy(logits, tasks.y_query).mean().item()
    assert not acc.requires_grad


@pytest.mark.parametrize("norm", ["group", "batch"])
@pytest.mark.parametrize("method", ["protonet", "matching"])
def test_tasks_do_not_leak_into_each_other(norm, method):
    """With batch statistics, flattening the tasks would mix them: each must be alone."""
    loss_fn = protonet_loss if method == "protonet" else matching_loss
    model, tasks = conv4(norm=norm), episodes()
    together, _ = loss_fn(model, tasks)
    alone = torch.stack([loss_fn(model, tasks[t])[0] for t in range(3)]).mean()
    assert abs(together.item() - alone.item()) < 1e-12


def test_embed_tasks_accepts_a_plain_function():
    model = conv4()
    x = torch.randn(2, 4, 1, 28, 28, dtype=F64)
    torch.testing.assert_close(embed_tasks(lambda b: model(b), x), embed_tasks(model, x))


def test_metric_losses_refuse_bad_episodes():
    model, tasks = conv4(), episodes()
    bad = TaskBatch(tasks.x_support, tasks.y_support.double(), tasks.x_query, tasks.y_query)
    with pytest.raises(ValueError, match="integer class labels"):
        protonet_loss(model, bad)
    with pytest.raises(TypeError, match="float64"):
        protonet_loss(model.float(), tasks)
    with pytest.raises(TypeError, match="TaskBatch"):
        matching_loss(model.double(), (tasks.x_support, tasks.y_support))


# ---------------------------------------------------------------------------------------------
# MAML and ANIL


MAML_KW = dict(inner_lr=0.4)


@pytest.mark.parametrize(("num_inner_steps", "first_order"), [(1, False), (2, False), (1, True)])
def test_maml_classification_loss_is_meta_loss_with_cross_entropy(num_inner_steps, first_order):
    model, tasks = conv4(N_WAY), episodes(num_tasks=2, k_shot=1)
    p = params_of(model)
    kw = dict(MAML_KW, num_inner_steps=num_inner_steps, first_order=first_order)
    loss, acc = maml_classification_loss(model, p, tasks, **kw)
    loop_loss, loop_acc = maml_classification_loss_loop(model, p, tasks, **kw)
    oracle = meta_loss_loop(model, p, tasks, loss_fn=F.cross_entropy, **kw)
    assert abs(loss.item() - oracle.item()) < 1e-12
    assert abs(loop_loss.item() - oracle.item()) < 1e-12
    assert acc.item() == loop_acc.item()
    g = grads(oracle, p.values())
    assert max_diff(grads(loss, p.values()), g) < 1e-10
    assert max_diff(grads(loop_loss, p.values()), g) < 1e-10


def test_anil_adapts_only_the_head():
    model, tasks = conv4(N_WAY), episodes(num_tasks=2, k_shot=1)
    p = params_of(model)
    fast = maml_adapt(model, p, tasks.x_support, tasks.y_support, num_inner_steps=2, **MAML_KW)
    fast_anil = maml_adapt(
        model, p, tasks.x_support, tasks.y_support, num_inner_steps=2, anil=True, **MAML_KW
    )
    assert sorted(fast_anil) == ["head.bias", "head.weight"]
    assert sorted(fast) == sorted(p)
    for n in fast_anil:
        assert fast_anil[n].shape == (2, *p[n].shape)
        assert (fast_anil[n] - p[n]).abs().max() > 1e-3  # the head did move


@pytest.mark.parametrize("num_inner_steps", [1, 2])
def test_anil_is_maml_with_a_zero_step_size_for_the_body(num_inner_steps):
    """The oracle: the per-task loop adapting every parameter, the body with step size 0
    (Meta-SGD's per-parameter step sizes). Loss and meta-gradients, body included, agree."""
    model, tasks = conv4(N_WAY), episodes(num_tasks=2, k_shot=1)
    p = params_of(model)
    step_sizes = {n: torch.tensor(0.4 if n in head_params(p) else 0.0, dtype=F64) for n in p}
    oracle = meta_loss_loop(
        model,
        p,
        tasks,
        loss_fn=F.cross_entropy,
        inner_lr=step_sizes,
        num_inner_steps=num_inner_steps,
    )
    kw = dict(MAML_KW, num_inner_steps=num_inner_steps, anil=True)
    loss, _ = maml_classification_loss(model, p, tasks, **kw)
    loop_loss, _ = maml_classification_loss_loop(model, p, tasks, **kw)
    assert abs(loss.item() - oracle.item()) < 1e-12
    g, g_vec = grads(oracle, p.values()), grads(loss, p.values())
    assert max_diff(g_vec, g) < 1e-10
    assert max_diff(grads(loop_loss, p.values()), g) < 1e-10
    body = [t for n, t in zip(p, g_vec, strict=True) if n.startswith("features.")]
    assert len(body) == 16 and all(t.abs().sum() > 0 for t in body)  # it reaches the body


def test_evaluate_maml_adapts_then_scores_without_a_graph():
    model, tasks = conv4(N_WAY), episodes(num_tasks=4, k_shot=1)
    p = params_of(model)
    none = evaluate_maml(model, p, tasks, inner_lr=0.4, num_inner_steps=0)
    plain = episode_accuracy(
        model(tasks.x_query.flatten(0, 1)).unflatten(0, (4, 15)), tasks.y_query
    )
    torch.testing.assert_close(none, plain, rtol=0, atol=0)
    acc = evaluate_maml(model, p, tasks, inner_lr=0.4, num_inner_steps=3)
    assert acc.shape == (4,) and not acc.requires_grad
    assert all(t.grad is None for t in p.values())
    fast = maml_adapt(model, p, tasks.x_support, tasks.y_support, num_inner_steps=3, **MAML_KW)
    logits = torch.func.vmap(lambda q, x: torch.func.functional_call(model, q, (x,)))(
        fast, tasks.x_query
    )
    torch.testing.assert_close(acc, episode_accuracy(logits, tasks.y_query), rtol=0, atol=0)


def test_maml_loss_matches_meta_loss_in_the_vectorized_path_too():
    model, tasks = conv4(N_WAY, norm="batch"), episodes(num_tasks=2, k_shot=1)
    p = params_of(model)
    loss, _ = maml_classification_loss(model, p, tasks, **MAML_KW)
    vec = meta_loss(model, p, tasks, loss_fn=F.cross_entropy, **MAML_KW)
    assert abs(loss.item() - vec.item()) < 1e-12


# ---------------------------------------------------------------------------------------------
# Reporting


def test_accuracy_ci95_is_the_papers_formula():
    acc = torch.rand(600, generator=torch.Generator().manual_seed(0), dtype=F64)
    mean, half_width = accuracy_ci95(acc)
    assert abs(mean - 100 * acc.mean().item()) < 1e-10
    std = math.sqrt(sum((a - acc.mean().item()) ** 2 for a in acc.tolist()) / 599)
    assert abs(half_width - 100 * 1.96 * std / math.sqrt(600)) < 1e-10
    assert accuracy_ci95([1.0, 1.0]) == (100.0, 0.0)
    with pytest.raises(ValueError, match="not percentages"):
        accuracy_ci95([90.0, 95.0])
    with pytest.raises(ValueError, match="at least 2"):
        accuracy_ci95([0.5])


def test_accuracy_ci95_takes_the_closed_unit_interval_in_float64():
    """0 and 1 are accuracies, 1.5 is not; a float32 input is averaged in float64."""
    assert accuracy_ci95([0.0, 0.0]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="fractions in"):
        accuracy_ci95([1.0, 1.5])
    acc = torch.rand(600, generator=torch.Generator().manual_seed(1))  # float32
    values = acc.tolist()
    assert accuracy_ci95(acc)[0] == pytest.approx(100 * math.fsum(values) / 600, rel=1e-14)
    # a list of Python floats keeps their double precision (never a float32 tensor on the way)
    exact = torch.rand(600, generator=torch.Generator().manual_seed(2), dtype=F64).tolist()
    assert accuracy_ci95(exact)[0] == pytest.approx(100 * math.fsum(exact) / 600, rel=1e-14)


# ---------------------------------------------------------------------------------------------
# Learning


def noisy_patterns(patterns, num_tasks, generator, noise=0.8, k_shot=1, k_query=3):
    """Episodes where each class is a fixed random 28×28 pattern plus Gaussian noise."""
    picked = torch.stack(
        [torch.randperm(len(patterns), generator=generator)[:N_WAY] for _ in range(num_tasks)]
    )

    def split(k):
        clean = patterns[picked].unsqueeze(2).expand(num_tasks, N_WAY, k, 1, 28, 28)
        x = clean + noise * torch.randn(clean.shape, generator=generator)
        return x.flatten(1, 2), torch.arange(N_WAY).repeat_interleave(k).repeat(num_tasks, 1)

    return TaskBatch(*split(k_shot), *split(k_query))


def test_protonet_learns_noisy_patterns():
    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(30, 1, 28, 28, generator=g)
    test_tasks = noisy_patterns(patterns, 50, torch.Generator().manual_seed(123))
    torch.manual_seed(0)
    model = Conv4(hidden_channels=16)
    before = evaluate_protonet(model, test_tasks).mean().item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(100):
        loss, _ = protonet_loss(model, noisy_patterns(patterns, 2, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate_protonet(model, test_tasks).mean().item()
    assert before < 0.45, before  # chance is 0.2; an untrained network is not far above
    assert after > 0.85, after  # 0.92-0.95 over seeds


def test_evaluate_maml_with_anil_adapts_only_the_head():
    model, tasks = conv4(N_WAY), episodes(num_tasks=4, k_shot=1)
    p = params_of(model)
    acc = evaluate_maml(model, p, tasks, inner_lr=0.4, num_inner_steps=3, anil=True)
    head = maml_adapt(
        model, p, tasks.x_support, tasks.y_support, num_inner_steps=3, anil=True, **MAML_KW
    )
    logits = torch.func.vmap(lambda q, x: torch.func.functional_call(model, q, (x,)))(
        head, tasks.x_query
    )
    torch.testing.assert_close(acc, episode_accuracy(logits, tasks.y_query), rtol=0, atol=0)


def test_maml_classification_defaults_are_one_second_order_step():
    model, tasks = conv4(N_WAY), episodes(num_tasks=2, k_shot=1)
    p = params_of(model)
    xs, ys = tasks.x_support, tasks.y_support
    default = maml_adapt(model, p, xs, ys, **MAML_KW)
    explicit = maml_adapt(model, p, xs, ys, num_inner_steps=1, first_order=False, **MAML_KW)
    for n in p:
        assert torch.equal(default[n], explicit[n])
    (g_default,) = torch.autograd.grad(default["head.bias"].sum(), [p["features.0.0.weight"]])
    (g_explicit,) = torch.autograd.grad(explicit["head.bias"].sum(), [p["features.0.0.weight"]])
    assert torch.equal(g_default, g_explicit) and g_default.abs().sum() > 0
    loop, _ = maml_classification_loss_loop(model, p, tasks, **MAML_KW)
    one, _ = maml_classification_loss_loop(model, p, tasks, num_inner_steps=1, **MAML_KW)
    assert torch.equal(loop, one)


def test_embed_tasks_takes_feature_vectors_and_asks_for_a_task_dimension():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    x = torch.randn(2, 5, 4, dtype=F64)
    torch.testing.assert_close(embed_tasks(model, x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"x has shape \(5, 4\); expected \(num_tasks, k"):
        embed_tasks(model, x[0])


def test_full_context_embeddings_take_five_steps_by_default_and_refuse_negative_ones():
    assert FullContextEmbedding(6).num_steps == 5
    with pytest.raises(ValueError, match="num_steps must be non-negative, got -1"):
        FullContextEmbedding(6, num_steps=-1)


def test_matching_loss_checks_the_episodes_against_the_models_parameters():
    model, tasks = conv4(), episodes(dtype=torch.float32)
    with pytest.raises(TypeError, match="x_support is torch.float32 but the model's parameters"):
        matching_loss(model, tasks)


def test_a_plain_function_with_bad_episodes_gets_the_episode_checks_messages():
    """With no parameters to compare against, the episodes are still checked, with the same
    messages: not a task batch, or lists of per-task tensors that vmap cannot take."""
    model = lambda x: x.flatten(1)  # noqa: E731
    with pytest.raises(TypeError, match=r"tasks has no \['x_support'"):
        protonet_loss(model, object())
    x, y = torch.zeros(2, 1, 2, 2, dtype=F64), torch.zeros(2, dtype=torch.long)
    ragged = TaskBatch([x, x[:1]], [y, y[:1]], [x, x], [y, y])
    with pytest.raises(ValueError, match="cannot be vectorized with vmap"):
        protonet_loss(model, ragged)
