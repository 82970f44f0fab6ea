"""Checks of lesson 05 (``solutions/05_meta_rl_problem.ipynb``).

- :func:`ucb1_scores` (implement): UCB1's score of every arm, batched over trials.
- :func:`thompson_choice` (implement): one Thompson-sampling decision per trial.
- :func:`bayes_optimal_value` (implement): the Bayes-optimal expected score of a small bandit
  problem, by dynamic programming over posterior states.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from mlcourse.course.checks._core import Fail, check, expect_tensor
from mlcourse.rl.bandits import BayesOptimal

LESSON = "05_meta_rl_problem"

__all__ = ["bayes_optimal_value", "thompson_choice", "ucb1_scores"]


def _counts(
    seed: int, t: int = 12, num_trials: int = 6, num_arms: int = 4
) -> tuple[Tensor, Tensor, int]:
    """Random success and failure counts of ``num_trials`` trials that have each made ``t``
    pulls (one step of a batch of trials); the last arm is never pulled."""
    gen = torch.Generator().manual_seed(seed)
    pulls = torch.zeros(num_trials, num_arms)
    for row in range(num_trials):
        arms = torch.randint(num_arms - 1, (t,), generator=gen)  # the last arm never pulled
        arms = torch.where(torch.rand(t, generator=gen) < 0.2, num_arms - 2, arms)
        pulls[row] = torch.bincount(arms, minlength=num_arms).float()
    successes = torch.floor(pulls * torch.rand(num_trials, num_arms, generator=gen))
    return successes, pulls - successes, t


def _ucb1_reference(successes: Tensor, failures: Tensor, t: int, c: float) -> Tensor:
    pulls = successes + failures
    mean = successes / pulls.clamp(min=1)
    bonus = c * torch.sqrt(2.0 * math.log(t) / pulls.clamp(min=1))
    return torch.where(pulls == 0, math.inf, mean + bonus)


def _ucb1_wrong(successes: Tensor, failures: Tensor, t: int, c: float) -> dict[str, Tensor]:
    pulls = successes + failures
    n = pulls.clamp(min=1)
    mean = successes / n
    untried = pulls == 0

    def with_inf(x):
        return torch.where(untried, math.inf, x)

    return {
        "the bonus has no factor 2 inside the square root": with_inf(
            mean + c * torch.sqrt(math.log(t) / n)
        ),
        "the bonus uses each arm's own pull count in the logarithm, not the total t": with_inf(
            mean + c * torch.sqrt(2.0 * torch.log(n) / n)
        ),
        "the mean is the posterior mean (1 + s) / (2 + s + f), not the empirical s / n": with_inf(
            (successes + 1) / (pulls + 2) + c * torch.sqrt(2.0 * math.log(t) / n)
        ),
        "the bonus is missing: this is greedy on the empirical mean": with_inf(mean),
        "c is applied inside the square root": with_inf(
            mean + torch.sqrt(2.0 * c * math.log(t) / n)
        ),
        "unpulled arms score 0 instead of +inf, so they are never tried": torch.where(
            untried, 0.0, mean + c * torch.sqrt(2.0 * math.log(t) / n)
        ),
        "c scales the whole score, not only the exploration bonus": with_inf(
            c * (mean + torch.sqrt(2.0 * math.log(t) / n))
        ),
    }


def _implied_t(got: Tensor, successes: Tensor, failures: Tensor, c: float) -> float | None:
    """The t that the learner's bonus c·sqrt(2 ln t / n) used, if one t fits every pulled arm."""
    pulls = successes + failures
    pulled = pulls > 0
    bonus = (got.double() - successes.double() / pulls.double().clamp(min=1))[pulled]
    if not torch.isfinite(bonus).all() or (bonus < 0).any():
        return None
    log_t = (bonus / c) ** 2 * pulls.double()[pulled] / 2
    if torch.allclose(log_t, log_t.mean().expand_as(log_t), atol=1e-4, rtol=1e-4):
        return math.exp(log_t.mean().item())
    return None


