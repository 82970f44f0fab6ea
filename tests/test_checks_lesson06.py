"""Lesson 06's checks accept the reference answers and reject every known-wrong one with a
message naming the mistake."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from own import own

from mlcourse.algorithms import rl2
from mlcourse.course.checks import lesson06
from mlcourse.rl.returns import discounted_returns

rl2_inputs = own(rl2.rl2_inputs)

# ---------------------------------------------------------------------------------------------
# rl2_input


def input_ok(obs, prev_action, prev_reward, prev_done, num_states, num_actions):
    return rl2_inputs(
        obs, prev_action, prev_reward, prev_done, num_states=num_states, num_actions=num_actions
    )


def input_by_hand(obs, prev_action, prev_reward, prev_done, num_states, num_actions):
    """Also right: an identity matrix with an extra zero row for 'no action'."""
    table = torch.cat([torch.eye(num_actions), torch.zeros(1, num_actions)])
    action = table[torch.where(prev_action < 0, num_actions, prev_action)]
    state = torch.eye(num_states)[obs]
    return torch.cat([state, action, prev_reward[:, None], prev_done.float()[:, None]], dim=1)


def input_stub(*args):
    raise NotImplementedError()


def input_no_mask(obs, prev_action, prev_reward, prev_done, num_states, num_actions):
    action = F.one_hot(prev_action.clamp(min=0), num_actions).float()
    state = F.one_hot(obs, num_states).float()
    return torch.cat([state, action, prev_reward[:, None], prev_done.float()[:, None]], 1)


def input_negative_index(obs, prev_action, prev_reward, prev_done, num_states, num_actions):
    action = torch.eye(num_actions)[prev_action]
    state = F.one_hot(obs, num_states).float()
    return torch.cat([state, action, prev_reward[:, None], prev_done.float()[:, None]], 1)


def input_one_hot_crash(obs, prev_action, prev_reward, prev_done, num_states, num_actions):
    action = F.one_hot(prev_action, num_actions).float()
    state = F.one_hot(obs, num_states).float()
    return torch.cat([state, action, prev_reward[:, None], prev_done.float()[:, None]], 1)


def input_no_reward(*args):
    x = input_ok(*args)
    s_a = args[4] + args[5]
    return torch.cat([x[:, :s_a], x[:, s_a + 1 :]], 1)


def input_no_done(*args):
    return input_ok(*args)[:, :-1]


def input_swapped(*args):
    x = input_ok(*args)
    return torch.cat([x[:, :-2], x[:, -1:], x[:, -2:-1]], 1)


def input_action_first(*args):
    x = input_ok(*args)
    s, a = args[4], args[4] + args[5]
    return torch.cat([x[:, s:a], x[:, :s], x[:, a:]], 1)


def input_float64(*args):
    return input_ok(*args).double()


def input_raw_obs(obs, prev_action, prev_reward, prev_done, num_states, num_actions):
    x = input_ok(obs, prev_action, prev_reward, prev_done, num_states, num_actions)
    return torch.cat([obs.float()[:, None], x[:, num_states:]], 1)


def input_done_clears_action(obs, prev_action, prev_reward, prev_done, num_states, num_actions):
    """Treats the end of an episode like the start of a trial: no previous action."""
    x = input_ok(obs, prev_action, prev_reward, prev_done, num_states, num_actions)
    x[prev_done, num_states : num_states + num_actions] = 0.0
    return x


def input_hard_coded_sizes(obs, prev_action, prev_reward, prev_done, num_states, num_actions):
    return input_ok(obs, prev_action, prev_reward, prev_done, 4, 3)


@pytest.mark.parametrize("answer", [input_ok, input_by_hand])
def test_rl2_input_accepts_right_answers(answer):
    result = lesson06.rl2_input(answer)
    assert result.passed, result.message


@pytest.mark.parametrize(
    "answer, words",
    [
        (input_stub, "not implemented yet"),
        (input_no_mask, "not action 0"),
        (input_negative_index, "negative indexing"),
        (input_one_hot_crash, "raised RuntimeError"),
        (input_no_reward, "reward is missing"),
        (input_no_done, "done flag is missing"),
        (input_swapped, "swapped"),
        (input_action_first, "before the observation"),
        (input_float64, "dtype"),
        (input_raw_obs, "shape"),
        (input_done_clears_action, "zeroed where prev_done is set"),
        (input_hard_coded_sizes, "raised RuntimeError"),
    ],
)
def test_rl2_input_rejects_wrong_answers(answer, words):
    result = lesson06.rl2_input(answer)
    assert not result.passed and result.hint, str(result)
    assert words in result.message, result.message


# ---------------------------------------------------------------------------------------------
# trial_advantages


def adv_ok(rewards, values, gamma, lam):
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    next_value = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
        next_value = values[t]
    return advantages


def adv_stub(rewards, values, gamma, lam):
    raise NotImplementedError()


def adv_monte_carlo(rewards, values, gamma, lam):
    return discounted_returns(rewards, gamma) - values


def adv_td(rewards, values, gamma, lam):
    next_value = torch.cat([values[1:], torch.zeros_like(values[:1])])
    return rewards + gamma * next_value - values


def adv_lambda_only(rewards, values, gamma, lam):
    return adv_ok(rewards, values, gamma, lam / gamma)


def adv_gamma_only(rewards, values, gamma, lam):
    return adv_ok(rewards, values, gamma, 1.0)


def adv_bootstrap_last(rewards, values, gamma, lam):
    next_value = torch.cat([values[1:], values[-1:]])
    delta = rewards + gamma * next_value - values
    out, running = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = delta[t] + gamma * lam * running
        out[t] = running
    return out


def adv_forward_in_time(rewards, values, gamma, lam):
    return adv_ok(rewards, values, gamma, lam).flip(0)


def adv_wrong_axis(rewards, values, gamma, lam):
    return adv_ok(rewards.T, values.T, gamma, lam)


def adv_in_place(rewards, values, gamma, lam):
    out = adv_ok(rewards, values, gamma, lam)
    rewards -= values  # reuses the buffer
    return out


def adv_float32(rewards, values, gamma, lam):
    return adv_ok(rewards, values, gamma, lam).float()


def adv_loop_stops_early(rewards, values, gamma, lam):
    """`range(T - 1, 0, -1)`: t = 0 is never computed."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    next_value = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, 0, -1):
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
        next_value = values[t]
    return advantages


