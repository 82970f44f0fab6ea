"""Few-shot character classification as trainable and evaluable experiments: Prototypical
Networks, Matching Networks, MAML, first-order MAML and ANIL on a Conv4, on the procedural
characters (offline) or on Omniglot.

Used by ``mlcourse train/eval *-chars`` and lesson 04. Defaults follow the papers where the
course's CPU budget allows: a 64-channel Conv4, Adam with step 0.001; MAML with one inner step
of 0.4 in training and three at test time, meta-batches of 32 tasks (Finn et al., 2017);
Prototypical Networks trained on episodes with more classes than at test time (Snell et al.,
2017); Matching Networks divide the cosine similarities by a temperature of 0.1, since the
paper's plain cosine caps how sharp the attention can get (see
:func:`mlcourse.algorithms.fewshot.matching_logits`). Every figure is measured on held-out classes,
from episodes of a fixed seed.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mlcourse.algorithms import fewshot
from mlcourse.algorithms.maml import params_of
from mlcourse.experiments.learner import Learner, Weights, loaded
from mlcourse.models import NORMS, Conv4
from mlcourse.options import check_config, nonnegative_int, option, positive_int
from mlcourse.runtime import make_adam, restore_generator
from mlcourse.tasks import ProceduralCharacters, load_omniglot

ALGORITHMS = ("protonet", "matchingnet", "maml", "fomaml", "anil")
METRIC = ("protonet", "matchingnet")
DATASETS = ("procedural", "omniglot")
EVAL_SEED = 20_160_616  # held-out episodes: a generator no training run uses
EVAL_CHUNK = 100  # episodes evaluated at once (bounds memory)


@dataclass
class CharsConfig:
    """Hyperparameters of a few-shot character experiment (each is a ``mlcourse train``
    option)."""

    algorithm: str = option("protonet", f"one of {', '.join(ALGORITHMS)}", choices=ALGORITHMS)
    dataset: str = option(
        "procedural", "procedural (offline) or omniglot (needs --data-dir)", choices=DATASETS
    )
    data_dir: str = option("", "Omniglot folder holding images_background.zip, ...")
    download: bool = option(False, "download Omniglot into --data-dir if it is missing")
    seed: int = option(0, "seed of the initialisation and of the training episodes")
    steps: int = option(20_000, "training iterations (episode batches)", min=1)
    meta_batch_size: int = option(1, "episodes per iteration", min=1)
    n_way: int = option(5, "classes per episode (MAML: fixes the head's size)", min=2)
    k_shot: int = option(1, "support images per class", min=1)
    k_query: int = option(15, "query images per class in training", min=1)
    meta_lr: float = option(1e-3, "Adam step size", above=0)
    inner_lr: float = option(0.4, "MAML/ANIL: inner-loop SGD step size", min=0)
    num_inner_steps: int = option(1, "MAML/ANIL: inner steps in training", min=1)
    eval_inner_steps: int = option(3, "MAML/ANIL: inner steps at test time", min=0)
    hidden_channels: int = option(64, "Conv4 feature maps per block", min=1)
    norm: str = option("group", "Conv4 normalisation: group, batch or none", choices=NORMS)
    fce: bool = option(False, "Matching Networks: full context embeddings")
    temperature: float = option(
        0.1, "Matching Networks: divides the cosine similarities (the paper's is 1)", above=0
    )
    per_task_loop: bool = option(
        False, "MAML/ANIL: adapt task by task instead of with vmap (faster for Conv4 on a CPU)"
    )
    checkpoint_every: float = option(30.0, "seconds between checkpoints", min=0)
    log_every: int = option(100, "steps between log lines", min=1)

    def __post_init__(self):
        check_config(self)
        if self.dataset == "omniglot" and not self.data_dir:
            raise ValueError(
                "--dataset omniglot needs --data-dir DIR, the folder holding "
                "images_background.zip and images_evaluation.zip (add --download to fetch them)"
            )


EXPERIMENTS: dict[str, dict] = {
    "protonet-chars": {"algorithm": "protonet", "n_way": 20, "k_query": 5},
    "matchingnet-chars": {"algorithm": "matchingnet", "n_way": 20, "k_query": 5},
    "maml-chars": {"algorithm": "maml", "meta_batch_size": 32, "k_query": 15, "steps": 60_000},
    "fomaml-chars": {"algorithm": "fomaml", "meta_batch_size": 32, "steps": 60_000},
    "anil-chars": {"algorithm": "anil", "meta_batch_size": 32, "steps": 60_000},
}

DESCRIPTIONS = {
    "protonet-chars": "Prototypical Networks (Conv4) on few-shot characters",
    "matchingnet-chars": "Matching Networks (Conv4, cosine attention) on few-shot characters",
    "maml-chars": "MAML (second order, Conv4) on few-shot characters",
    "fomaml-chars": "first-order MAML (Conv4) on few-shot characters",
    "anil-chars": "ANIL (MAML adapting the head only, Conv4) on few-shot characters",
}


def make_dataset(config: CharsConfig):
    """The task family of a run: anything with ``sample(num_tasks, n_way, k_shot, k_query,
    split, generator, device)``."""
    if config.dataset == "omniglot":
        return load_omniglot(config.data_dir, download=config.download)
    return ProceduralCharacters()


class CharsLearner(Learner):
    """Holds the model, optimizer, data and episode generator of one run.

    Args:
        config: the run's :class:`CharsConfig`.
        device: where the model and the sampled episodes live.
    """

    CONFIG = CharsConfig
    FITS = "the same algorithm, --n-way (MAML, ANIL), --hidden-channels and --norm"

    def __init__(self, config: CharsConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.data = make_dataset(config)
        metric = config.algorithm in METRIC
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = Conv4(
                out_features=None if metric else config.n_way,
                hidden_channels=config.hidden_channels,
                norm=config.norm,
            ).to(self.device)
            self.fce = (
                fewshot.FullContextEmbedding(self.model.embedding_dim).to(self.device)
                if config.algorithm == "matchingnet" and config.fce
                else None
            )
        self.params = params_of(self.model)
        self.optimizer = make_adam(self.parameters(), lr=config.meta_lr)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.last_accuracy = float("nan")
        self._accuracies: list[float] = []

    def sample(self, split: str = "train"):
        c = self.config
        return self.data.sample(
            c.meta_batch_size,
            c.n_way,
            c.k_shot,
            c.k_query,
            split=split,
            generator=self.generator,
            device=self.device,
        )

    def step(self, step: int) -> Tensor:
        """One training iteration on a fresh batch of episodes; returns its loss."""
        c, tasks = self.config, self.sample()
        self.optimizer.zero_grad(set_to_none=True)
        if c.algorithm == "protonet":
            loss, acc = fewshot.protonet_loss(self.model, tasks, n_way=c.n_way)
        elif c.algorithm == "matchingnet":
            loss, acc = fewshot.matching_loss(
                self.model, tasks, n_way=c.n_way, temperature=c.temperature, fce=self.fce
            )
        else:
            maml_loss = (
                fewshot.maml_classification_loss_loop
                if c.per_task_loop
                else fewshot.maml_classification_loss
            )
            loss, acc = maml_loss(
                self.model,
                self.params,
                tasks,
                inner_lr=c.inner_lr,
                num_inner_steps=c.num_inner_steps,
                first_order=c.algorithm == "fomaml",
                anil=c.algorithm == "anil",
            )
        loss.backward()
        self.optimizer.step()
        self.last_accuracy = acc.item()
        self._accuracies.append(self.last_accuracy)
        return loss.detach()

    def metrics(self) -> dict[str, float]:
        """``accuracy``: the mean query accuracy (%) of the training batches since the last
        call."""
        out = {}
        if self._accuracies:
            out["accuracy"] = round(100 * sum(self._accuracies) / len(self._accuracies), 3)
        self._accuracies = []
        return out

    def parameters(self) -> list[Tensor]:
        extra = list(self.fce.parameters()) if self.fce is not None else []
        return list(self.model.parameters()) + extra

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "fce": None if self.fce is None else self.fce.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.fce is not None:
            self.fce.load_state_dict(state["fce"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_generator(self.generator, state["generator"])

    def weights(self) -> Weights:
        out = {"model": self.model.state_dict()}
        if self.fce is not None:
            out["fce"] = self.fce.state_dict()
        return out

    @classmethod
    def network(cls, config: CharsConfig, weights: Weights, device=None) -> nn.Module:
        metric = config.algorithm in METRIC
        model = Conv4(
            out_features=None if metric else config.n_way,
            hidden_channels=config.hidden_channels,
            norm=config.norm,
        )
        return loaded(model, weights["model"], device)

    @staticmethod
    def add_eval_args(parser: argparse.ArgumentParser, defaults: Mapping) -> None:
        parser.add_argument("--n-way", type=positive_int, default=5, help="classes per episode (N)")
        parser.add_argument(
            "--k-shot", type=positive_int, default=1, help="support images per class (K)"
        )
        parser.add_argument("--episodes", type=positive_int, default=1000, help="held-out episodes")
        parser.add_argument(
            "--k-query", type=positive_int, default=15, help="query images per class"
        )
        parser.add_argument(
            "--split",
            default="test",
            choices=("test", "val", "train"),
            help="classes to draw from: test (held out), val or train",
        )
        parser.add_argument(
            "--inner-steps",
            type=nonnegative_int,
            default=None,
            help="MAML/ANIL: test-time adaptation steps (default: the run's eval_inner_steps)",
        )
        parser.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of the episodes")

    def evaluate(self, options: argparse.Namespace) -> dict:
        figures = evaluate(
            self,
            n_way=options.n_way,
            k_shot=options.k_shot,
            episodes=options.episodes,
            k_query=options.k_query,
            split=options.split,
            seed=options.seed,
            inner_steps=options.inner_steps,
        )
        return {
            "dataset": self.config.dataset,
            "n_way": options.n_way,
            "k_shot": options.k_shot,
            "episodes": options.episodes,
            "split": options.split,
            **figures,
        }

    def episode_accuracies(self, tasks, *, inner_steps: int | None = None) -> Tensor:
        """``(T,)`` query accuracies of the trained learner on a batch of episodes."""
        c = self.config
        n_way = tasks.info["class_ids"].shape[1] if "class_ids" in tasks.info else None
        if c.algorithm == "protonet":
            return fewshot.evaluate_protonet(self.model, tasks, n_way=n_way)
        if c.algorithm == "matchingnet":
            return fewshot.evaluate_matching(
                self.model, tasks, n_way=n_way, temperature=c.temperature, fce=self.fce
            )
        if n_way is not None and n_way != c.n_way:
            raise ValueError(
                f"this {c.algorithm} run was trained with a {c.n_way}-way head: evaluate it "
                f"with --n-way {c.n_way}, or train another run with --n-way {n_way}"
            )
        return fewshot.evaluate_maml(
            self.model,
            {n: p.detach() for n, p in self.params.items()},
            tasks,
            inner_lr=c.inner_lr,
            num_inner_steps=c.eval_inner_steps if inner_steps is None else inner_steps,
            anil=c.algorithm == "anil",
        )


def evaluate(
    learner: CharsLearner,
    *,
    n_way: int,
    k_shot: int,
    episodes: int = 1000,
    k_query: int = 15,
    split: str = "test",
    seed: int = EVAL_SEED,
    inner_steps: int | None = None,
) -> dict:
    """Accuracy on ``episodes`` held-out N-way K-shot episodes, with its 95% interval.

    Args:
        learner: a trained :class:`CharsLearner`.
        n_way: classes per episode.
        k_shot: support images per class.
        episodes: how many episodes (drawn from a generator seeded with ``seed``).
        k_query: query images per class.
        split: the classes to draw from (``"test"``: never seen in training).
        seed: seed of the episodes (the default is used by every reported figure).
        inner_steps: MAML/ANIL test-time steps (default: the run's ``eval_inner_steps``).

    Returns:
        ``{"accuracy": mean %, "ci95": 95% half-width %, ...}``.
    """
    generator = torch.Generator().manual_seed(seed)
    accuracies = []
    for lo in range(0, episodes, EVAL_CHUNK):
        tasks = learner.data.sample(
            min(EVAL_CHUNK, episodes - lo),
            n_way,
            k_shot,
            k_query,
            split=split,
            generator=generator,
            device=learner.device,
        )
        accuracies.append(learner.episode_accuracies(tasks, inner_steps=inner_steps))
    accuracy, ci95 = fewshot.accuracy_ci95(torch.cat(accuracies))
    return {"accuracy": accuracy, "ci95": ci95}
