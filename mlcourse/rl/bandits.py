"""The classic strategies for Bernoulli bandits, the baseline columns of RL²'s Table 1.

Every strategy sees only what an agent sees: for each arm, how many of its pulls succeeded
and failed so far. Strategies are batched: ``policy(successes, failures, pull, rng)`` takes
``(num_trials, num_arms)`` count tensors and returns ``(num_trials,)`` arms, so thousands of
trials run at once on :class:`mlcourse.envs.BernoulliBanditVectorEnv`. Randomness comes from
the NumPy generator ``rng``. Introduced in lesson 05 (``notebooks/05_meta_rl_problem.ipynb``).

The Bayesian strategies assume the task prior, U[0, 1] = Beta(1, 1), for each arm, so the
posterior after ``s`` successes and ``f`` failures is Beta(1 + s, 1 + f).

The Bayes-optimal strategy is computed exactly by dynamic programming over posterior states
where the horizon allows (:class:`BayesOptimal`); beyond, :class:`FiniteHorizonGittins`
approximates it with the finite-horizon Gittins index of each arm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from mlcourse.envs import BernoulliBanditVectorEnv
from mlcourse.stats import mean_and_stderr  # the course's one summary of repeated figures

# (successes, failures, pull index t = pulls made so far, rng) -> arms
BanditPolicy = Callable[[Tensor, Tensor, int, np.random.Generator], Tensor]

# Exact dynamic programming is used up to this many distinct posterior states.
MAX_EXACT_STATES = 2_000_000


def random_argmax(scores: Tensor, rng: np.random.Generator) -> Tensor:
    """Index of the largest score in each row, ties broken uniformly at random.

    Args:
        scores: ``(num_trials, num_arms)``.
        rng: NumPy generator for the tie-breaking.

    Returns:
        ``(num_trials,)`` int64.

    Example:
        >>> random_argmax(torch.tensor([[0.0, 2.0, 1.0]]), np.random.default_rng(0)).tolist()
        [1]
    """
    best = scores == scores.max(dim=-1, keepdim=True).values
    noise = torch.as_tensor(rng.random(tuple(scores.shape)), dtype=torch.float32)
    return (best.float() * (noise.to(scores.device) + 1.0)).argmax(dim=-1)


def posterior_mean(successes: Tensor, failures: Tensor) -> Tensor:
    """Mean of the Beta(1 + s, 1 + f) posterior of each arm."""
    return (successes + 1.0) / (successes + failures + 2.0)


def random_policy(successes: Tensor, failures: Tensor, t: int, rng: np.random.Generator):
    """Pulls an arm uniformly at random: the floor every strategy must beat."""
    num_trials, num_arms = successes.shape
    return torch.as_tensor(rng.integers(num_arms, size=num_trials), device=successes.device)


def greedy(successes: Tensor, failures: Tensor, t: int, rng: np.random.Generator) -> Tensor:
    """Pulls the arm with the highest posterior mean; never explores on purpose."""
    return random_argmax(posterior_mean(successes, failures), rng)


def epsilon_greedy(epsilon: float = 0.1) -> BanditPolicy:
    """With probability ``epsilon`` a random arm, otherwise the greedy one."""
    if not 0 <= epsilon <= 1:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")

    def policy(successes, failures, t, rng):
        explore = torch.as_tensor(rng.random(successes.shape[0]) < epsilon, device=successes.device)
        return torch.where(
            explore, random_policy(successes, failures, t, rng), greedy(successes, failures, t, rng)
        )

    return policy


def ucb1(c: float = 1.0) -> BanditPolicy:
    """UCB1 (Auer et al., 2002): pull every arm once, then maximise
    ``mean + c * sqrt(2 ln t / pulls)`` (``c = 1`` is the textbook constant)."""
    if c < 0:
        raise ValueError(f"c must be non-negative, got {c}")

    def policy(successes, failures, t, rng):
        pulls = successes + failures
        mean = successes / pulls.clamp(min=1)
        bonus = c * torch.sqrt(2.0 * math.log(max(t, 1)) / pulls.clamp(min=1))
        scores = torch.where(pulls == 0, math.inf, mean + bonus)
        return random_argmax(scores, rng)

    return policy


def _beta_samples(successes: Tensor, failures: Tensor, rng: np.random.Generator) -> Tensor:
    a = (successes + 1.0).cpu().numpy()
    b = (failures + 1.0).cpu().numpy()
    return torch.as_tensor(rng.beta(a, b), dtype=torch.float32, device=successes.device)


def thompson(successes: Tensor, failures: Tensor, t: int, rng: np.random.Generator) -> Tensor:
    """Thompson sampling: draw each arm's probability from its posterior, pull the best."""
    return random_argmax(_beta_samples(successes, failures, rng), rng)


