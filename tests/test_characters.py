import pytest
import torch

from mlcourse.tasks import ProceduralCharacters, TaskBatch, nearest_neighbour_accuracy
from mlcourse.tasks.characters import _arc_length_weights, _bezier, _blur, _splat

SMALL = dict(num_alphabets=10, characters_per_alphabet=8)


@pytest.fixture(scope="module")
def chars():
    return ProceduralCharacters()


def test_splits_are_disjoint_alphabets_covering_every_class(chars):
    splits = {s: chars.classes(s) for s in ("train", "val", "test")}
    everything = torch.cat(list(splits.values()))
    assert torch.equal(everything.sort().values, torch.arange(chars.num_classes))
    alphabets = {s: set(chars.alphabet_of(c).tolist()) for s, c in splits.items()}
    assert not alphabets["train"] & alphabets["val"]
    assert not alphabets["train"] & alphabets["test"]
    assert not alphabets["val"] & alphabets["test"]
    assert chars.num_classes >= 1600


def test_designs_come_from_the_seed():
    a, b = ProceduralCharacters(**SMALL), ProceduralCharacters(**SMALL)
    assert torch.equal(a.control_points(), b.control_points())
    other = ProceduralCharacters(**SMALL, seed=1).control_points()
    assert not torch.allclose(a.control_points(), other)
    mask = a.stroke_mask()
    assert mask[:, 0].all() and (mask.sum(1) >= 1).all() and (mask.sum(1) <= a.max_strokes).all()
    # the used strokes are fitted into the box inside the margin
    used = a.control_points()[mask]
    points = _bezier(used, torch.linspace(0, 1, 50))
    assert points.min() >= a.margin - 0.01 and points.max() <= 1 - a.margin + 0.01


def test_render_shape_range_and_determinism(chars):
    ids = torch.tensor([0, 0, 5, 1599])
    first = chars.render(ids, generator=torch.Generator().manual_seed(7))
    again = chars.render(ids, generator=torch.Generator().manual_seed(7), device="cpu")
    other = chars.render(ids, generator=torch.Generator().manual_seed(8))
    assert first.shape == (4, 1, 28, 28) and first.dtype == torch.float32
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first[0], first[1])  # two fresh drawings of one class
    assert first.min() >= 0 and first.max() <= 1
    assert (first.flatten(1).amax(1) > 0.5).all()  # every drawing has ink
    assert chars.render(ids[:2], dtype=torch.float64).dtype == torch.float64


def test_a_noise_free_stroke_has_the_requested_width():
    """Ink is solid on the centre line, 0 far from it, 1/2 at half the pen width."""
    width = 0.1
    clean = ProceduralCharacters(
        **SMALL, control_jitter=0.0, rotation_degrees=0.0, scale_range=(1.0, 1.0), shear=0.0,
        translation=0.0, stroke_width_range=(width, width),
    )  # fmt: skip
    size = clean.image_size
    image = clean.render(torch.arange(20))[:, 0]
    # distance (pixels) from every pixel centre to the character's strokes
    points = _bezier(clean.control_points()[:20], torch.linspace(0, 1, 400)) * size
    points = torch.where(clean.stroke_mask()[:20, :, None, None], points, 1e4).flatten(1, 2)
    centres = torch.stack(torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5,
                                         indexing="xy"), -1).view(-1, 2)  # fmt: skip
    distance = torch.cdist(centres.expand(20, -1, -1), points).amin(-1).view(20, size, size)
    ends = points.view(20, clean.max_strokes, -1, 2)[:, :, [0, -1]].flatten(1, 2)
    to_ends = torch.cdist(centres.expand(20, -1, -1), ends).amin(-1).view(20, size, size)
    assert not distance.isnan().any() and not to_ends.isnan().any()
    half = width * size / 2
    assert image[(distance < 0.3) & (to_ends > 1.5)].min() > 0.95  # the ink thins at the ends
    assert image[distance > half + 1.2].max() < 0.1
    near_edge = (distance - half).abs() < 0.15
    assert abs(image[near_edge].mean().item() - 0.5) < 0.15


