"""MAML-RL's building blocks on 2D navigation: rollouts, the batched inner step against a
per-goal loop, second order against first order, and the evaluation protocol."""

import dataclasses
import math

import pytest
import torch

from mlcourse import pretrained
from mlcourse.algorithms import maml_rl as M
from mlcourse.experiments.nav import NavConfig, NavLearner
from mlcourse.rl.policies import GaussianMLPPolicy, linear_feature_values


def setup(seed=0, goals=3, dtype=torch.float32):
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(16, 16)).to(dtype)
    params = dict(policy.named_parameters())
    g = torch.Generator().manual_seed(seed)
    goal = (torch.rand(goals, 2, generator=g) - 0.5).to(dtype)
    return policy, params, goal, g


def detached(params):
    return {n: p.detach() for n, p in params.items()}


def test_rollout_shapes_masks_and_log_probs():
    policy, params, goals, gen = setup()
    t = M.rollout(policy, detached(params), goals, 4, generator=gen, max_steps=30)
    G, T, N = t.rewards.shape
    assert (G, N) == (3, 4) and T <= 30 and t.obs.shape == (3, T, 4, 2)
    assert (t.obs[:, 0] == 0).all()  # every trajectory starts at the origin
    assert ((t.rewards != 0) <= t.mask.bool()).all()  # no reward after a trajectory's end
    assert (t.mask[:, 1:] <= t.mask[:, :-1]).all()  # once over, over
    logp = M.log_prob(policy, detached(params), t.obs, t.actions) * t.mask
    assert torch.allclose(logp, t.logp, atol=1e-5)


def test_action_scale_moves_the_point_by_the_scaled_clipped_action():
    policy, params, goals, _ = setup()
    for scale in (1.0, 0.1):
        gen = torch.Generator().manual_seed(5)
        t = M.rollout(
            policy, detached(params), goals, 4, generator=gen, max_steps=3, action_scale=scale
        )
        moved = t.obs[:, 1] - t.obs[:, 0]  # (G, M, 2): the first step of every trajectory
        expected = (scale * t.actions[:, 0]).clamp(-0.1, 0.1)
        assert torch.allclose(moved, expected, atol=1e-6), scale
        if scale == 0.1:  # the policy's unit-scale noise no longer saturates the clip
            assert (moved.abs() < 0.1 - 1e-6).float().mean() > 0.3


def test_linear_baseline_fits_a_linear_target_exactly():
    obs = torch.randn(20, 5, 2, dtype=torch.float64)
    mask = torch.ones(20, 5, dtype=torch.float64)
    target = 0.5 * obs[..., 0] - 2.0 * obs[..., 1] ** 2 + 3.0
    assert torch.allclose(linear_feature_values(obs, target, mask, ridge=1e-12), target, atol=1e-6)


def test_batched_inner_step_equals_a_per_goal_loop():
    policy, params, goals, gen = setup(dtype=torch.float64)
    t = M.rollout(policy, detached(params), goals, 5, generator=gen, max_steps=20)
    adapted = M.adapt(policy, params, t, inner_lr=0.1)
    for g in range(3):
        one = M.Trajectories(
            t.obs[g : g + 1],
            t.actions[g : g + 1],
            t.rewards[g : g + 1],
            t.mask[g : g + 1],
            t.logp[g : g + 1],
            t.goals[g : g + 1],
        )
        objective = M.inner_objective(policy, params, one, gamma=0.99, per_goal=False)
        grads = torch.autograd.grad(objective, list(params.values()))
        for (name, p), grad in zip(params.items(), grads, strict=True):
            assert torch.allclose(adapted[name][g], p + 0.1 * grad, atol=1e-10), name