def optimistic_thompson(successes, failures, t: int, rng: np.random.Generator) -> Tensor:
    """Optimistic Thompson sampling (May et al., 2012): a draw below the posterior mean is
    replaced by the mean, so uncertainty only ever raises an arm's score."""
    draws = _beta_samples(successes, failures, rng)
    return random_argmax(torch.maximum(draws, posterior_mean(successes, failures)), rng)


# ---------------------------------------------------------------------------------------------
# Bayes-optimal: exact dynamic programming over posterior states


class BayesOptimal:
    """The Bayes-optimal strategy for ``num_arms`` arms and ``num_pulls`` pulls, exactly.

    The posterior of the whole bandit is the multiset of per-arm counts ``(s, f)``; arms are
    exchangeable under the prior, so sorting the pairs gives a canonical state. The value of a
    state is the expected number of future successes under optimal play:

        V(state) = max_arm  p (1 + V(state after a success)) + (1 − p) V(state after a failure),

    with ``p = (1 + s) / (2 + s + f)`` the posterior mean of that arm and V = 0 once all
    ``num_pulls`` pulls are made. :attr:`value` is V at the start: the largest expected score
    any strategy can reach on this task distribution.

    Args:
        num_arms: k.
        num_pulls: n.

    Raises:
        ValueError: when the number of states makes the recursion too large (use
            :class:`FiniteHorizonGittins`).

    Example:
        >>> round(BayesOptimal(num_arms=2, num_pulls=1).value, 6)
        0.5
    """

    def __init__(self, num_arms: int, num_pulls: int):
        states = _canonical_state_count(num_arms, num_pulls)
        if states > MAX_EXACT_STATES:
            raise ValueError(
                f"exact dynamic programming for {num_arms} arms and {num_pulls} pulls visits "
                f"{states:,} posterior states; use FiniteHorizonGittins for this horizon"
            )
        self.num_states = states
        self.num_arms, self.num_pulls = num_arms, num_pulls
        self._value = lru_cache(maxsize=None)(self._value_uncached)
        start = ((0, 0),) * num_arms
        self.value = self._value(start)

    def _children(self, state: tuple, i: int) -> tuple[float, tuple, tuple]:
        s, f = state[i]
        win = tuple(sorted(state[:i] + ((s + 1, f),) + state[i + 1 :]))
        lose = tuple(sorted(state[:i] + ((s, f + 1),) + state[i + 1 :]))
        return (s + 1) / (s + f + 2), win, lose

    def _q_values(self, state: tuple) -> dict[tuple[int, int], float]:
        """Expected future successes after pulling an arm with counts ``pair`` now."""
        q = {}
        for i, pair in enumerate(state):
            if pair not in q:
                p, win, lose = self._children(state, i)
                q[pair] = p * (1.0 + self._value(win)) + (1.0 - p) * self._value(lose)
        return q

    def _value_uncached(self, state: tuple) -> float:
        if sum(s + f for s, f in state) >= self.num_pulls:
            return 0.0
        return max(self._q_values(state).values())

    def __call__(self, successes: Tensor, failures: Tensor, t: int, rng: np.random.Generator):
        s_all, f_all = successes.long().tolist(), failures.long().tolist()
        arms = []
        for s_row, f_row in zip(s_all, f_all, strict=True):
            pairs = list(zip(s_row, f_row, strict=True))
            q = self._q_values(tuple(sorted(pairs)))
            best = max(q.values())
            ties = [a for a, pair in enumerate(pairs) if q[pair] >= best - 1e-12]
            arms.append(ties[int(rng.integers(len(ties)))])
        return torch.tensor(arms, device=successes.device)


