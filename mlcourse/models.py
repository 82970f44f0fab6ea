"""Models used across the lessons: MLP (lesson 01), Conv4 (lesson 04)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn


class MLP(nn.Sequential):
    """A fully connected network; the default is the MAML paper's 1-40-40-1 ReLU regressor.

    The layers are numbered as in ``nn.Sequential``: ``0`` the first linear layer, ``1`` its
    activation, ``2`` the next linear layer, and so on.

    Args:
        in_features: input size.
        out_features: output size.
        hidden_sizes: width of each hidden layer.
        activation: the activation module after each hidden layer.

    Example:
        >>> import torch
        >>> MLP()(torch.zeros(7, 1)).shape
        torch.Size([7, 1])
    """

    def __init__(
        self,
        in_features: int = 1,
        out_features: int = 1,
        hidden_sizes: Sequence[int] = (40, 40),
        activation: type[nn.Module] = nn.ReLU,
    ):
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), activation()]
            width = hidden
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)


NORMS = ("group", "batch", "none")


class Conv4(nn.Module):
    """The four-block convolutional network of the few-shot papers (Vinyals et al. 2016).

    Each block is ``conv 3×3 (padding 1) → norm → ReLU → max-pool 2×2``; ``hidden_channels``
    feature maps throughout. On 28×28 inputs (Omniglot) the maps shrink 28 → 14 → 7 → 3 → 1,
    so the flattened embedding has ``hidden_channels`` (64) entries; on 84×84 (miniImageNet)
    they shrink to 5×5, giving ``25 * hidden_channels``.

    With ``out_features=None`` the network is an embedding (Prototypical and Matching
    Networks); with ``out_features=n_way`` a linear layer ``head`` turns the embedding into
    class logits (MAML). The parameters are named ``features.*`` (the body) and ``head.*``
    (the classifier), so ANIL can adapt the head alone: see :func:`head_params`.

    The normalisation must hold no running statistics, so that every task can be adapted
    functionally and all tasks vectorized with ``torch.func.vmap``:

    - ``"group"`` (default): ``nn.GroupNorm(num_groups, C)``. Each image is normalised on its
      own, so an image's embedding never depends on the other images in the batch: tasks can
      be flattened into one batch, and training and evaluation compute the same function.
      With ``num_groups=1`` it normalises over channels and positions together, which stays
      meaningful on the final 1×1 maps (more groups would normalise over fewer values).
    - ``"batch"``: ``nn.BatchNorm2d(C, track_running_stats=False)``, normalising with the
      statistics of the batch it is given, as the MAML and ProtoNets papers' networks do in
      training. It is *transductive*: a query image's prediction depends on the other query
      images in its batch, so batches must hold one task each (vmap over tasks) and the
      statistics are those of that task. Choose it to follow the papers to the letter.
    - ``"none"``: no normalisation.

    All three give ``mlcourse.algorithms.maml.meta_loss`` the exact second-order meta-gradient: in
    float64 it equals the per-task loop ``meta_loss_loop`` to ~1e-15 (``tests/test_conv4.py``).
    Beware that *raw* ``vmap(grad(...))`` is not exact with ``"batch"``: in torch 2.13 the
    second-order gradient of ``F.batch_norm`` with an adapted affine weight comes out wrong
    under ``vmap`` (as with ``nn.LayerNorm``); ``meta_loss`` avoids that path, and GroupNorm is
    exact on both paths, hence the default.

    Args:
        out_features: number of classes of the linear head; ``None`` for no head (embedding).
        in_channels: channels of the input images (1 for Omniglot, 3 for colour images).
        hidden_channels: feature maps of every block.
        image_size: side of the (square) inputs; fixes the head's input size.
        norm: ``"group"``, ``"batch"`` or ``"none"`` (see above).
        num_groups: groups of ``nn.GroupNorm`` with ``norm="group"``; must divide
            ``hidden_channels``.

    Example:
        >>> import torch
        >>> Conv4(out_features=5)(torch.zeros(10, 1, 28, 28)).shape
        torch.Size([10, 5])
    """

    def __init__(
        self,
        out_features: int | None = None,
        *,
        in_channels: int = 1,
        hidden_channels: int = 64,
        image_size: int = 28,
        norm: str = "group",
        num_groups: int = 1,
    ):
        super().__init__()
        if out_features is not None and out_features < 1:
            raise ValueError(f"out_features must be positive or None (no head), got {out_features}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if norm == "group" and hidden_channels % num_groups:
            raise ValueError(
                f"num_groups={num_groups} must divide hidden_channels={hidden_channels}"
            )
        side = _side_after_blocks(image_size)
        if side < 1:
            raise ValueError(
                f"image_size={image_size} is too small: four 2×2 poolings need at least 16 pixels"
            )
        self.in_channels, self.image_size = in_channels, image_size
        self.embedding_dim = hidden_channels * side * side
        blocks = []
        width = in_channels
        for _ in range(4):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(width, hidden_channels, kernel_size=3, padding=1),
                    _norm_layer(norm, hidden_channels, num_groups),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                )
            )
            width = hidden_channels
        self.features = nn.Sequential(*blocks, nn.Flatten())
        self.head = (
            nn.Linear(self.embedding_dim, out_features) if out_features is not None else None
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, in_channels, H, W)`` images → ``(batch, out_features)`` logits, or
        ``(batch, embedding_dim)`` embeddings when the network has no head."""
        self._check_input(x)
        z = self.features(x)
        return self.head(z) if self.head is not None else z

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            hint = (
                "for a batch of tasks (num_tasks, k, C, H, W), flatten the tasks with "
                "x.flatten(0, 1) or map over them with torch.func.vmap"
                if x.dim() == 5
                else "for a single image add the batch dimension with x.unsqueeze(0)"
                if x.dim() == 3
                else "give images as (batch, channels, height, width)"
            )
            raise ValueError(
                f"Conv4 takes (batch, channels, height, width) images, got shape "
                f"{tuple(x.shape)}: {hint}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"Conv4 was built for {self.in_channels}-channel images but got "
                f"{x.shape[1]} channels (shape {tuple(x.shape)}): build it with "
                f"Conv4(in_channels={x.shape[1]}), or convert the images"
            )
        if self.head is not None and tuple(x.shape[2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"Conv4's head was built for {self.image_size}×{self.image_size} images but got "
                f"{x.shape[2]}×{x.shape[3]}: build it with Conv4(..., image_size={x.shape[2]})"
            )


def head_params(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The entries of ``params`` that belong to the classifier head (names ``head.*``).

    ANIL (Raghu et al. 2020) adapts only these in the inner loop; the body (``features.*``)
    is shared by all tasks and learned in the outer loop only.

    Args:
        params: ``{name: tensor}``, e.g.
            ``mlcourse.algorithms.maml.params_of(Conv4(out_features=5))``.

    Returns:
        ``{name: tensor}`` holding the ``head.*`` entries only (the same tensors).

    Example:
        >>> sorted(head_params(dict(Conv4(out_features=5).named_parameters())))
        ['head.bias', 'head.weight']
    """
    head = {n: p for n, p in params.items() if n.startswith("head.")}
    if not head:
        raise ValueError(
            f"params has no 'head.*' entries (it has {sorted(params)[:4]}...): build the model "
            "with a head, e.g. Conv4(out_features=n_way)"
        )
    return head


def _side_after_blocks(size: int, blocks: int = 4) -> int:
    for _ in range(blocks):
        size //= 2
    return size


def _norm_layer(norm: str, channels: int, num_groups: int) -> nn.Module:
    if norm == "group":
        return nn.GroupNorm(num_groups, channels)
    if norm == "batch":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    return nn.Identity()