def test_sample_builds_class_major_episodes(chars):
    g = torch.Generator().manual_seed(0)
    batch = chars.sample(16, 5, 2, 3, split="val", generator=g)
    assert isinstance(batch, TaskBatch)
    assert batch.x_support.shape == (16, 10, 1, 28, 28)
    assert batch.x_query.shape == (16, 15, 1, 28, 28)
    assert batch.y_support.dtype == torch.int64
    assert batch.y_support[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert batch.y_query[3].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    ids = batch.info["class_ids"]
    assert ids.shape == (16, 5)
    assert torch.isin(ids, chars.classes("val")).all()
    assert all(len(set(row)) == 5 for row in ids.tolist())
    # the labels are a random order of the classes, not sorted class ids
    assert not (ids.diff(dim=1) > 0).all()
    again = chars.sample(16, 5, 2, 3, split="val", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(batch.x_query, again.x_query, rtol=0, atol=0)


def test_pixel_nearest_neighbour_is_calibrated(chars):
    """5-way 1-shot nearest neighbour on raw pixels, held-out alphabets: about 45%.

    45.6% ± 0.2% over 10 000 episodes: see the calibration note of ``mlcourse.tasks.characters``.
    """
    g = torch.Generator().manual_seed(2024)
    accuracy, ci95 = nearest_neighbour_accuracy(chars.sample(400, 5, 1, 15, "test", g))
    assert 30 < accuracy - ci95 and accuracy + ci95 < 65
    assert ci95 < 3


def test_nearest_neighbour_accuracy_is_chance_on_unrelated_images():
    g = torch.Generator().manual_seed(0)
    x_support, x_query = torch.rand(300, 5, 8, generator=g), torch.rand(300, 25, 8, generator=g)
    labels = torch.arange(5)
    batch = TaskBatch(
        x_support, labels.expand(300, 5), x_query, labels.repeat_interleave(5).expand(300, 25)
    )
    accuracy, ci95 = nearest_neighbour_accuracy(batch)
    assert abs(accuracy - 20) < 2 * ci95 + 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_tasks=2, n_way=6, k_shot=1, k_query=1, split="val"), "n_way=6 is larger"),
        (dict(num_tasks=2, n_way=2, k_shot=0, k_query=1), "k_shot must be at least 1"),
        (dict(num_tasks=2, n_way=2, k_shot=1, k_query=-1), "k_query must be non-negative"),
        (dict(num_tasks=2, n_way=2, k_shot=1, k_query=1, split="eval"), "split must be one of"),
    ],
)
def test_sample_says_what_is_wrong(kwargs, message):
    chars = ProceduralCharacters(num_alphabets=10, characters_per_alphabet=5)
    with pytest.raises(ValueError, match=message):
        chars.sample(**kwargs)


def test_bad_arguments_are_rejected_with_a_reason(chars):
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 1600\)"):
        chars.render(torch.tensor([1600]))
    with pytest.raises(ValueError, match="floating"):
        chars.render(torch.tensor([0]), dtype=torch.int64)
    with pytest.raises(ValueError, match="leave a split without alphabets"):
        ProceduralCharacters(num_alphabets=2).classes("train")
    with pytest.raises(ValueError, match="margin"):
        ProceduralCharacters(margin=0.5)


def test_arc_length_weights_add_up_to_the_curve_length():
    straight = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    arch = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    t = torch.linspace(0, 1, 2000, dtype=torch.float64)
    weights = _arc_length_weights(torch.stack([straight, arch]).double(), t)
    points = _bezier(arch.double(), t)
    polyline = (points[1:] - points[:-1]).norm(dim=-1).sum()
    expected = torch.stack([torch.tensor(3.0, dtype=torch.float64), polyline])
    torch.testing.assert_close(weights.sum(-1), expected, rtol=1e-6, atol=0)


def test_ink_off_the_image_is_dropped_not_wrapped_around():
    """A vertical line just past the right edge inks the last column, never the first."""
    size, border, sigma = 10, 5, 0.7
    y = torch.linspace(0, size, 200)
    for x, last_column_inked in ((size + 0.4, True), (size + 40.0, False), (-30.0, False)):
        points = torch.stack([torch.full_like(y, x), y], dim=-1)[None]
        weights = torch.full((1, 200), size / 199)
        canvas = _splat(points, weights, torch.tensor([0]), 1, size, border)
        image = _blur(canvas, sigma, border)[0, 0]
        assert image[:, 0].abs().max() == 0
        assert bool(image[:, -1].max() > 0.1) == last_column_inked