def _canonical_state_count(num_arms: int, num_pulls: int) -> int:
    """How many canonical states (multisets of ``num_arms`` pairs ``(s, f)`` with
    ``Σ(s + f) <= num_pulls``) there are, counted by dynamic programming over pair weights."""
    # count[j][w]: multisets of j pairs with total weight w, over the pair types seen so far.
    count = [[0] * (num_pulls + 1) for _ in range(num_arms + 1)]
    count[0][0] = 1
    for weight in range(num_pulls + 1):
        for _ in range(weight + 1):  # the weight + 1 pairs (s, f) with s + f = weight
            for j in range(1, num_arms + 1):
                for w in range(weight, num_pulls + 1):
                    count[j][w] += count[j - 1][w - weight]
    return sum(count[num_arms])


# ---------------------------------------------------------------------------------------------
# Finite-horizon Gittins index


class FiniteHorizonGittins:
    """Pulls the arm with the largest finite-horizon Gittins index (a near Bayes-optimal rule).

    The index of an arm with posterior Beta(1 + s, 1 + f) and ``h`` pulls left is the payout
    λ of a known arm at which one is indifferent between retiring to the known arm now and
    playing the unknown arm optimally (with the option to retire later):

        W_h(s, f) = max(h λ,  p (1 + W_{h−1}(s + 1, f)) + (1 − p) W_{h−1}(s, f + 1)).

    The index is found for every ``(h, s, f)`` at once on a grid of λ, with linear
    interpolation of the indifference point between grid values. This is the
    approximation the course uses where exact dynamic programming over all arms is too large
    (Kaufmann, 2018, "On Bayesian index policies for sequential resource allocation").

    Args:
        num_pulls: n, the horizon of a trial.
        grid: number of λ values in [0, 1].

    Example:
        >>> g = FiniteHorizonGittins(num_pulls=5)
        >>> g.table.shape, float(g.table[1, 0, 0])  # one pull left: the posterior mean
        (torch.Size([6, 6, 6]), 0.5)
    """

    def __init__(self, num_pulls: int, grid: int = 501):
        self.num_pulls = num_pulls
        self.table = _gittins_table(num_pulls, grid)  # (h, s, f), float64

    def __call__(self, successes: Tensor, failures: Tensor, t: int, rng: np.random.Generator):
        left = self.num_pulls - t
        table = self.table.to(successes.device)
        s = successes.long().clamp(max=self.num_pulls)
        f = failures.long().clamp(max=self.num_pulls)
        return random_argmax(table[left][s, f], rng)


def _gittins_table(num_pulls: int, grid: int, chunk: int = 128) -> Tensor:
    """``table[h, s, f]``: the index with ``h`` pulls left, for ``0 <= s, f <= num_pulls``.

    For each λ of the grid, ``W_h`` is computed for every ``(s, f)`` by backward induction
    over ``h``. The margin ``continue − h λ`` decreases strictly in λ (``W_{h−1}`` grows with
    slope at most ``h − 1``), is positive at λ = 0 and negative at λ = 1, so each state's index
    is its one root, interpolated linearly between the two grid values around it.
    """
    n = num_pulls
    lambdas = torch.linspace(0.0, 1.0, grid, dtype=torch.float64)
    s = torch.arange(n + 2, dtype=torch.float64)[:, None]
    f = torch.arange(n + 2, dtype=torch.float64)[None, :]
    p = ((s + 1.0) / (s + f + 2.0))[:-1, :-1]  # (n + 1, n + 1)
    table = torch.full((n + 1, n + 1, n + 1), math.nan, dtype=torch.float64)
    last: dict[int, Tensor] = {}  # h -> margin at the last λ of the previous chunk
    for start in range(0, grid, chunk):
        lam = lambdas[start : start + chunk]
        lam3 = lam[:, None, None]
        w = torch.zeros(lam.shape[0], n + 2, n + 2, dtype=torch.float64)
        for h in range(1, n + 1):
            cont = torch.zeros_like(w)
            cont[:, :-1, :-1] = p * (1.0 + w[:, 1:, :-1]) + (1.0 - p) * w[:, :-1, 1:]
            margin = (cont - h * lam3)[:, :-1, :-1]
            w = torch.maximum(h * lam3, cont)
            window, values = margin, lam
            if h in last:  # include the previous chunk's last point: a root may lie between
                window = torch.cat([last[h][None], margin])
                values = torch.cat([lambdas[start - 1 : start], lam])
            last[h] = margin[-1]
            _record_roots(table[h], window, values)
    table[0] = 0.0
    return table