UCB_CASES = [(0, 1.0, 12), (1, 0.5, 7), (2, 2.0, 30)]  # (seed, c, t)


@check(
    LESSON,
    points=1,
    forbid=("mlcourse.rl.bandits.ucb1", "mlcourse.course.checks.lesson05._ucb1_reference"),
)
def ucb1_scores(fn: Callable) -> str:
    """Checks ``fn(successes, failures, t, c) -> (num_trials, num_arms)`` scores."""
    for seed, c, t in UCB_CASES:
        successes, failures, t = _counts(seed, t)
        s_before, f_before = successes.clone(), failures.clone()
        got = fn(successes, failures, t, c)
        if not (torch.equal(successes, s_before) and torch.equal(failures, f_before)):
            raise Fail(
                "your function modified `successes` or `failures` in place",
                "compute new tensors; the counts belong to the caller",
            )
        expected = _ucb1_reference(successes, failures, t, c)
        matches = (
            isinstance(got, Tensor)
            and got.shape == expected.shape
            and torch.allclose(got.double(), expected.double(), atol=1e-5, rtol=1e-5)
        )
        if not matches and isinstance(got, Tensor) and got.shape == expected.shape:
            if torch.isnan(got).any():
                raise Fail(
                    "some scores are NaN: an unpulled arm divides 0 by 0",
                    "give arms with no pulls the score +inf (torch.where(pulls == 0, inf, ...))",
                )
            for what, wrong in _ucb1_wrong(successes, failures, t, c).items():
                if torch.allclose(got.float(), wrong, atol=1e-5, equal_nan=False):
                    raise Fail(what, "UCB1: s/n + c·sqrt(2 ln t / n), and +inf where n = 0")
            used = _implied_t(got, successes, failures, c)
            if used is not None and abs(used - t) > 1e-3 * t:
                raise Fail(
                    f"the bonus uses t = {used:.4g}, not the t = {t} given",
                    "t is the number of pulls made so far, the argument t itself: "
                    "c * sqrt(2 * math.log(t) / n), no hard-coded value and no + 1",
                )
        try:
            expect_tensor(got, expected, "the UCB1 scores", atol=1e-5, rtol=1e-5)
        except Fail as fail:
            fail.hint = fail.hint or "UCB1: s/n + c·sqrt(2 ln t / n), and +inf where n = 0"
            raise
    return (
        "UCB1 scores match the reference on three batches (unpulled arms +inf; c = 1, 0.5, 2 "
        f"after t = {', '.join(str(t) for *_, t in UCB_CASES)} pulls)"
    )


# ---------------------------------------------------------------------------------------------
# thompson_choice

_GRID = torch.linspace(0.0, 1.0, 20_001, dtype=torch.float64)[1:-1]


def _beta_pdf(a: float, b: float) -> Tensor:
    log = (a - 1) * torch.log(_GRID) + (b - 1) * torch.log1p(-_GRID)
    log -= math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return log.exp()


def _win_probabilities(alphas: list[float], betas: list[float]) -> Tensor:
    """P(arm i has the largest draw) for independent Beta(alpha_i, beta_i), by integration."""
    pdfs = [_beta_pdf(a, b) for a, b in zip(alphas, betas, strict=True)]
    dx = 1.0 / 20_000
    cdfs = [torch.cumsum(p, 0) * dx for p in pdfs]
    out = []
    for i, p in enumerate(pdfs):
        others = torch.ones_like(p)
        for j, cdf in enumerate(cdfs):
            if j != i:
                others = others * cdf
        out.append((p * others).sum().item() * dx)
    return torch.tensor(out)


# Two groups of trials with different counts (and different greedy arms).
_TS_GROUPS = [
    (torch.tensor([2.0, 0.0, 5.0, 0.0]), torch.tensor([1.0, 0.0, 5.0, 3.0])),
    (torch.tensor([0.0, 4.0, 1.0, 0.0]), torch.tensor([2.0, 1.0, 0.0, 0.0])),
]
_TS_TRIALS = 10_000  # per group