def test_second_order_meta_gradient_differs_from_first_order_and_reaches_theta():
    policy, params, goals, gen = setup(dtype=torch.float64)
    pre = M.rollout(policy, detached(params), goals, 5, generator=gen, max_steps=20)
    with torch.no_grad():
        adapted = M.adapt(policy, params, pre, inner_lr=0.1)
    post = M.rollout(policy, adapted, goals, 5, per_goal=True, generator=gen, max_steps=20)
    advantages = M.normalized_advantages(post, 0.99)
    grads = {}
    for first_order in (False, True):
        loss = M.outer_loss(
            policy, params, pre, post, advantages, inner_lr=0.1, clip=0.2, first_order=first_order
        )
        grads[first_order] = torch.autograd.grad(loss, list(params.values()))
    assert all(g.abs().sum() > 0 for g in grads[False])
    gap = max((a - b).abs().max().item() for a, b in zip(grads[False], grads[True], strict=True))
    assert gap > 1e-6


def test_evaluate_reports_every_step():
    policy, params, goals, gen = setup()
    returns = M.evaluate(
        policy, detached(params), goals, inner_steps=2, num_trajectories=3, generator=gen
    )
    assert len(returns) == 3 and all(r < 0 for r in returns)


def test_evaluate_follows_the_papers_step_sizes(monkeypatch):
    policy, params, goals, gen = setup()
    sizes, adapt = [], M.adapt

    def recording_adapt(*args, inner_lr, **kwargs):
        sizes.append(inner_lr)
        return adapt(*args, inner_lr=inner_lr, **kwargs)

    monkeypatch.setattr(M, "adapt", recording_adapt)
    M.evaluate(policy, detached(params), goals, inner_steps=3, num_trajectories=2, generator=gen)
    assert sizes == [0.1, 0.05, 0.05]  # the first step, then half of it
    sizes.clear()
    M.evaluate(
        policy,
        detached(params),
        goals,
        inner_steps=2,
        num_trajectories=2,
        inner_lr=0.3,
        later_inner_lr=0.3,
        generator=gen,
    )
    assert sizes == [0.3, 0.3]


