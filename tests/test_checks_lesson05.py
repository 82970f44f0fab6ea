"""Lesson 05's checks accept the reference answers and reject every known-wrong one with a
message naming the mistake."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from mlcourse.course.checks import lesson05

# ---------------------------------------------------------------------------------------------
# ucb1_scores


def ucb_ok(successes, failures, t, c):
    pulls = successes + failures
    scores = successes / pulls + c * torch.sqrt(2 * math.log(t) / pulls)
    return torch.where(pulls == 0, torch.inf, scores)


def ucb_stub(successes, failures, t, c):
    raise NotImplementedError()


def ucb_no_two(successes, failures, t, c):
    pulls = successes + failures
    return torch.where(pulls == 0, torch.inf, successes / pulls + c * (math.log(t) / pulls) ** 0.5)


def ucb_log_n(successes, failures, t, c):
    pulls = successes + failures
    bonus = c * torch.sqrt(2 * torch.log(pulls.clamp(min=1)) / pulls)
    return torch.where(pulls == 0, torch.inf, successes / pulls + bonus)


def ucb_posterior_mean(successes, failures, t, c):
    pulls = successes + failures
    scores = (successes + 1) / (pulls + 2) + c * torch.sqrt(2 * math.log(t) / pulls)
    return torch.where(pulls == 0, torch.inf, scores)


def ucb_no_bonus(successes, failures, t, c):
    pulls = successes + failures
    return torch.where(pulls == 0, torch.inf, successes / pulls)


def ucb_c_inside(successes, failures, t, c):
    pulls = successes + failures
    return torch.where(
        pulls == 0, torch.inf, successes / pulls + torch.sqrt(2 * c * math.log(t) / pulls)
    )


def ucb_untried_zero(successes, failures, t, c):
    return torch.nan_to_num(ucb_ok(successes, failures, t, c), posinf=0.0)


def ucb_nan(successes, failures, t, c):
    pulls = successes + failures
    return successes / pulls + c * torch.sqrt(2 * math.log(t) / pulls)


def ucb_in_place(successes, failures, t, c):
    failures += successes  # reuses the tensor for the pull counts
    return torch.where(
        failures == 0,
        torch.inf,
        successes / failures + c * torch.sqrt(2 * math.log(t) / failures),
    )


def ucb_transposed(successes, failures, t, c):
    return ucb_ok(successes, failures, t, c).T


def ucb_float64(successes, failures, t, c):
    return ucb_ok(successes.double(), failures.double(), t, c)


def ucb_hard_coded_t(successes, failures, t, c):
    return ucb_ok(successes, failures, 12, c)


def ucb_t_plus_one(successes, failures, t, c):
    return ucb_ok(successes, failures, t + 1, c)


def ucb_c_everywhere(successes, failures, t, c):
    return c * ucb_ok(successes, failures, t, 1.0)


def test_ucb1_accepts_the_reference():
    result = lesson05.ucb1_scores(ucb_ok)
    assert result.passed, result.message


@pytest.mark.parametrize(
    "answer, words",
    [
        (ucb_stub, "not implemented yet"),
        (ucb_no_two, "no factor 2"),
        (ucb_log_n, "own pull count"),
        (ucb_posterior_mean, "posterior mean"),
        (ucb_no_bonus, "bonus is missing"),
        (ucb_c_inside, "inside the square root"),
        (ucb_untried_zero, "score 0 instead of +inf"),
        (ucb_nan, "NaN"),
        (ucb_in_place, "in place"),
        (ucb_transposed, "shape"),
        (ucb_float64, "dtype"),
        (ucb_hard_coded_t, "t = 12, not the t = 7 given"),
        (ucb_t_plus_one, "t = 13, not the t = 12 given"),
        (ucb_c_everywhere, "whole score"),
    ],
)
def test_ucb1_rejects_wrong_answers(answer, words):
    result = lesson05.ucb1_scores(answer)
    assert not result.passed and result.hint, str(result)
    assert words in result.message, result.message


# ---------------------------------------------------------------------------------------------
# thompson_choice


def ts_ok(successes, failures):
    return torch.distributions.Beta(successes + 1, failures + 1).sample().argmax(-1)


def ts_stub(successes, failures):
    raise NotImplementedError()


def ts_no_prior(successes, failures):
    return torch.distributions.Beta(successes, failures).sample().argmax(-1)


def ts_swapped(successes, failures):
    return torch.distributions.Beta(failures + 1, successes + 1).sample().argmax(-1)


def ts_greedy(successes, failures):
    return ((successes + 1) / (successes + failures + 2)).argmax(-1)


def ts_argmin(successes, failures):
    return torch.distributions.Beta(successes + 1, failures + 1).sample().argmin(-1)


def ts_one_draw_for_all(successes, failures):
    draw = torch.distributions.Beta(successes[0] + 1, failures[0] + 1).sample()
    return draw.argmax().repeat(successes.shape[0])


def ts_wrong_axis(successes, failures):
    return torch.distributions.Beta(successes + 1, failures + 1).sample().argmax(0)


def ts_uniform(successes, failures):
    return torch.randint(successes.shape[1], (successes.shape[0],))


def ts_probabilities(successes, failures):
    return torch.distributions.Beta(successes + 1, failures + 1).sample()


def ts_pulls_as_beta(successes, failures):
    return torch.distributions.Beta(successes + 1, successes + failures + 1).sample().argmax(-1)


def test_thompson_accepts_the_reference():
    result = lesson05.thompson_choice(ts_ok)
    assert result.passed, result.message


@pytest.mark.parametrize(
    "answer, words",
    [
        (ts_stub, "not implemented yet"),
        (ts_no_prior, "ignores the prior"),
        (ts_swapped, "swapped"),
        (ts_greedy, "greedy"),
        (ts_argmin, "argmin"),
        (ts_swapped, "argmin"),
        (ts_one_draw_for_all, "not random"),
        (ts_wrong_axis, "shape"),
        (ts_uniform, "differ from the posterior"),
        (ts_probabilities, "shape"),
        (ts_pulls_as_beta, "counts every pull"),
    ],
)
def test_thompson_rejects_wrong_answers(answer, words):
    result = lesson05.thompson_choice(answer)
    assert not result.passed and result.hint, str(result)
    assert words in result.message, result.message


# ---------------------------------------------------------------------------------------------
# bayes_optimal_value


def value_ok(num_arms, num_pulls):
    @functools.cache
    def value(state):
        if sum(s + f for s, f in state) == num_pulls:
            return 0.0
        best = 0.0
        for i, (s, f) in enumerate(state):
            p = (s + 1) / (s + f + 2)
            win = tuple(sorted(state[:i] + ((s + 1, f),) + state[i + 1 :]))
            lose = tuple(sorted(state[:i] + ((s, f + 1),) + state[i + 1 :]))
            best = max(best, p * (1 + value(win)) + (1 - p) * value(lose))
        return best

    return value(((0, 0),) * num_arms)


def value_unsorted(num_arms, num_pulls):
    """Also right: no canonical ordering, just memoisation on the raw counts."""

    @functools.cache
    def value(counts, left):
        if left == 0:
            return 0.0
        best = 0.0
        for i, (s, f) in enumerate(counts):
            p = (s + 1) / (s + f + 2)
            win = counts[:i] + ((s + 1, f),) + counts[i + 1 :]
            lose = counts[:i] + ((s, f + 1),) + counts[i + 1 :]
            best = max(best, p * (1 + value(win, left - 1)) + (1 - p) * value(lose, left - 1))
        return best

    return value(((0, 0),) * num_arms, num_pulls)


def value_stub(num_arms, num_pulls):
    raise NotImplementedError()


def value_no_learning(num_arms, num_pulls):
    return num_pulls / 2


def value_oracle(num_arms, num_pulls):
    return num_pulls * num_arms / (num_arms + 1)


def value_greedy(num_arms, num_pulls):
    return lesson05._greedy_value(num_arms, num_pulls)


def value_one_short(num_arms, num_pulls):
    return value_ok(num_arms, num_pulls - 1)


def value_no_reward(num_arms, num_pulls):
    """Forgets the +1 of a success: every value is 0."""
    return 0.0


def value_mean_over_arms(num_arms, num_pulls):
    """The recursion with a mean over the arms where the max belongs."""

    @functools.cache
    def value(state):
        if sum(s + f for s, f in state) == num_pulls:
            return 0.0
        total = 0.0
        for i, (s, f) in enumerate(state):
            p = (s + 1) / (s + f + 2)
            win = tuple(sorted(state[:i] + ((s + 1, f),) + state[i + 1 :]))
            lose = tuple(sorted(state[:i] + ((s, f + 1),) + state[i + 1 :]))
            total += p * (1 + value(win)) + (1 - p) * value(lose)
        return total / len(state)

    return value(((0, 0),) * num_arms)


def value_uniform_prior_forgotten(num_arms, num_pulls):
    """p = s / (s + f), and 1/2 for an arm never pulled: the mean without the prior's counts."""

    @functools.cache
    def value(state):
        if sum(s + f for s, f in state) == num_pulls:
            return 0.0
        best = 0.0
        for i, (s, f) in enumerate(state):
            p = s / (s + f) if s + f else 0.5
            win = tuple(sorted(state[:i] + ((s + 1, f),) + state[i + 1 :]))
            lose = tuple(sorted(state[:i] + ((s, f + 1),) + state[i + 1 :]))
            best = max(best, p * (1 + value(win)) + (1 - p) * value(lose))
        return best

    return value(((0, 0),) * num_arms)


def value_tensor(num_arms, num_pulls):
    return torch.tensor(value_ok(num_arms, num_pulls))


@pytest.mark.parametrize("answer", [value_ok, value_unsorted, value_tensor])
def test_bayes_optimal_value_accepts_right_answers(answer):
    result = lesson05.bayes_optimal_value(answer)
    assert result.passed, result.message


@pytest.mark.parametrize(
    "answer, words",
    [
        (value_stub, "not implemented yet"),
        (value_no_learning, "no learning"),
        (value_oracle, "oracle"),
        (value_greedy, "greedy"),
        (value_one_short, "one pull too few"),
        (value_no_reward, "expected"),
        (value_mean_over_arms, "mean over the arms"),
        (value_uniform_prior_forgotten, "expected"),
    ],
)
def test_bayes_optimal_value_rejects_wrong_answers(answer, words):
    result = lesson05.bayes_optimal_value(answer)
    assert not result.passed and result.hint, str(result)
    assert words in result.message, result.message
