"""The meta-RL environments: Gymnasium's checker, the task distributions, the batched versions'
agreement with the single ones, the vector API's autoreset, and clear errors."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import mlcourse.envs
from mlcourse.envs import (
    BernoulliBanditEnv,
    BernoulliBanditVectorEnv,
    Navigation2DEnv,
    Navigation2DVectorEnv,
    TabularMDPEnv,
    TabularMDPVectorEnv,
)
from mlcourse.envs.classic import MountainCarContinuousVectorEnv, PendulumVectorEnv


@pytest.mark.parametrize("env_id", sorted(mlcourse.envs.ENV_IDS))
def test_every_registered_env_passes_gymnasiums_checker(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_make_passes_the_sizes():
    env = gym.make("mlcourse/TabularMDP-v0", num_states=4, num_actions=3, num_episodes=2)
    assert env.observation_space == gym.spaces.Discrete(4)
    assert env.action_space == gym.spaces.Discrete(3)


SIZED = {
    BernoulliBanditEnv: {"num_arms": 3, "num_pulls": 4},
    BernoulliBanditVectorEnv: {"num_envs": 2, "num_arms": 3, "num_pulls": 4},
    TabularMDPEnv: {"num_states": 3, "num_actions": 2, "episode_length": 4, "num_episodes": 2},
    TabularMDPVectorEnv: {"num_envs": 2, "num_states": 3, "num_actions": 2, "num_episodes": 2},
    Navigation2DEnv: {"max_steps": 5},
    Navigation2DVectorEnv: {"num_envs": 2, "max_steps": 5},
    PendulumVectorEnv: {"num_envs": 2, "max_steps": 5},
    MountainCarContinuousVectorEnv: {"num_envs": 2, "max_steps": 5},
}


@pytest.mark.parametrize("cls", list(SIZED), ids=lambda c: c.__name__)
def test_sizes_may_be_any_integral_number(cls):
    """NumPy integers (what ``np.arange`` or a config array hands out) and 0-d integer tensors
    work like ints and are stored as ints; floats, bools and sizes below 1 are refused."""
    sizes = SIZED[cls]
    for convert in (np.int64, np.int32, torch.tensor):
        env = cls(**{k: convert(v) for k, v in sizes.items()})
        for k, v in sizes.items():
            assert type(getattr(env, k)) is int and getattr(env, k) == v, k
        env.reset(seed=0)
    name = next(iter(sizes))
    for bad in (2.0, True, 0, np.int64(-1), "3"):
        with pytest.raises(ValueError, match=f"{name} must be a whole number of at least 1"):
            cls(**{**sizes, name: bad})


# ---------------------------------------------------------------------------------------------
# Bandits


def test_bandit_trial_has_num_pulls_and_fixed_task():
    env = BernoulliBanditEnv(num_arms=3, num_pulls=4)
    _, info = env.reset(seed=0, options={"probs": [0.0, 1.0, 0.0]})
    assert info["probs"].tolist() == [0.0, 1.0, 0.0]
    steps = [env.step(1) for _ in range(4)]
    assert [s[1] for s in steps] == [1.0] * 4
    assert [s[2] for s in steps] == [False, False, False, True]
    with pytest.raises(RuntimeError, match="trial is over"):
        env.step(0)


def test_bandit_reset_draws_a_new_task_reproducibly():
    env = BernoulliBanditEnv()
    a = env.reset(seed=3)[1]["probs"]
    b = env.reset()[1]["probs"]
    c = env.reset(seed=3)[1]["probs"]
    assert not np.array_equal(a, b) and np.array_equal(a, c)


def test_bandit_errors_say_what_to_do():
    env = BernoulliBanditEnv(num_arms=2)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="arm in 0..1"):
        env.step(2)
    with pytest.raises(ValueError, match=r"shape \(3,\); expected \(2,\)"):
        env.reset(options={"probs": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        env.reset(options={"probs": [0.1, 1.2]})
    with pytest.raises(ValueError, match="num_pulls"):
        BernoulliBanditEnv(num_pulls=0)


def test_batched_bandit_task_distribution_is_uniform():
    envs = BernoulliBanditVectorEnv(20_000, num_arms=5)
    _, info = envs.reset(seed=0)
    p = info["probs"]
    assert p.shape == (20_000, 5) and p.min() >= 0 and p.max() <= 1
    assert abs(p.mean().item() - 0.5) < 0.005 and abs(p.var().item() - 1 / 12) < 0.002


def test_batched_bandit_rewards_match_the_arm_probabilities():
    probs = torch.tensor([[0.1, 0.5, 0.9]]).repeat(4000, 1)
    envs = BernoulliBanditVectorEnv(4000, num_arms=3, num_pulls=50)
    envs.reset(seed=1, options={"probs": probs})
    for arm, p in enumerate([0.1, 0.5, 0.9]):
        _, reward, *_ = envs.step(torch.full((4000,), arm))
        stderr = (p * (1 - p) / 4000) ** 0.5
        assert abs(reward.mean().item() - p) < 5 * stderr


def test_batched_and_single_bandits_agree_step_for_step_on_a_fixed_task():
    """With probabilities 0 and 1 the outcome is determined: both versions must agree."""
    probs = [0.0, 1.0, 1.0, 0.0]
    single = BernoulliBanditEnv(num_arms=4, num_pulls=6)
    single.reset(seed=0, options={"probs": probs})
    batched = BernoulliBanditVectorEnv(1, num_arms=4, num_pulls=6)
    batched.reset(seed=0, options={"probs": torch.tensor([probs])})
    for arm in [0, 1, 2, 3, 1, 0]:
        _, r1, term1, trunc1, _ = single.step(arm)
        _, r2, term2, trunc2, _ = batched.step(torch.tensor([arm]))
        assert (r1, term1, trunc1) == (r2.item(), term2.item(), trunc2.item())


def test_batched_bandit_follows_next_step_autoreset():
    envs = BernoulliBanditVectorEnv(3, num_arms=2, num_pulls=2)
    _, info = envs.reset(seed=0, options={"probs": torch.ones(3, 2)})
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    ones = torch.ones(3, dtype=torch.long)
    assert envs.step(ones)[2].tolist() == [False] * 3
    _, reward, terminated, _, _ = envs.step(ones)
    assert terminated.tolist() == [True] * 3 and reward.tolist() == [1.0] * 3
    _, reward, terminated, _, _ = envs.step(ones)  # the reset step: action ignored
    assert reward.tolist() == [0.0] * 3 and terminated.tolist() == [False] * 3
    assert not torch.equal(envs.probs, torch.ones(3, 2))  # a new bandit was drawn
    assert envs.pulls.tolist() == [0, 0, 0]


def test_batched_bandit_is_reproducible_from_its_seed():
    def run(seed):
        envs = BernoulliBanditVectorEnv(8, num_pulls=5)
        envs.reset(seed=seed)
        a = torch.arange(8) % 5
        return torch.stack([envs.step(a)[1] for _ in range(12)])

    assert torch.equal(run(4), run(4)) and not torch.equal(run(4), run(5))


def test_batched_bandit_follows_the_vector_api():
    envs = BernoulliBanditVectorEnv(6, num_arms=4)
    assert isinstance(envs, gym.vector.VectorEnv) and envs.num_envs == 6
    assert envs.single_action_space == gym.spaces.Discrete(4)
    assert envs.action_space.shape == (6,)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (6,) and obs.dtype == torch.long
    envs.step(np.zeros(6, dtype=np.int64))  # arrays are accepted too


def test_batched_env_errors_say_what_to_do():
    envs = BernoulliBanditVectorEnv(3, num_arms=2)
    with pytest.raises(RuntimeError, match="reset"):
        envs.step(torch.zeros(3, dtype=torch.long))
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected \(3,\)"):
        envs.step(torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="integers"):
        envs.step(torch.zeros(3))
    with pytest.raises(ValueError, match="0..1"):
        envs.step(torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="num_envs"):
        BernoulliBanditVectorEnv(0)


# ---------------------------------------------------------------------------------------------
# Tabular MDPs


def _deterministic_mdp(num_states=4, num_actions=2):
    """Action a moves from s to (s + a + 1) mod S; reward means are distinct numbers."""
    transitions = np.zeros((num_states, num_actions, num_states))
    for s in range(num_states):
        for a in range(num_actions):
            transitions[s, a, (s + a + 1) % num_states] = 1.0
    means = np.arange(num_states * num_actions, dtype=np.float64).reshape(num_states, num_actions)
    return means, transitions


def test_mdp_episodes_restart_in_state_zero_and_the_trial_terminates():
    means, transitions = _deterministic_mdp()
    env = TabularMDPEnv(num_states=4, num_actions=2, episode_length=3, num_episodes=2)
    obs, _ = env.reset(seed=0, options={"reward_means": means, "transitions": transitions})
    states, ends, terms = [int(obs)], [], []
    for _ in range(6):
        obs, _, terminated, truncated, info = env.step(0)
        states.append(int(obs))
        ends.append(info["episode_end"])
        terms.append(terminated)
        assert not truncated
    assert states == [0, 1, 2, 0, 1, 2, 0]
    assert ends == [False, False, True] * 2
    assert terms == [False] * 5 + [True]


def test_batched_and_single_mdps_agree_step_for_step_on_deterministic_transitions():
    means, transitions = _deterministic_mdp()
    single = TabularMDPEnv(num_states=4, num_actions=2, episode_length=3, num_episodes=2)
    single.reset(seed=0, options={"reward_means": means, "transitions": transitions})
    batched = TabularMDPVectorEnv(1, num_states=4, num_actions=2, episode_length=3, num_episodes=2)
    batched.reset(
        seed=0,
        options={"reward_means": means[None], "transitions": transitions[None]},
    )
    for action in [1, 0, 1, 1, 0, 0]:
        s1, r1, t1, _, i1 = single.step(action)
        s2, r2, t2, _, i2 = batched.step(torch.tensor([action]))
        assert int(s1) == s2.item() and t1 == t2.item()
        assert i1["episode_end"] == i2["episode_end"].item()


def test_batched_mdp_rewards_and_transitions_have_the_right_distribution():
    n = 20_000
    envs = TabularMDPVectorEnv(n, num_states=3, num_actions=2, episode_length=5)
    means = torch.tensor([[0.5, -1.0], [0.0, 0.0], [0.0, 0.0]]).expand(n, 3, 2)
    rows = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    transitions = torch.zeros(n, 3, 2, 3)
    transitions[:, 0] = rows
    transitions[:, 1:] = 1 / 3
    envs.reset(seed=0, options={"reward_means": means, "transitions": transitions})
    next_state, reward, *_ = envs.step(torch.zeros(n, dtype=torch.long))
    assert abs(reward.mean().item() - 0.5) < 5 / n**0.5
    assert abs(reward.std().item() - 1.0) < 0.03
    freq = torch.bincount(next_state, minlength=3).float() / n
    assert torch.allclose(freq, rows[0], atol=0.015)


def test_batched_mdp_task_distribution():
    envs = TabularMDPVectorEnv(4000)
    _, info = envs.reset(seed=0)
    means, transitions = info["reward_means"], info["transitions"]
    assert means.shape == (4000, 10, 5) and transitions.shape == (4000, 10, 5, 10)
    assert abs(means.mean().item() - 1.0) < 0.01 and abs(means.std().item() - 1.0) < 0.01
    assert torch.allclose(transitions.sum(-1), torch.ones(4000, 10, 5), atol=1e-5)
    # A flat Dirichlet over 10 states: each entry has mean 1/10 and variance 9/1100.
    assert abs(transitions.mean().item() - 0.1) < 1e-4
    assert abs(transitions.var().item() - 9 / 1100) < 2e-4


def test_single_mdp_task_distribution():
    env = TabularMDPEnv()
    draws = [env.reset(seed=i)[1] for i in range(400)]
    means = np.stack([d["reward_means"] for d in draws])
    assert abs(means.mean() - 1.0) < 0.03 and abs(means.std() - 1.0) < 0.03


def test_batched_mdp_episode_flags_and_autoreset():
    envs = TabularMDPVectorEnv(2, episode_length=2, num_episodes=2)
    envs.reset(seed=0)
    zeros = torch.zeros(2, dtype=torch.long)
    flags = [envs.step(zeros) for _ in range(4)]
    assert [f[4]["episode_end"].tolist() for f in flags] == [[False] * 2, [True] * 2] * 2
    assert [f[2].tolist() for f in flags] == [[False] * 2] * 3 + [[True] * 2]
    obs, reward, terminated, _, _ = envs.step(zeros)  # next-step autoreset
    assert obs.tolist() == [0, 0] and reward.tolist() == [0.0, 0.0]
    assert envs.t.tolist() == [0, 0]


def test_mdp_errors_say_what_to_do():
    env = TabularMDPEnv(num_states=2, num_actions=2)
    means, transitions = np.zeros((2, 2)), np.full((2, 2, 2), 0.4)
    with pytest.raises(ValueError, match="summing to 1"):
        env.reset(options={"reward_means": means, "transitions": transitions})
    with pytest.raises(ValueError, match="both"):
        env.reset(options={"reward_means": means})
    with pytest.raises(ValueError, match=r"expected \(2, 2, 2\)"):
        env.reset(options={"reward_means": means, "transitions": np.ones((2, 2, 3)) / 3})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_envs_run_on_cuda():
    for envs in (BernoulliBanditVectorEnv(4, device="cuda"), TabularMDPVectorEnv(4, device="cuda")):
        obs, _ = envs.reset(seed=0)
        obs, reward, *_ = envs.step(torch.zeros(4, dtype=torch.long, device="cuda"))
        assert obs.device.type == "cuda" and reward.device.type == "cuda"


# ---------------------------------------------------------------------------------------------
# 2D navigation


def test_navigation_clips_velocity_and_rewards_minus_the_distance():
    env = Navigation2DEnv()
    obs, info = env.reset(seed=0, options={"goal": (0.25, -0.05)})
    assert obs.tolist() == [0.0, 0.0] and info["goal"].tolist() == pytest.approx([0.25, -0.05])
    obs, reward, terminated, truncated, _ = env.step(np.array([0.5, -0.02]))
    assert obs.tolist() == pytest.approx([0.1, -0.02])
    assert reward == pytest.approx(-np.hypot(0.15, 0.03), abs=1e-6)
    assert not terminated and not truncated


def test_navigation_terminates_near_the_goal_and_truncates_after_max_steps():
    env = Navigation2DEnv()
    env.reset(seed=0, options={"goal": (0.15, 0.0)})
    assert env.step([0.1, 0.0])[2] is False
    assert env.step([0.05, 0.0])[2] is True
    env = Navigation2DEnv(max_steps=3)
    env.reset(seed=0, options={"goal": (0.4, 0.4)})
    ends = [env.step([0.0, 0.0])[2:4] for _ in range(3)]
    assert ends == [(False, False), (False, False), (False, True)]


def test_navigation_goals_are_uniform_on_the_square():
    envs = Navigation2DVectorEnv(20_000)
    _, info = envs.reset(seed=0)
    goal = info["goal"]
    assert goal.min() >= -0.5 and goal.max() <= 0.5
    assert abs(goal.mean().item()) < 0.005 and abs(goal.var().item() - 1 / 12) < 0.003


def test_batched_and_single_navigation_agree_step_for_step():
    rng = np.random.default_rng(0)
    goals = rng.uniform(-0.5, 0.5, size=(4, 2)).astype(np.float32)
    goals[0] = (0.12, 0.0)  # one that is reached, to cover termination
    batched = Navigation2DVectorEnv(4, max_steps=20)
    batched.reset(seed=0, options={"goal": torch.from_numpy(goals)})
    singles = [Navigation2DEnv(max_steps=20) for _ in range(4)]
    for env, goal in zip(singles, goals, strict=True):
        env.reset(seed=0, options={"goal": goal})
    actions = rng.normal(0, 0.1, size=(20, 4, 2)).astype(np.float32)
    actions[:, 0] = (0.06, 0.0)
    done = [False] * 4
    for t in range(20):
        obs, reward, term, trunc, _ = batched.step(torch.from_numpy(actions[t]))
        for i, env in enumerate(singles):
            if done[i]:
                continue
            o, r, te, tr, _ = env.step(actions[t, i])
            assert obs[i].tolist() == o.tolist()
            assert reward[i].item() == pytest.approx(r, abs=1e-6)
            assert (term[i].item(), trunc[i].item()) == (te, tr)
            done[i] = te or tr
    assert done[0] and all(done)


def test_batched_navigation_autoresets_and_rejects_bad_actions():
    envs = Navigation2DVectorEnv(2, max_steps=2)
    envs.reset(seed=0, options={"goal": torch.tensor([[0.3, 0.3], [0.3, 0.3]])})
    zeros = torch.zeros(2, 2)
    envs.step(zeros)
    assert envs.step(zeros)[3].tolist() == [True, True]
    obs, reward, *_ = envs.step(torch.ones(2, 2))  # the reset step: action ignored
    assert obs.tolist() == [[0.0, 0.0], [0.0, 0.0]] and reward.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"expected \(2, 2\)"):
        envs.step(torch.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        envs.step(torch.full((2, 2), float("nan")))
    with pytest.raises(ValueError, match="shape"):
        Navigation2DEnv().reset(options={"goal": (0.1, 0.2, 0.3)})