def _frequencies(arms: Tensor) -> list[Tensor]:
    groups = arms.long().split(_TS_TRIALS)
    return [torch.bincount(g, minlength=4).double() / _TS_TRIALS for g in groups]


@check(
    LESSON, points=2, forbid=("mlcourse.rl.bandits.thompson", "mlcourse.rl.bandits._beta_samples")
)
def thompson_choice(fn: Callable) -> str:
    """Checks ``fn(successes, failures) -> (num_trials,) arms``: in each group of trials the
    frequency of each arm must be the posterior probability that it is the best (within 4
    standard errors)."""
    successes = torch.cat([s.repeat(_TS_TRIALS, 1) for s, _ in _TS_GROUPS])
    failures = torch.cat([f.repeat(_TS_TRIALS, 1) for _, f in _TS_GROUPS])
    num_trials = successes.shape[0]
    torch.manual_seed(0)
    try:
        got = fn(successes.clone(), failures.clone())
    except ValueError as err:
        if "concentration" in str(err):
            raise Fail(
                "a Beta distribution got a parameter of 0: the posterior ignores the prior",
                "an arm's posterior is Beta(1 + successes, 1 + failures): the 1s are the "
                "uniform prior, and keep every parameter positive",
            ) from err
        raise
    if not isinstance(got, Tensor):
        raise Fail(
            f"expected a tensor of arms, got {type(got).__name__}",
            "return draws.argmax(dim=-1), a (num_trials,) int64 tensor",
        )
    if got.shape != (num_trials,):
        raise Fail(
            f"expected one arm per trial, shape ({num_trials},), got {tuple(got.shape)}",
            "take the argmax over the arms dimension (dim=-1) of one draw per arm and trial",
        )
    if got.is_floating_point() or got.min() < 0 or got.max() > 3:
        raise Fail(
            "the result should hold integer arm indices in 0..num_arms-1",
            "return the index of the largest draw, draws.argmax(dim=-1), not the draw itself",
        )
    freqs = _frequencies(got)
    right = [_win_probabilities((s + 1).tolist(), (f + 1).tolist()) for s, f in _TS_GROUPS]
    swapped = [_win_probabilities((f + 1).tolist(), (s + 1).tolist()) for s, f in _TS_GROUPS]
    greedy = [int(((s + 1) / (s + f + 2)).argmax()) for s, f in _TS_GROUPS]

    def close(freq, p):
        return bool(((freq - p).abs() <= 4 * torch.sqrt(p * (1 - p) / _TS_TRIALS) + 1e-3).all())

    shown = [[round(x, 3) for x in f.tolist()] for f in freqs]
    wanted = [[round(x, 3) for x in p.tolist()] for p in right]
    if all(close(f, p) for f, p in zip(freqs, right, strict=True)):
        return (
            f"choice frequencies {shown} match the posterior probabilities of being best "
            f"{wanted} in both groups of trials"
        )
    if all(f[g] > 0.99 for f, g in zip(freqs, greedy, strict=True)):
        raise Fail(
            "you always pick the arm with the highest posterior mean: that is greedy, not "
            "Thompson sampling",
            "sample each arm's probability from its posterior, then take the argmax",
        )
    if all(f.max() > 0.999 for f in freqs):
        raise Fail(
            "each group of identical trials always chooses the same arm: the choice is not random",
            "draw a fresh sample for every arm of every trial (one Beta draw per entry)",
        )
    pulls_as_beta = [
        _win_probabilities((s + 1).tolist(), (s + f + 1).tolist()) for s, f in _TS_GROUPS
    ]
    if all(close(f, p) for f, p in zip(freqs, pulls_as_beta, strict=True)):
        raise Fail(
            "the choices follow Beta(1 + successes, 1 + successes + failures): the second "
            "parameter counts every pull, not the failures only",
            "θ_a ~ Beta(1 + successes_a, 1 + failures_a)",
        )
    if all(close(f, p) for f, p in zip(freqs, swapped, strict=True)):
        raise Fail(
            "the choices follow Beta(1 + failures, 1 + successes): successes and failures are "
            "swapped in the posterior, or you take the argmin of the draws",
            "draw θ_a ~ Beta(1 + successes_a, 1 + failures_a) and pull argmax θ_a",
        )
    raise Fail(
        f"choice frequencies {shown} differ from the posterior probabilities of being best "
        f"{wanted}",
        "draw θ_a ~ Beta(1 + successes_a, 1 + failures_a) for every arm of every trial, pull "
        "argmax θ_a (arms with no pulls have the uniform posterior Beta(1, 1))",
    )


