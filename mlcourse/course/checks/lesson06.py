"""Checks of lesson 06 (``solutions/06_rl2.ipynb``).

- :func:`rl2_input` (implement): what the RL² policy reads at one step.
- :func:`trial_advantages` (implement): GAE over whole trials.
- :func:`fixed_collect_trials` (find the bug): a rollout whose hidden state is reset where it
  must not be.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mlcourse.algorithms.rl2 import RL2Policy, rl2_inputs
from mlcourse.course.checks._core import Fail, check, expect_tensor
from mlcourse.envs import TabularMDPVectorEnv
from mlcourse.rl.returns import discounted_returns, gae

LESSON = "06_rl2"

__all__ = ["fixed_collect_trials", "rl2_input", "trial_advantages"]


# ---------------------------------------------------------------------------------------------
# rl2_input


INPUT_SIZES = [(7, 4, 3), (5, 3, 5)]  # (num_trials, num_states, num_actions) of each case


def _input_batch(seed: int):
    gen = torch.Generator().manual_seed(seed)
    n, states, actions = INPUT_SIZES[seed]
    obs = torch.randint(states, (n,), generator=gen)
    prev_action = torch.randint(-1, actions, (n,), generator=gen)
    prev_action[0] = -1
    prev_action[1] = 2
    prev_reward = torch.randn(n, generator=gen)
    prev_done = torch.rand(n, generator=gen) < 0.4
    return obs, prev_action, prev_reward, prev_done, states, actions


def _input_variants(obs, prev_action, prev_reward, prev_done, states, actions) -> dict:
    kw = dict(num_states=states, num_actions=actions)
    right = rl2_inputs(obs, prev_action, prev_reward, prev_done, **kw)
    s, a = states, states + actions
    no_mask = right.clone()
    no_mask[prev_action < 0, s] = 1.0  # action −1 taken as action 0
    last = right.clone()
    last[prev_action < 0, s:a] = 0.0
    last[prev_action < 0, a - 1] = 1.0  # Python's index −1: the last action
    return {
        "at the start of a trial (prev_action = −1) the action one-hot should be all zeros, "
        "not action 0": no_mask,
        "prev_action = −1 selects the last action (negative indexing): the start of a trial "
        "should have an all-zero action one-hot": last,
        "the previous reward is missing": torch.cat([right[:, :a], right[:, a + 1 :]], 1),
        "the done flag is missing": right[:, :-1],
        "reward and done flag are swapped": torch.cat(
            [right[:, :a], right[:, -1:], right[:, a : a + 1]], 1
        ),
        "the previous action comes before the observation": torch.cat(
            [right[:, s:a], right[:, :s], right[:, a:]], 1
        ),
        "the action one-hot is zeroed where prev_done is set: an episode's end inside a trial "
        "still has a previous action; only prev_action = −1 (the trial's start) has none": (
            _zero_actions(right, prev_done, s, a)
        ),
    }


def _zero_actions(inputs: Tensor, where: Tensor, start: int, stop: int) -> Tensor:
    out = inputs.clone()
    out[where, start:stop] = 0.0
    return out


@check(LESSON, points=1, forbid=("mlcourse.algorithms.rl2.rl2_inputs",))
def rl2_input(fn: Callable) -> str:
    """Checks ``fn(obs, prev_action, prev_reward, prev_done, num_states, num_actions)``."""
    for seed in (0, 1):
        obs, prev_action, prev_reward, prev_done, states, actions = _input_batch(seed)
        copies = [t.clone() for t in (obs, prev_action, prev_reward, prev_done)]
        got = fn(obs, prev_action, prev_reward, prev_done, states, actions)
        if any(
            not torch.equal(t, c)
            for t, c in zip((obs, prev_action, prev_reward, prev_done), copies, strict=True)
        ):
            raise Fail("your function modified its inputs in place", "build a new tensor")
        expected = rl2_inputs(
            obs, prev_action, prev_reward, prev_done, num_states=states, num_actions=actions
        )
        if isinstance(got, Tensor) and not (
            got.shape == expected.shape and torch.allclose(got.float(), expected)
        ):
            for what, wrong in _input_variants(*_input_batch(seed)).items():
                if got.shape == wrong.shape and torch.allclose(got.float(), wrong):
                    raise Fail(
                        what,
                        "concatenate [one_hot(obs), one_hot(prev_action) (zeros if −1), "
                        "prev_reward, prev_done] along the last dimension",
                    )
        try:
            expect_tensor(got, expected, "the RL² input")
        except Fail as fail:
            fail.hint = fail.hint or (
                "float32 [one_hot(obs, num_states), one_hot(prev_action, num_actions) (zeros "
                "where prev_action = −1), prev_reward, prev_done] along dim 1"
            )
            raise
    return (
        "[one-hot observation, one-hot previous action (zero at a trial's start), previous "
        "reward, done flag] matches mlcourse.algorithms.rl2.rl2_inputs for 4 states and 3 actions, "
        "then 3 states and 5 actions"
    )


# ---------------------------------------------------------------------------------------------
# trial_advantages


def _advantage_variants(rewards, values, gamma, lam) -> dict:
    T = rewards.shape[0]
    next_value = torch.cat([values[1:], torch.zeros_like(values[:1])])
    delta = rewards + gamma * next_value - values

    def recurse(coef, delta=delta):
        out, running = torch.empty_like(rewards), torch.zeros_like(rewards[0])
        for t in range(T - 1, -1, -1):
            running = delta[t] + coef * running
            out[t] = running
        return out

    bootstrap = values[-1:]  # V(s_T) taken as the value of the last state, not 0
    bootstrapped = rewards + gamma * torch.cat([values[1:], bootstrap]) - values
    return {
        "λ is ignored: these are Monte Carlo advantages G_t − V(s_t) (λ = 1)": (
            discounted_returns(rewards, gamma) - values
        ),
        "λ is ignored: these are one-step TD errors (λ = 0)": delta,
        "the recursion multiplies by λ only; it should be γλ": recurse(lam),
        "the trial's end is bootstrapped with V of the last state; after the last step the "
        "value is 0": recurse(gamma * lam, bootstrapped),
        "time runs the wrong way: the recursion must go backwards from the end of the trial": (
            recurse(gamma * lam).flip(0)
        ),
        "the first step (t = 0) is never filled in: the backward loop stops one step early": (
            torch.cat([torch.zeros_like(rewards[:1]), recurse(gamma * lam)[1:]])
        ),
        "the advantages are normalised (mean 0, standard deviation 1): return them raw; PPO "
        "normalises its minibatches itself": _normalised(recurse(gamma * lam)),
        "γ and λ are swapped: γ discounts the next value in δ_t, and the recursion multiplies "
        "by γλ": gae(rewards, values, gamma=lam, lam=gamma),
    }


def _normalised(x: Tensor) -> Tensor:
    return (x - x.mean()) / x.std()


@check(LESSON, points=2, forbid=("mlcourse.rl.returns.gae",))
def trial_advantages(fn: Callable) -> str:
    """Checks ``fn(rewards, values, gamma, lam) -> (T, num_trials)`` against
    :func:`mlcourse.rl.returns.gae`, in float64."""
    for seed, (T, n, gamma, lam) in enumerate([(12, 5, 0.9, 0.7), (20, 3, 0.99, 0.3)]):
        gen = torch.Generator().manual_seed(seed)
        rewards = torch.randn(T, n, generator=gen, dtype=torch.float64)
        values = torch.randn(T, n, generator=gen, dtype=torch.float64)
        before = (rewards.clone(), values.clone())
        got = fn(rewards, values, gamma, lam)
        if not (torch.equal(rewards, before[0]) and torch.equal(values, before[1])):
            raise Fail(
                "your function modified `rewards` or `values` in place",
                "write into a new tensor, e.g. advantages = torch.zeros_like(rewards)",
            )
        expected = gae(rewards, values, gamma=gamma, lam=lam)
        if isinstance(got, Tensor) and (got.shape, got.dtype) == (expected.shape, expected.dtype):
            if not torch.allclose(got, expected, atol=1e-9):
                for what, wrong in _advantage_variants(rewards, values, gamma, lam).items():
                    if torch.allclose(got, wrong, atol=1e-9):
                        raise Fail(
                            what,
                            "δ_t = r_t + γ V_{t+1} − V_t (V_T = 0), A_t = δ_t + γλ A_{t+1}, from "
                            "t = T − 1 down to 0",
                        )
        try:
            expect_tensor(got, expected, "the advantages", atol=1e-9, rtol=1e-9)
        except Fail as fail:
            fail.hint = fail.hint or (
                "δ_t = r_t + γ V_{t+1} − V_t (V_T = 0), A_t = δ_t + γλ A_{t+1}, from t = T − 1 "
                "down to 0, time along dim 0"
            )
            raise
    return "GAE over whole trials matches mlcourse.rl.returns.gae (two settings of γ and λ)"


# ---------------------------------------------------------------------------------------------
# fixed_collect_trials


def _mdp_policy(seed: int) -> tuple[RL2Policy, Callable[[], TabularMDPVectorEnv]]:
    torch.manual_seed(seed)
    policy = RL2Policy(num_states=4, num_actions=3, hidden_size=16)
    with torch.no_grad():  # sharpen the policy so that its choices depend on its memory
        policy.policy_head.weight.mul_(300.0)

    def envs():
        return TabularMDPVectorEnv(
            32, num_states=4, num_actions=3, episode_length=3, num_episodes=3
        )

    return policy, envs


def _replay(policy: RL2Policy, make_envs, seed: int, actions: Tensor) -> tuple[Tensor, Tensor]:
    """The inputs a correct rollout builds for these actions, and their log-probabilities
    under the policy run over the whole trial from a zero hidden state."""
    envs = make_envs()
    obs, _ = envs.reset(seed=seed)
    n = envs.num_envs
    prev_action = torch.full((n,), -1, dtype=torch.long)
    prev_reward, prev_done = torch.zeros(n), torch.zeros(n, dtype=torch.bool)
    inputs = []
    for action in actions:
        inputs.append(
            rl2_inputs(obs, prev_action, prev_reward, prev_done, num_states=4, num_actions=3)
        )
        obs, reward, _, _, info = envs.step(action)
        prev_action, prev_reward, prev_done = action, reward, info["episode_end"]
    inputs = torch.stack(inputs)
    with torch.no_grad():
        logits, *_ = policy(inputs)
    logp = torch.log_softmax(logits, -1).gather(2, actions[..., None]).squeeze(2)
    return inputs, logp


def _diagnose_inputs(inputs, want: Tensor) -> None:
    """Names the part of the recorded inputs that differs from what the environment produced."""
    if not isinstance(inputs, Tensor) or inputs.shape != want.shape:
        return
    parts = [
        ("the one-hot observation", slice(0, 4), "obs comes from envs.reset, then from envs.step"),
        ("the one-hot previous action", slice(4, 7), "prev_action = the action just taken"),
        ("the previous reward", slice(7, 8), "prev_reward = the reward envs.step returned"),
        ("the done flag", slice(8, 9), "prev_done = info['episode_end'] (not terminated)"),
    ]
    for what, cols, source in parts:
        bad = ~torch.isclose(inputs[..., cols].float(), want[..., cols]).all(-1).all(-1)
        if bad.any():
            raise Fail(
                f"the recorded inputs differ from what the environment produced in {what}, "
                f"first at step {int(bad.nonzero()[0])}",
                f"keep the given code's bookkeeping: {source}",
            )


@check(LESSON, points=2, forbid=("mlcourse.algorithms.rl2.run_trials",))
def fixed_collect_trials(fn: Callable) -> str:
    """Checks ``fn(policy, envs, seed) -> (inputs, actions, logp)`` on random MDPs with 3
    episodes per trial: the recorded inputs must be what the environment produced, and the
    recorded log-probabilities must be those of the policy run over the whole trial from a
    zero hidden state (no reset inside the trial, a reset at its start). Called twice, so that a
    hidden state leaking from one call into the next is caught too."""
    policy, make_envs = _mdp_policy(seed=0)
    for seed in (11, 12):
        out = fn(policy, make_envs(), seed)
        if not (isinstance(out, tuple) and len(out) == 3):
            raise Fail(
                "return a tuple (inputs, actions, logp) as the given code does",
                "keep the given code's return statement: three stacked tensors",
            )
        inputs, actions, logp = out
        if not isinstance(actions, Tensor) or actions.shape != (9, 32):
            shape = tuple(actions.shape) if isinstance(actions, Tensor) else type(actions)
            raise Fail(
                f"actions should be (T, num_trials) = (9, 32), got {shape}",
                "one step per loop iteration over episode_length * num_episodes steps, stacked "
                "along dim 0",
            )
        want_inputs, want_logp = _replay(policy, make_envs, seed, actions.long())
        _diagnose_inputs(inputs, want_inputs)
        expect_tensor(inputs, want_inputs, "the recorded inputs")
        if not isinstance(logp, Tensor) or logp.shape != want_logp.shape:
            raise Fail(
                "logp should be a (T, num_trials) tensor of log-probabilities",
                "record dist.log_prob(action) at every step and stack them",
            )
        bad = ~torch.isclose(logp, want_logp, atol=1e-4).all(1)
        if bad.any():
            first = int(bad.nonzero()[0])
            if first == 0:
                raise Fail(
                    "the first step of the trial is already off: the hidden state does not "
                    "start from zero (did it leak in from a previous trial?)",
                    "start every trial from policy.initial_state(num_trials)",
                )
            if first % 3 == 0:
                raise Fail(
                    f"the log-probabilities are right until step {first}, the first step of a "
                    "new episode: the hidden state is reset at episode boundaries",
                    "in RL² the hidden state carries across the episodes of a trial; only a "
                    "new trial starts from zero",
                )
            raise Fail(
                f"the log-probabilities differ from the policy's from step {first} on",
                "carry the hidden state from one step to the next (pass it back into the GRU)",
            )
    return (
        "inputs and log-probabilities match the policy run over whole trials (3 episodes each): "
        "the hidden state starts at zero and is kept across episode boundaries"
    )
