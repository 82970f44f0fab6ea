"""The classic bandit and MDP strategies: exact values worked by hand, the properties that define
each strategy, and agreement with the RL² paper's columns where its settings are known."""

import itertools

import numpy as np
import pytest
import torch

from mlcourse.rl import bandits as B
from mlcourse.rl import mdps as M

# ---------------------------------------------------------------------------------------------
# Bandits: exact values


def test_bayes_optimal_values_worked_by_hand():
    # One arm: every pull succeeds with prior probability 1/2.
    assert B.BayesOptimal(1, 7).value == pytest.approx(3.5, abs=1e-12)
    # Two arms, two pulls: pull one; after a success stay (2/3), after a failure switch (1/2).
    assert B.BayesOptimal(2, 2).value == pytest.approx(0.5 * (1 + 2 / 3) + 0.5 * 0.5, abs=1e-12)


def test_bayes_optimal_value_is_the_rl2_papers_6_66():
    assert B.BayesOptimal(5, 10).value == pytest.approx(6.66, abs=0.005)


def test_canonical_state_count_matches_enumeration():
    for k, n in [(2, 3), (3, 4), (1, 5), (4, 2)]:
        pairs = [(s, f) for s in range(n + 1) for f in range(n + 1) if s + f <= n]
        brute = sum(
            1
            for combo in itertools.combinations_with_replacement(pairs, k)
            if sum(s + f for s, f in combo) <= n
        )
        assert B._canonical_state_count(k, n) == brute


def test_exact_dynamic_programming_refuses_a_horizon_too_long():
    with pytest.raises(ValueError, match="FiniteHorizonGittins"):
        B.BayesOptimal(5, 100)


def test_finite_horizon_gittins_index_worked_by_hand():
    table = B.FiniteHorizonGittins(num_pulls=6).table
    s = torch.arange(7, dtype=torch.float64)[:, None]
    f = torch.arange(7, dtype=torch.float64)[None, :]
    # One pull left: the index is the posterior mean.
    assert torch.allclose(table[1], (s + 1) / (s + f + 2), atol=1e-9)
    # Two pulls left, fresh arm: indifference at 2λ = 1/2·(1 + 2/3) + 1/2·λ, λ = 5/9.
    assert table[2, 0, 0].item() == pytest.approx(5 / 9, abs=1e-6)
    # More pulls left: more worth learning, so the index of an uncertain arm grows.
    assert (table[2:, 0, 0].diff() > 0).all()


def test_gittins_index_play_is_nearly_bayes_optimal():
    kw = dict(num_arms=3, num_pulls=8, num_trials=20_000, seed=1)
    exact = B.bandit_returns(B.BayesOptimal(3, 8), **kw)
    index = B.bandit_returns(B.FiniteHorizonGittins(8), **kw)
    assert abs(exact.mean() - index.mean()) < 0.03
    assert exact.mean().item() == pytest.approx(B.BayesOptimal(3, 8).value, abs=0.05)


# ---------------------------------------------------------------------------------------------
# Bandits: what defines each strategy


def counts(s, f):
    return torch.tensor(s, dtype=torch.float32), torch.tensor(f, dtype=torch.float32)


def test_random_argmax_breaks_ties_uniformly():
    rng = np.random.default_rng(0)
    picks = B.random_argmax(torch.tensor([[1.0, 0.0, 1.0, 1.0]]).repeat(6000, 1), rng)
    freq = torch.bincount(picks, minlength=4).float() / 6000
    assert freq[1] == 0 and torch.allclose(freq[[0, 2, 3]], torch.full((3,), 1 / 3), atol=0.03)


def test_greedy_takes_the_highest_posterior_mean():
    s, f = counts([[3, 0, 1]], [[1, 0, 0]])  # means 4/6, 1/2, 2/3
    picks = B.greedy(s.repeat(100, 1), f.repeat(100, 1), 5, np.random.default_rng(0))
    assert set(picks.tolist()) == {0, 2}


def test_epsilon_greedy_limits():
    s, f = counts([[5, 0]] * 4000, [[0, 5]] * 4000)
    rng = np.random.default_rng(0)
    assert (B.epsilon_greedy(0.0)(s, f, 10, rng) == 0).all()
    share = (B.epsilon_greedy(1.0)(s, f, 10, rng) == 1).float().mean().item()
    assert abs(share - 0.5) < 0.03
    with pytest.raises(ValueError, match="epsilon"):
        B.epsilon_greedy(1.5)


def test_ucb1_pulls_every_arm_once_first_then_adds_the_bonus():
    rng = np.random.default_rng(0)
    policy = B.ucb1(1.0)
    s, f = counts([[1, 0, 0]], [[0, 0, 0]])
    assert policy(s, f, 1, rng).item() in (1, 2)
    # Arm 0: mean 0.6 over 10 pulls; arm 1: mean 0.5 over 2 pulls; t = 12.
    s, f = counts([[6, 1]], [[4, 1]])
    bonus = [np.sqrt(2 * np.log(12) / n) for n in (10, 2)]
    assert 0.6 + bonus[0] < 0.5 + bonus[1]
    assert policy(s, f, 12, rng).item() == 1
    assert B.ucb1(0.0)(s, f, 12, rng).item() == 0