def adv_normalised(rewards, values, gamma, lam):
    a = adv_ok(rewards, values, gamma, lam)
    return (a - a.mean()) / a.std()


def adv_gamma_lam_swapped(rewards, values, gamma, lam):
    return adv_ok(rewards, values, lam, gamma)


def test_trial_advantages_accepts_the_reference():
    result = lesson06.trial_advantages(adv_ok)
    assert result.passed, result.message


@pytest.mark.parametrize(
    "answer, words",
    [
        (adv_stub, "not implemented yet"),
        (adv_monte_carlo, "Monte Carlo"),
        (adv_td, "TD errors"),
        (adv_lambda_only, "λ only"),
        (adv_gamma_only, "Monte Carlo"),
        (adv_bootstrap_last, "bootstrapped"),
        (adv_forward_in_time, "wrong way"),
        (adv_wrong_axis, "shape"),
        (adv_in_place, "in place"),
        (adv_float32, "dtype"),
        (adv_loop_stops_early, "one step early"),
        (adv_normalised, "normalised"),
        (adv_gamma_lam_swapped, "swapped"),
    ],
)
def test_trial_advantages_rejects_wrong_answers(answer, words):
    result = lesson06.trial_advantages(answer)
    assert not result.passed and result.hint, str(result)
    assert words in result.message, result.message


# ---------------------------------------------------------------------------------------------
# fixed_collect_trials


def make_collector(
    *,
    reset_at_episodes=False,
    leak=False,
    no_carry=False,
    stale_done=False,
    masked_reset=False,
    done_from_terminated=False,
):
    carried = {}

    def collect(policy, envs, seed):
        obs, _ = envs.reset(seed=seed)
        n = envs.num_envs
        hidden = carried.get("h") if leak and "h" in carried else policy.initial_state(n)
        prev_action = torch.full((n,), -1, dtype=torch.long)
        prev_reward, prev_done = torch.zeros(n), torch.zeros(n, dtype=torch.bool)
        inputs, actions, logps = [], [], []
        with torch.no_grad():
            for _ in range(envs.episode_length * envs.num_episodes):
                if reset_at_episodes and prev_done.any():
                    hidden = policy.initial_state(n)
                if masked_reset:  # zeroes the memory of the trials whose episode just ended
                    hidden = hidden * (~prev_done).float()[None, :, None]
                x = rl2_inputs(
                    obs,
                    prev_action,
                    prev_reward,
                    prev_done,
                    num_states=policy.num_states,
                    num_actions=policy.num_actions,
                )
                logits, _, _, new_hidden = policy(x[None], None if no_carry else hidden)
                hidden = new_hidden
                dist = torch.distributions.Categorical(logits=logits[0])
                action = dist.sample()
                obs, reward, terminated, _, info = envs.step(action)
                inputs.append(x)
                actions.append(action)
                logps.append(dist.log_prob(action))
                prev_action, prev_reward = action, reward
                if done_from_terminated:
                    prev_done = terminated
                elif not stale_done:
                    prev_done = info["episode_end"]
        carried["h"] = hidden
        return torch.stack(inputs), torch.stack(actions), torch.stack(logps)

    return collect


def collect_stub(policy, envs, seed):
    raise NotImplementedError()


def collect_list(policy, envs, seed):
    return list(make_collector()(policy, envs, seed))


def test_fixed_collect_trials_accepts_the_fix():
    result = lesson06.fixed_collect_trials(make_collector())
    assert result.passed, result.message


@pytest.mark.parametrize(
    "answer, words",
    [
        (collect_stub, "not implemented yet"),
        (make_collector(reset_at_episodes=True), "reset at episode boundaries"),
        (make_collector(leak=True), "does not start from zero"),
        (make_collector(no_carry=True), "carry the hidden state"),
        (make_collector(stale_done=True), "recorded inputs"),
        (collect_list, "tuple"),
        (make_collector(masked_reset=True), "reset at episode boundaries"),
        (make_collector(done_from_terminated=True), "in the done flag, first at step 3"),
    ],
)
def test_fixed_collect_trials_rejects_wrong_answers(answer, words):
    result = lesson06.fixed_collect_trials(answer)
    assert not result.passed and result.hint, str(result)
    assert words in result.message + (result.hint or ""), result.message