def test_every_algorithm_trains_resumes_and_evaluates(tmp_path, capsys):
    import json

    from mlcourse.course.cli import main

    small = ["--meta-batch-size", "2", "--trajectories", "3", "--hidden", "8,8", "--epochs", "1"]
    for name in ("maml-rl-nav", "fomaml-rl-nav", "reptile-rl-nav", "pretrain-nav"):
        out = str(tmp_path / name)
        argv = ["train", name, "--out", out, "--no-progress", "--steps", "2", *small]
        assert main([*argv, "--log-every", "1"]) == 0
        assert main(["train", name, "--out", out, "--no-progress", "--steps", "3", "--resume"]) == 0
        capsys.readouterr()
        argv = ["eval", name, "--checkpoint", out, "--inner-steps", "2", "--trajectories", "2"]
        assert main([*argv, "--goals", "3", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["trained_steps"] == 3 and len(result["returns"]) == 3
        log = (tmp_path / name / "log.jsonl").read_text().splitlines()
        assert "pre_return" in json.loads(log[0])


def test_resume_continues_bit_for_bit(tmp_path):
    from mlcourse.experiments import load_learner, run_training

    small = dict(meta_batch_size=2, trajectories=3, hidden="8,8", epochs=2, steps=4)
    run_training("maml-rl-nav", tmp_path / "a", overrides=small, progress=False)
    run_training("maml-rl-nav", tmp_path / "b", overrides={**small, "steps": 2}, progress=False)
    run_training("maml-rl-nav", tmp_path / "b", overrides=small, resume=True, progress=False)
    a, _ = load_learner("maml-rl-nav", tmp_path / "a", "cpu")
    b, _ = load_learner("maml-rl-nav", tmp_path / "b", "cpu")
    for (name, p), q in zip(a.policy.named_parameters(), b.policy.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_dice_and_lvc_take_the_same_inner_step_but_differ_in_curvature():
    policy, params, goals, gen = setup(dtype=torch.float64)
    pre = M.rollout(policy, detached(params), goals, 5, generator=gen, max_steps=20)
    steps = {e: M.adapt(policy, params, pre, inner_lr=0.1, estimator=e) for e in M.ESTIMATORS}
    for name in params:
        assert torch.allclose(steps["dice"][name], steps["lvc"][name], atol=1e-10), name
    grads = {
        e: torch.autograd.grad(sum(v.sum() for v in step.values()), list(params.values()))
        for e, step in steps.items()
    }
    gap = max((a - b).abs().max().item() for a, b in zip(*grads.values(), strict=True))
    assert gap > 1e-6


def test_the_outer_loss_uses_the_chosen_estimator():
    policy, params, goals, gen = setup(dtype=torch.float64)
    pre = M.rollout(policy, detached(params), goals, 5, generator=gen, max_steps=20)
    with torch.no_grad():
        adapted = M.adapt(policy, params, pre, inner_lr=0.1)
    post = M.rollout(policy, adapted, goals, 5, per_goal=True, generator=gen, max_steps=20)
    advantages = M.normalized_advantages(post, 0.99)
    grads = {}
    for estimator in M.ESTIMATORS:
        loss = M.outer_loss(
            policy, params, pre, post, advantages, inner_lr=0.1, clip=0.2, estimator=estimator
        )
        grads[estimator] = torch.autograd.grad(loss, list(params.values()))
    gap = max((a - b).abs().max().item() for a, b in zip(*grads.values(), strict=True))
    assert gap > 1e-8


def test_shipped_policy_loads_and_adapts():
    """The navigation policy the lesson uses improves after one policy-gradient step."""
    shipped = pretrained.load("fomaml-rl-nav")
    policy, config = shipped.network(), shipped.config
    params = {n: p.detach() for n, p in policy.named_parameters()}
    assert shipped.steps > 0 and config.algorithm == "fomaml"
    goals = M.sample_goals(10, torch.Generator().manual_seed(M.EVAL_SEED))
    returns = M.evaluate(
        policy,
        params,
        goals,
        inner_steps=1,
        num_trajectories=20,
        generator=torch.Generator().manual_seed(1),
    )
    assert returns[1] > returns[0] + 10  # about −40 before, −14 after on these goals


def test_shipped_reptile_policy_loads_and_adapts():
    """The Reptile navigation policy lesson 07 sets beside first-order MAML's: a Reptile run
    (ε = 1, three inner steps) that improves after one policy-gradient step."""
    shipped = pretrained.load("reptile-rl-nav")
    policy, config = shipped.network(), shipped.config
    params = {n: p.detach() for n, p in policy.named_parameters()}
    assert shipped.experiment == "reptile-rl-nav" and config.algorithm == "reptile"
    assert shipped.steps > 0 and config.outer_lr == 1.0 and config.reptile_inner_steps == 3
    assert config.action_scale == 0.1
    goals = M.sample_goals(10, torch.Generator().manual_seed(M.EVAL_SEED))
    returns = M.evaluate(
        policy,
        params,
        goals,
        inner_steps=1,
        num_trajectories=20,
        generator=torch.Generator().manual_seed(1),
        action_scale=config.action_scale,
    )
    assert returns[1] > returns[0] + 10  # about −45 before, −19 after on these goals


def test_exported_reptile_run_loads_as_tensors_only(tmp_path):
    from mlcourse.experiments import run_training

    small = dict(meta_batch_size=2, trajectories=2, hidden="8,8", steps=1, reptile_inner_steps=2)
    run_training("reptile-rl-nav", tmp_path / "run", overrides=small, progress=False)
    info = pretrained.export(tmp_path / "run", tmp_path / "policy.pt", note="test")
    assert info["experiment"] == "reptile-rl-nav" and info["steps"] == 1
    saved = torch.load(tmp_path / "policy.pt", weights_only=True)
    config = NavConfig(**saved["config"])
    policy = GaussianMLPPolicy(2, 2, config.hidden_sizes)
    policy.load_state_dict(saved["weights"]["policy"])
    assert config.algorithm == "reptile" and saved["note"] == "test"


def test_new_runs_act_in_units_of_the_action_range_and_old_runs_load_unchanged(tmp_path):
    from mlcourse.experiments import load_learner, run_training

    small = dict(meta_batch_size=2, trajectories=2, hidden="8,8", epochs=1, steps=1)
    run_training("fomaml-rl-nav", tmp_path / "run", overrides=small, progress=False)
    learner, _ = load_learner("fomaml-rl-nav", tmp_path / "run", "cpu")
    assert learner.config.action_scale == 0.1
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["config"]["action_scale"]  # a run saved before the option existed
    torch.save(state, path)
    learner, _ = load_learner("fomaml-rl-nav", tmp_path / "run", "cpu")
    assert learner.config.action_scale == 1.0
    assert pretrained.load("fomaml-rl-nav").config.action_scale == 0.1  # the shipped policy


def test_log_std_gets_its_own_step_size_only_when_asked(tmp_path):
    from mlcourse.experiments import load_learner, run_training

    small = dict(meta_batch_size=2, trajectories=2, hidden="8,8", epochs=3, steps=2)
    runs = {}
    for name, lr in (("same", 0.0), ("own", 0.05)):
        run_training(
            "fomaml-rl-nav",
            tmp_path / name,
            overrides={**small, "log_std_lr": lr},
            progress=False,
        )
        runs[name], _ = load_learner("fomaml-rl-nav", tmp_path / name, "cpu")  # resumes too
    assert len(runs["same"].optimizer.param_groups) == 1
    groups = runs["own"].optimizer.param_groups
    assert [g["lr"] for g in groups] == [3e-4, 0.05]
    assert groups[1]["params"] == [runs["own"].policy.log_std]
    # Adam moves a parameter by about its step size per update: 6 updates of 3e-4 at most for
    # the shared one, 6 of 0.05 for log σ's own.
    moved = {k: (r.policy.log_std.detach().abs()).max().item() for k, r in runs.items()}
    assert moved["same"] <= 6 * 3e-4 * 1.01
    assert moved["own"] > 0.05
    with pytest.raises(ValueError, match="log_std_lr"):
        NavConfig(log_std_lr=-1.0)


def test_first_order_maml_over_several_inner_steps_applies_the_gradient_at_the_last(monkeypatch):
    config = NavConfig(
        algorithm="fomaml",
        num_inner_steps=3,
        meta_batch_size=3,
        trajectories=4,
        hidden="8,8",
        epochs=1,
        pre_kl_coef=0.0,
        max_grad_norm=1e6,
        action_scale=0.1,
    )
    learner = NavLearner(config)
    before = {n: p.detach().clone() for n, p in learner.params.items()}
    sampled = []
    real_rollout = M.rollout

    def spy(policy, params, goals, num, **kwargs):
        trajectories = real_rollout(policy, params, goals, num, **kwargs)
        sampled.append((params, trajectories))
        return trajectories

    monkeypatch.setattr(M, "rollout", spy)
    learner.step(0)
    assert len(sampled) == 4  # before adaptation, then after each of the 3 inner steps
    last, post = sampled[-1]
    assert all(p.shape[0] == 3 for p in last.values())  # one adapted policy per goal
    at = {n: p.detach().clone().requires_grad_() for n, p in last.items()}
    logp = M.log_prob_per_goal(learner.policy, at, post.obs, post.actions)
    loss = M.clipped_loss(logp, post, M.normalized_advantages(post, config.gamma), config.clip)
    grads = torch.autograd.grad(loss, list(at.values()))
    # Adam's first step is −lr · g / (|g| + ε) entrywise, for the summed per-goal gradient at
    # the adapted parameters.
    for (name, _), g in zip(at.items(), grads, strict=True):
        g = g.sum(0)
        step = learner.params[name].detach() - before[name]
        assert (g.abs() > 1e-5).any()
        expected = -config.outer_lr * g / (g.abs() + 1e-8)
        torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-9)


def test_several_inner_steps_are_for_maml_and_first_order_maml_only():
    for algorithm in ("reptile", "pretrain"):
        with pytest.raises(ValueError, match="num_inner_steps=2 is for MAML"):
            NavConfig(algorithm=algorithm, num_inner_steps=2)
    assert NavConfig(algorithm="maml", num_inner_steps=2).num_inner_steps == 2
    with pytest.raises(ValueError, match="num_inner_steps"):
        NavConfig(algorithm="fomaml", num_inner_steps=0)


@pytest.mark.parametrize("estimator", ["dice", "lvc"])
def test_two_step_meta_gradient_is_the_chain_of_one_step_jacobians(estimator):
    """∇θ L(θ₂(θ₁(θ))) = (I + α H₀)(I + α/2 H₁) ∇θ₂ L, with H_j the Hessian of the inner
    surrogate at θ_j on the trajectories sampled there (exact, float64, one goal)."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(3,)).double()
    params = dict(policy.named_parameters())
    names = list(params)
    gen = torch.Generator().manual_seed(0)
    goal = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    lr, kw = 0.1, {"gamma": 0.99, "estimator": estimator}
    pre = M.rollout(policy, detached(params), goal, 4, generator=gen, max_steps=15)
    with torch.no_grad():
        theta1 = M.adapt(policy, params, pre, inner_lr=lr, **kw)
    mid = M.rollout(policy, theta1, goal, 4, per_goal=True, generator=gen, max_steps=15)
    with torch.no_grad():
        theta2 = M.adapt(policy, theta1, mid, inner_lr=lr / 2, per_goal=True, **kw)
    post = M.rollout(policy, theta2, goal, 4, per_goal=True, generator=gen, max_steps=15)
    advantages = M.normalized_advantages(post, 0.99)

    loss = M.outer_loss(
        policy, params, pre, post, advantages, inner_lr=lr, clip=0.2, mid=[mid], **kw
    )
    got = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(params.values()))])

    shapes = {n: p.shape for n, p in params.items()}

    def unflatten(flat):
        out, i = {}, 0
        for n in names:
            k = shapes[n].numel()
            out[n] = flat[i : i + k].reshape(1, *shapes[n])
            i += k
        return out

    def flat(d):
        return torch.cat([d[n].detach().flatten() for n in names])

    def hessian(at, trajectories):
        def objective(v):
            return M.inner_objective(
                policy, unflatten(v), trajectories, gamma=0.99, per_goal=True, estimator=estimator
            )

        return torch.autograd.functional.hessian(objective, at)

    eye = torch.eye(len(got), dtype=torch.float64)
    j0 = eye + lr * hessian(flat(params), pre)
    j1 = eye + lr / 2 * hessian(flat(theta1), mid)
    at2 = flat(theta2).requires_grad_()
    logp = M.log_prob_per_goal(policy, unflatten(at2), post.obs, post.actions)
    (v,) = torch.autograd.grad(M.clipped_loss(logp, post, advantages, 0.2), at2)
    torch.testing.assert_close(got, j0.T @ j1.T @ v, rtol=1e-8, atol=1e-10)
    one_step = j0.T @ v  # what forgetting the second step's curvature would give
    assert (got - one_step).abs().max() > 1e-6


def test_clipped_loss_equals_the_clipped_objective_over_the_valid_steps_by_hand():
    """ρ = exp(logp − post.logp) on the steps the mask keeps, old log-probabilities away from
    zero, advantages of several sizes and both signs, ratios on both sides of the range."""
    F64 = torch.float64
    old = torch.tensor([[[-0.5], [0.2], [0.1]], [[-0.1], [0.3], [0.7]]], dtype=F64)
    delta = torch.tensor([[[0.6], [-0.5], [0.1]], [[-0.4], [0.5], [2.0]]], dtype=F64)
    mask = torch.tensor([[[1.0], [1.0], [1.0]], [[1.0], [1.0], [0.0]]], dtype=F64)
    advantages = torch.tensor([[[2.0], [-3.0], [0.5]], [[1.5], [-0.25], [9.0]]], dtype=F64)
    zeros = torch.zeros(2, 3, 1, 2, dtype=F64)
    post = M.Trajectories(zeros, zeros, zeros[..., 0], mask, old, zeros[:, 0, 0])
    terms = [
        1.2 * 2.0,  # above the range, A > 0: clipped
        0.8 * -3.0,  # below the range, A < 0: clipped
        math.exp(0.1) * 0.5,  # inside: ρ A
        math.exp(-0.4) * 1.5,  # below the range, A > 0: the smaller, unclipped ρ A
        math.exp(0.5) * -0.25,  # above the range, A < 0: the smaller, unclipped ρ A
    ]  # the sixth step is past its trajectory's end
    loss = M.clipped_loss(old + delta, post, advantages, 0.2)
    assert loss.item() == pytest.approx(-sum(terms) / 5, rel=1e-12, abs=0)


def test_clipped_loss_sends_no_gradient_into_the_advantages():
    critic = torch.tensor(1.5, requires_grad=True)
    logp = torch.tensor([[[0.3], [-0.2]]], requires_grad=True)
    zeros = torch.zeros(1, 2, 1, 2)
    post = M.Trajectories(
        zeros, zeros, zeros[..., 0], torch.ones(1, 2, 1), zeros[..., 0], zeros[:, 0, 0]
    )
    advantages = critic * torch.tensor([[[1.0], [-0.5]]])
    g_logp, g_critic = torch.autograd.grad(
        M.clipped_loss(logp, post, advantages, 0.2), [logp, critic], allow_unused=True
    )
    assert g_critic is None
    constants = M.clipped_loss(logp, post, advantages.detach(), 0.2)
    assert torch.equal(g_logp, torch.autograd.grad(constants, logp)[0])


def test_gaussian_log_prob_and_kl_are_torch_distributions():
    """The hand-written diagonal Gaussian's log-density and KL against torch.distributions."""
    from torch.distributions import Independent, Normal, kl_divergence

    gen = torch.Generator().manual_seed(0)
    mean0, mean1, actions = (torch.randn(4, 2, generator=gen, dtype=torch.float64) for _ in "abc")
    log_std0, log_std1 = (0.5 * torch.randn(4, 2, generator=gen, dtype=torch.float64) for _ in "ab")
    p = Independent(Normal(mean0, log_std0.exp()), 1)
    q = Independent(Normal(mean1, log_std1.exp()), 1)
    torch.testing.assert_close(M.gaussian_log_prob(mean0, log_std0, actions), p.log_prob(actions))
    torch.testing.assert_close(M.gaussian_kl(mean0, log_std0, mean1, log_std1), kl_divergence(p, q))


def test_returns_to_go_are_discounted_sums_also_for_one_step_trajectories():
    rewards = torch.tensor([[[1.0, 0.5], [2.0, -1.0], [0.0, 4.0]]], dtype=torch.float64)
    for length in (1, 3):
        r = rewards[:, :length]
        zeros = torch.zeros(*r.shape, 2, dtype=torch.float64)
        t = M.Trajectories(zeros, zeros, r, torch.ones_like(r), torch.zeros_like(r), zeros[:, 0, 0])
        expected = torch.stack(
            [sum(0.9**k * r[:, s + k] for k in range(length - s)) for s in range(length)], 1
        )
        torch.testing.assert_close(t.returns_to_go(0.9), expected, rtol=1e-14, atol=0)


def test_normalized_advantages_are_standardised_over_the_valid_steps_and_zero_elsewhere():
    policy, params, goals, gen = setup(dtype=torch.float64)
    t = M.rollout(policy, detached(params), goals, 4, generator=gen, max_steps=30)
    mask = t.mask.clone()
    mask[:, 20:, :2] = 0  # two trajectories per goal end early
    t = dataclasses.replace(t, mask=mask, rewards=t.rewards * mask)
    advantages = M.normalized_advantages(t, 0.99)
    raw = (t.returns_to_go(0.99) - t.baseline(0.99))[t.mask.bool()]
    expected = (raw - raw.mean()) / (raw.std() + 1e-8)
    torch.testing.assert_close(advantages[t.mask.bool()], expected, rtol=1e-12, atol=0)
    assert (advantages[~t.mask.bool()] == 0).all()


def test_pre_update_kl_is_the_mean_kl_over_the_valid_states():
    policy, params, goals, gen = setup(dtype=torch.float64)
    old = detached(params)
    t = M.rollout(policy, old, goals, 4, generator=gen, max_steps=30)
    mask = t.mask.clone()
    mask[:, 20:, :2] = 0
    t = dataclasses.replace(t, mask=mask)
    new = {n: p + 0.05 * torch.randn_like(p) for n, p in old.items()}
    kl = M.gaussian_kl(*policy(t.obs), *torch.func.functional_call(policy, new, (t.obs,)))
    expected = kl[t.mask.bool()].mean()
    torch.testing.assert_close(M.pre_update_kl(policy, old, new, t), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("estimator", M.ESTIMATORS)
def test_inner_objective_is_the_per_goal_normalised_surrogate(estimator):
    """Per goal, the advantages G_t − b_t are standardised over the goal's valid steps (the
    variance over at least 2 of them) and the objective is averaged over steps: DiCE evaluates
    to the discounted return times the goal's scale, LVC to the discounted standardised
    advantages. Checked against a loop over goals, with one goal of only 2 valid steps."""
    policy, params, goals, gen = setup(dtype=torch.float64)
    t = M.rollout(policy, detached(params), goals, 4, generator=gen, max_steps=20)
    mask = t.mask.clone()
    mask[:, 12:, :2] = 0
    mask[2] = 0
    mask[2, 0, :2] = 1
    t = dataclasses.replace(t, mask=mask, rewards=t.rewards * mask)
    gamma = 0.9
    returns_to_go, baseline = t.returns_to_go(gamma), t.baseline(gamma)
    discount = gamma ** torch.arange(mask.shape[1], dtype=torch.float64)[:, None]
    num_trajectories = mask.shape[2]
    expected = 0.0
    for g in range(mask.shape[0]):
        valid = mask[g].bool()
        raw = (returns_to_go[g] - baseline[g])[valid]
        variance = ((raw - raw.mean()) ** 2).sum() / max(len(raw), 2)
        scale = 1 / (variance.sqrt() + 1e-8)
        if estimator == "dice":
            value = (t.rewards[g] * scale * discount).sum()
        else:
            advantages = torch.zeros_like(mask[g])
            advantages[valid] = (raw - raw.mean()) * scale
            value = (advantages * discount).sum()
        expected += value / num_trajectories / (valid.sum() / num_trajectories)
    got = M.inner_objective(policy, params, t, gamma=gamma, per_goal=False, estimator=estimator)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12, abs=0)
    with pytest.raises(ValueError, match="estimator must be one of"):
        M.inner_objective(policy, params, t, gamma=gamma, per_goal=False, estimator="ppo")


def test_outer_loss_adapts_with_the_discount_given():
    """θ' is recomputed from ``pre`` with the outer loss's own γ, not the default."""
    policy, params, goals, gen = setup(dtype=torch.float64)
    pre = M.rollout(policy, detached(params), goals, 5, generator=gen, max_steps=20)
    post = M.rollout(policy, detached(params), goals, 5, generator=gen, max_steps=20)
    advantages = M.normalized_advantages(post, 0.5)
    loss = M.outer_loss(policy, params, pre, post, advantages, inner_lr=0.1, clip=0.2, gamma=0.5)
    adapted = M.adapt(policy, params, pre, inner_lr=0.1, gamma=0.5)
    logp = M.log_prob_per_goal(policy, adapted, post.obs, post.actions)
    expected = M.clipped_loss(logp, post, advantages, 0.2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12, abs=0)