# ---------------------------------------------------------------------------------------------
# bayes_optimal_value


def _no_learning(k: int, n: int) -> float:
    return n / 2


def _greedy_value(k: int, n: int) -> float:
    """Exact expected score of the greedy (highest posterior mean) strategy."""

    @functools.cache
    def value(state: tuple) -> float:
        if sum(s + f for s, f in state) >= n:
            return 0.0
        means = [(s + 1) / (s + f + 2) for s, f in state]
        best = max(means)
        ties = [i for i, m in enumerate(means) if m == best]
        total = 0.0
        for i in ties:
            s, f = state[i]
            p = (s + 1) / (s + f + 2)
            win = tuple(sorted(state[:i] + ((s + 1, f),) + state[i + 1 :]))
            lose = tuple(sorted(state[:i] + ((s, f + 1),) + state[i + 1 :]))
            total += p * (1 + value(win)) + (1 - p) * value(lose)
        return total / len(ties)

    return value(((0, 0),) * k)


def _oracle(k: int, n: int) -> float:
    """n·E[max of k uniforms]: what knowing the probabilities in advance would give."""
    return n * k / (k + 1)


CASES = [(1, 3), (2, 2), (2, 5), (3, 4), (2, 7)]


@check(LESSON, points=2, forbid=("mlcourse.rl.bandits.BayesOptimal.__init__",))
def bayes_optimal_value(fn: Callable) -> str:
    """Checks ``fn(num_arms, num_pulls) -> float`` against exact dynamic programming."""
    for k, n in CASES:
        got = fn(k, n)
        if isinstance(got, Tensor):
            got = got.item()
        if not isinstance(got, (int, float)):
            raise Fail(
                f"expected a number, got {type(got).__name__}",
                "return V at the start, every arm (0, 0), as a float",
            )
        expected = BayesOptimal(k, n).value
        if abs(got - expected) <= 1e-6:
            continue
        wrong = [
            (
                _no_learning(k, n),
                "no learning: n/2 is what any fixed arm gives, and what a mean over the arms "
                "in place of the max gives (an arm picked at random)",
            ),
            (_oracle(k, n), "the oracle's score (it knows the probabilities in advance)"),
            (_greedy_value(k, n), "the greedy strategy's value: you never look beyond one pull"),
            (BayesOptimal(k, n - 1).value if n > 1 else None, "one pull too few"),
            (BayesOptimal(k, n + 1).value, "one pull too many"),
        ]
        for value, what in wrong:
            if value is not None and abs(got - value) <= 1e-6:
                raise Fail(
                    f"for {k} arms and {n} pulls you return {got:.6f}, which is {what}",
                    "V(state) = max over arms of p·(1 + V(after success)) + (1 − p)·V(after "
                    "failure), with p = (1 + s)/(2 + s + f) and V = 0 once n pulls are made",
                )
        raise Fail(
            f"for {k} arms and {n} pulls you return {got:.6f}, expected {expected:.6f}",
            "recurse over the counts (s, f) of every arm, with p = (1 + s)/(2 + s + f) (the "
            "posterior mean under the uniform prior) and the max over arms; memoise with "
            "functools.cache",
        )
    return "the Bayes-optimal value matches exact dynamic programming for " + ", ".join(
        f"k={k} n={n}" for k, n in CASES
    )
