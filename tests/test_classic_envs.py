"""The batched classic-control environments follow Gymnasium's own, step for step."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from mlcourse.envs.classic import MountainCarContinuousVectorEnv, PendulumVectorEnv


def _follow(gym_id, vector_cls, num_steps, action_scale, seed):
    """Runs Gymnasium's environment and ours from the same start with the same actions (some
    outside the action range, to exercise clipping); returns the largest differences."""
    env = gym.make(gym_id)
    obs_gym, _ = env.reset(seed=seed)
    state = torch.tensor(np.asarray(env.unwrapped.state, dtype=np.float64))[None]
    ours = vector_cls(1, dtype=torch.float64)
    obs_ours, _ = ours.reset(options={"state": state})
    np.testing.assert_allclose(obs_ours[0].numpy(), obs_gym, rtol=0, atol=1e-6)
    rng = np.random.default_rng(seed)
    gaps = {"obs": 0.0, "reward": 0.0}
    for t in range(num_steps):
        action = (rng.uniform(-1, 1, size=1) * action_scale).astype(np.float32)
        obs_gym, r_gym, term_gym, trunc_gym, _ = env.step(action)
        obs_ours, r_ours, term_ours, trunc_ours, _ = ours.step(torch.tensor(action)[None])
        gaps["obs"] = max(gaps["obs"], float(np.abs(obs_ours[0].numpy() - obs_gym).max()))
        gaps["reward"] = max(gaps["reward"], abs(float(r_ours[0]) - float(r_gym)))
        assert bool(term_ours[0]) == term_gym and bool(trunc_ours[0]) == trunc_gym, t
        if term_gym or trunc_gym:
            return t + 1, gaps
    return num_steps, gaps


@pytest.mark.parametrize("seed", [0, 1])
def test_pendulum_follows_gymnasium_for_a_whole_episode(seed):
    steps, gaps = _follow("Pendulum-v1", PendulumVectorEnv, 300, 3.0, seed)
    assert steps == 200  # the time limit, as Gymnasium's registration sets it
    assert gaps["obs"] < 1e-4 and gaps["reward"] < 1e-4  # Gymnasium rounds u to float32


@pytest.mark.parametrize("seed", [0, 3])
def test_mountain_car_follows_gymnasium(seed):
    # full throttle alternating with noise reaches the goal on some seeds; either way the
    # episode's end must agree
    steps, gaps = _follow(
        "MountainCarContinuous-v0", MountainCarContinuousVectorEnv, 1000, 1.5, seed
    )
    assert steps <= 999
    assert gaps["obs"] < 1e-4 and gaps["reward"] < 1e-6  # it computes in float32


def test_mountain_car_reaches_the_goal_with_a_bang_bang_policy():
    envs = MountainCarContinuousVectorEnv(2)
    obs, _ = envs.reset(seed=0)
    total = torch.zeros(2)
    for _ in range(999):
        push = torch.where(obs[:, 1:] >= 0, 1.0, -1.0)  # push along the velocity
        obs, reward, terminated, truncated, _ = envs.step(push)
        total += reward
        if terminated.all():
            break
    assert terminated.all() and (total > 90).all()


def test_family_parameters_change_the_physics():
    envs = PendulumVectorEnv(2, mass=torch.tensor([1.0, 2.0]))
    envs.reset(options={"state": torch.tensor([[0.0, 0.0], [0.0, 0.0]])})
    obs, *_ = envs.step(torch.tensor([[1.0], [1.0]]))
    assert obs[0, 2] == pytest.approx(2 * obs[1, 2])  # the same torque, half the acceleration
    with pytest.raises(ValueError, match="mass must be a number or have shape"):
        PendulumVectorEnv(3, mass=torch.ones(2))
    with pytest.raises(ValueError, match="positive"):
        MountainCarContinuousVectorEnv(2, power=-1.0)


def test_next_step_autoreset_and_errors():
    envs = PendulumVectorEnv(3, max_steps=2)
    envs.reset(seed=0)
    envs.step(torch.zeros(3, 1))
    *_, truncated, _ = envs.step(torch.zeros(3, 1))
    assert truncated.all()
    obs, reward, terminated, truncated, _ = envs.step(torch.zeros(3, 1))
    assert (reward == 0).all() and not truncated.any() and not terminated.any()
    assert (envs.steps == 0).all()
    with pytest.raises(ValueError, match=r"expected \(3, 1\)"):
        envs.step(torch.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        envs.step(torch.full((3, 1), float("nan")))
    with pytest.raises(RuntimeError, match="reset"):
        PendulumVectorEnv(1).step(torch.zeros(1, 1))


def test_seeded_resets_repeat():
    a, _ = PendulumVectorEnv(5).reset(seed=7)
    b, _ = PendulumVectorEnv(5).reset(seed=7)
    assert torch.equal(a, b)
