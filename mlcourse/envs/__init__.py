"""Meta-RL task families as Gymnasium environments, each with a batched tensor version.

Importing this package registers the single environments with Gymnasium:

- ``mlcourse/BernoulliBandit-v0`` (:class:`BernoulliBanditEnv`, options ``num_arms``,
  ``num_pulls``),
- ``mlcourse/TabularMDP-v0`` (:class:`TabularMDPEnv`, options ``num_states``, ``num_actions``,
  ``episode_length``, ``num_episodes``),
- ``mlcourse/Navigation2D-v0`` (:class:`Navigation2DEnv`, option ``max_steps``).

Gymnasium's continuous classic-control tasks have batched versions with their physics as
per-environment parameters (task families): :class:`PendulumVectorEnv`,
:class:`MountainCarContinuousVectorEnv`.

Example:
    >>> import gymnasium as gym
    >>> import mlcourse.envs
    >>> env = gym.make("mlcourse/BernoulliBandit-v0", num_arms=5, num_pulls=10)
    >>> env.action_space
    Discrete(5)
"""

import gymnasium as gym

from mlcourse.envs.bandit import (
    BernoulliBanditEnv,
    BernoulliBanditVectorEnv,
    bernoulli_rewards,
    draw_bandits,
)
from mlcourse.envs.classic import MountainCarContinuousVectorEnv, PendulumVectorEnv
from mlcourse.envs.navigation import Navigation2DEnv, Navigation2DVectorEnv
from mlcourse.envs.tabular_mdp import TabularMDPEnv, TabularMDPVectorEnv

ENV_IDS = {
    "mlcourse/BernoulliBandit-v0": "mlcourse.envs.bandit:BernoulliBanditEnv",
    "mlcourse/TabularMDP-v0": "mlcourse.envs.tabular_mdp:TabularMDPEnv",
    "mlcourse/Navigation2D-v0": "mlcourse.envs.navigation:Navigation2DEnv",
}

for _id, _entry_point in ENV_IDS.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry_point, disable_env_checker=False)

__all__ = [
    "ENV_IDS",
    "BernoulliBanditEnv",
    "BernoulliBanditVectorEnv",
    "MountainCarContinuousVectorEnv",
    "Navigation2DEnv",
    "Navigation2DVectorEnv",
    "TabularMDPEnv",
    "PendulumVectorEnv",
    "TabularMDPVectorEnv",
    "bernoulli_rewards",
    "draw_bandits",
]