def _record_roots(out: Tensor, margin: Tensor, lambdas: Tensor) -> None:
    """Writes into ``out`` the interpolated root of ``margin`` (decreasing along dim 0) for
    every state whose root lies inside this window of the grid."""
    positive = margin > 0
    inside = positive[0] & (~positive).any(0)
    if not inside.any():
        return
    i = (~positive).to(torch.uint8).argmax(0).clamp(min=1)  # first point with margin <= 0
    hi_m = margin.gather(0, i[None]).squeeze(0)
    lo_m = margin.gather(0, (i - 1)[None]).squeeze(0)
    frac = lo_m / (lo_m - hi_m)
    root = lambdas[i - 1] + frac * (lambdas[i] - lambdas[i - 1])
    out[inside] = root[inside]


# ---------------------------------------------------------------------------------------------
# Running strategies


def bandit_returns(
    policy: BanditPolicy,
    *,
    num_arms: int,
    num_pulls: int,
    num_trials: int,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Runs ``policy`` on ``num_trials`` freshly drawn bandits; returns each trial's successes.

    Args:
        policy: a :data:`BanditPolicy`.
        num_arms, num_pulls: k and n.
        num_trials: bandits (trials) run side by side.
        seed: seeds both the bandits and the policy's randomness.
        device: where the environment runs.

    Returns:
        ``(num_trials,)`` float32 totals.

    Example:
        >>> r = bandit_returns(greedy, num_arms=5, num_pulls=10, num_trials=100, seed=0)
        >>> r.shape
        torch.Size([100])
    """
    envs = BernoulliBanditVectorEnv(num_trials, num_arms, num_pulls, device=device)
    envs.reset(seed=seed)
    rng = np.random.default_rng(seed)
    successes = torch.zeros(num_trials, num_arms, device=envs.device)
    failures = torch.zeros_like(successes)
    total = torch.zeros(num_trials, device=envs.device)
    rows = torch.arange(num_trials, device=envs.device)
    for t in range(num_pulls):
        arms = policy(successes, failures, t, rng).to(envs.device)
        _, reward, *_ = envs.step(arms)
        successes[rows, arms] += reward
        failures[rows, arms] += 1.0 - reward
        total += reward
    return total


def bandit_baselines(
    num_arms: int = 5,
    num_pulls: int = 10,
    num_trials: int = 10_000,
    *,
    seed: int = 0,
    epsilon: float = 0.1,
    ucb_c: float = 1.0,
    device: torch.device | str | None = None,
) -> dict[str, dict]:
    """Every baseline on the same ``num_trials`` bandits (the same seed for each).

    Returns:
        ``{policy: {"mean", "stderr", ...}}``; ``gittins`` also says which method computed
        it, and, when exact, ``bayes_optimal_value``: the expected score of optimal play.
    """
    policies: dict[str, BanditPolicy] = {
        "random": random_policy,
        "greedy": greedy,
        "epsilon_greedy": epsilon_greedy(epsilon),
        "ucb1": ucb1(ucb_c),
        "thompson": thompson,
        "optimistic_thompson": optimistic_thompson,
    }
    extra: dict[str, dict] = {
        "epsilon_greedy": {"epsilon": epsilon},
        "ucb1": {"c": ucb_c},
    }
    try:
        policies["gittins"] = exact = BayesOptimal(num_arms, num_pulls)
        extra["gittins"] = {
            "method": "Bayes-optimal, exact dynamic programming",
            "bayes_optimal_value": exact.value,
        }
    except ValueError:
        policies["gittins"] = FiniteHorizonGittins(num_pulls)
        extra["gittins"] = {"method": "finite-horizon Gittins index"}
    results = {}
    for name, policy in policies.items():
        returns = bandit_returns(
            policy,
            num_arms=num_arms,
            num_pulls=num_pulls,
            num_trials=num_trials,
            seed=seed,
            device=device,
        )
        results[name] = {**mean_and_stderr(returns), **extra.get(name, {})}
    return results