def test_thompson_samples_match_the_posterior():
    s, f = counts([[2, 0]] * 20_000, [[1, 0]] * 20_000)
    draws = B._beta_samples(s, f, np.random.default_rng(0))
    assert abs(draws[:, 0].mean().item() - 3 / 5) < 0.005  # Beta(3, 2)
    assert abs(draws[:, 1].mean().item() - 1 / 2) < 0.005  # Beta(1, 1)
    # Arm 0 wins when its draw beats a uniform one: P = E[X] for X ~ Beta(3, 2).
    wins = (B.thompson(s, f, 3, np.random.default_rng(1)) == 0).float().mean().item()
    assert abs(wins - 3 / 5) < 0.01


def test_optimistic_thompson_never_scores_below_the_posterior_mean():
    s, f = counts([[0, 9]] * 5000, [[0, 1]] * 5000)  # means 1/2 and 10/12
    picks = B.optimistic_thompson(s, f, 10, np.random.default_rng(0))
    plain = B.thompson(s, f, 10, np.random.default_rng(0))
    assert (picks == 0).float().mean() < (plain == 0).float().mean()


# ---------------------------------------------------------------------------------------------
# Bandits: the RL² paper's columns


def within_sampling_error(result, paper, rounding=0.05):
    """|ours − paper| within 3 of our standard errors plus the paper's rounding."""
    return abs(result["mean"] - paper) <= 3 * result["stderr"] + rounding


@pytest.mark.slow
def test_bandit_baselines_agree_with_rl2_table_1_at_n10_k5():
    results = B.bandit_baselines(5, 10, 20_000, seed=7)
    assert within_sampling_error(results["random"], 5.0)
    assert within_sampling_error(results["gittins"], 6.6)
    assert results["gittins"]["bayes_optimal_value"] == pytest.approx(6.66, abs=0.005)
    best = max(r["mean"] for r in results.values())
    assert results["gittins"]["mean"] >= best - 3 * results["gittins"]["stderr"]


@pytest.mark.slow
def test_bandit_baselines_agree_with_rl2_table_1_at_n100_k5():
    kw = dict(num_arms=5, num_pulls=100, num_trials=3000, seed=7)
    random = B.mean_and_stderr(B.bandit_returns(B.random_policy, **kw))
    gittins = B.mean_and_stderr(B.bandit_returns(B.FiniteHorizonGittins(100, grid=401), **kw))
    assert within_sampling_error(random, 49.9)
    assert within_sampling_error(gittins, 78.3)


# ---------------------------------------------------------------------------------------------
# MDPs


def test_plan_is_finite_horizon_value_iteration():
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(1, 3, 2, generator=gen)
    p = torch.rand(1, 3, 2, 3, generator=gen)
    p = p / p.sum(-1, keepdim=True)
    q = M.plan(r, p, 3)

    def value(s, h):  # brute force: the best over every action sequence is not a plan, so
        if h == 0:  # recurse on the Bellman equation directly
            return 0.0
        return max(
            r[0, s, a].item() + sum(p[0, s, a, t].item() * value(t, h - 1) for t in range(3))
            for a in range(2)
        )

    for s in range(3):
        assert q[3, 0, s].max().item() == pytest.approx(value(s, 3), abs=1e-5)


def test_posterior_updates_follow_the_conjugate_formulas():
    post = M.Posterior.empty(1, 2, 2)
    for r in (2.0, 0.0, 1.0):
        post.update(torch.tensor([0]), torch.tensor([1]), torch.tensor([r]), torch.tensor([1]))
    post.update(torch.tensor([0]), torch.tensor([1]), torch.tensor([5.0]), None)
    # Prior Normal(1, 1), unit noise: mean (1 + Σr) / (1 + n), variance 1 / (1 + n).
    assert post.reward_mean()[0, 0, 1].item() == pytest.approx((1 + 8) / 5)
    assert post.reward_std()[0, 0, 1].item() == pytest.approx(5**-0.5)
    assert post.reward_mean()[0, 1, 0].item() == pytest.approx(1.0)
    # Flat Dirichlet: three transitions seen (the fourth step ended an episode).
    assert post.transition_mean()[0, 0, 1].tolist() == pytest.approx([1 / 5, 4 / 5])


def test_psrl_samples_come_from_the_posterior():
    post = M.Posterior.empty(20_000, 2, 1)
    post.transition_counts[:, 0, 0] = torch.tensor([3.0, 1.0])
    means, transitions = post.sample(np.random.default_rng(0))
    assert abs(transitions[:, 0, 0, 0].mean().item() - 4 / 6) < 0.005  # Dirichlet(4, 2)
    assert abs(means[:, 0, 0].std().item() - 1.0) < 0.02  # unvisited: the prior


@pytest.mark.slow
def test_mdp_baselines_random_agrees_with_rl2_and_the_planners_beat_it():
    results = M.mdp_baselines(10, 800, seed=3)
    assert within_sampling_error(results["random"], 100.1)
    for name in ("greedy", "epsilon_greedy", "psrl", "beb"):
        assert results[name]["mean"] > results["random"]["mean"] + 20, name


def test_mdp_baselines_errors():
    with pytest.raises(ValueError, match="epsilon"):
        M.GreedyMDP(epsilon=-0.1)
