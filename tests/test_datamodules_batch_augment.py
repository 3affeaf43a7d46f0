"""Augmentation of whole training batches (datamodules.augment_batch): each op does what its torchvision twin does
to one image, with its own parameters for each sample, drawn from torchvision's distributions; only training
batches are augmented, repeatably under a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from datamodules import CIFAR10, Digits
from datamodules.augment import IMAGE_AUGMENTS, build_image_augment
from datamodules.augment_batch import BatchAugment, ColorJitter, Erasing, batch_twin
from datamodules.augment_warp import Crop, Flip, ResizedCrop, Rotation, Warp, unit_grid
from tests.conftest import ROOT
from tests.test_augment import BatchesSeen, _classifier, _fit

BLACK = torch.zeros(1, 3, 1, 1)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def _distinct(x: torch.Tensor) -> int:
    return len(x.flatten(1).unique(dim=0))


def test_every_name_but_the_policy_searches_has_a_batched_version():
    batched = set()
    for name in IMAGE_AUGMENTS:
        augment = build_image_augment([name], (8, 8), 3, "test")
        transform = (augment.before_normalise or augment.after_normalise).transforms[0]
        if batch_twin(transform, (8, 8)) is not None:
            batched.add(name)
    assert set(IMAGE_AUGMENTS) - batched == {"rand_augment", "trivial_augment", "auto_augment"}


@pytest.mark.parametrize(
    "op",
    [
        Rotation([-30.0, 30.0]),
        ResizedCrop((0.5, 1.0), (0.75, 1.33), (8, 8)),
        ColorJitter((0.5, 1.5), (0.5, 1.5), (0.5, 1.5), (-0.2, 0.2)),
        Erasing(1.0, (0.1, 0.3), (0.5, 2.0), [0.0]),
    ],
    ids=lambda op: type(op).__name__,
)
def test_each_sample_draws_its_own_parameters(op):
    x = torch.rand(1, 3, 8, 8).expand(32, -1, -1, -1)  # one image, 32 times
    out = Warp([op], (8, 8))(x, BLACK) if isinstance(op, (Rotation, ResizedCrop)) else op(x)
    assert _distinct(out) >= 16  # (the crops and boxes of whole pixels are a few dozen: some coincide)


# --- each op against torchvision, one sample at a time -----------------------------------------------------
@pytest.mark.parametrize("angle", [90.0, 30.0, -17.0])
def test_rotation_is_torchvisions_rotation(angle):
    x = torch.rand(3, 3, 8, 10)  # not square: the rotation is in pixels, about the centre
    out = Warp([Rotation([angle, angle])], (8, 10))(x, BLACK)
    expected = torch.stack([TF.rotate(image, angle, interpolation=v2.InterpolationMode.BILINEAR) for image in x])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_rotation_fills_with_black_in_the_normalised_units():
    x = torch.full((2, 1, 8, 8), 3.0)
    black = torch.full((1, 1, 1, 1), -1.5)  # what 0 becomes after normalisation
    out = Warp([Rotation([45.0, 45.0])], (8, 8))(x, black)
    assert out[:, :, 0, 0].eq(-1.5).all() and out[:, :, 4, 4].eq(3.0).all()  # corner outside, centre inside


def test_each_sample_gets_its_own_resized_crop_of_torchvisions_boxes():
    x = torch.rand(1, 3, 12, 10).expand(24, -1, -1, -1)
    out = Warp([ResizedCrop([0.3, 0.3], [0.8, 0.8], (12, 10))], (12, 10))(x, BLACK)  # a 7 x 5 box, placed at random
    where = []
    for sample in out:
        errors = {
            (i, j): (sample - TF.resized_crop(x[0], i, j, 7, 5, [12, 10]))[:, 1:-1, 1:-1].abs().max()
            for i in range(6)
            for j in range(6)
        }
        best = min(errors, key=errors.get)
        assert errors[best] < 1e-5  # inside its edge (bilinear reads half a pixel past the box there)
        where.append(best)
    assert len(set(where)) > 8


@pytest.mark.parametrize(
    "scale, ratio, size, retries",
    [
        (
            (0.08, 1.0),
            (3 / 4, 4 / 3),
            (6, 20),
            True,
        ),  # torchvision's defaults on a wide image: misses, and the fallback
        ((0.8, 1.0), (0.9, 1.1), (8, 8), False),  # the digits recipe's: every first try fits
    ],
)
def test_resized_crop_boxes_follow_torchvisions_distribution(scale, ratio, size, retries):
    transform = v2.RandomResizedCrop(size, scale, ratio)
    params = [transform.make_params([torch.zeros(3, *size)]) for _ in range(3000)]
    theirs = np.array([[p["height"], p["width"], p["top"], p["left"]] for p in params])
    crop = ResizedCrop(scale, ratio, size)
    assert crop.boxes.always is not retries
    m = crop.matrix(3000)  # back from the matrices to the boxes
    h, w = m[:, 1, 1] * size[0], m[:, 0, 0] * size[1]
    ours = np.stack([h, w, m[:, 1, 2] - h / 2 + size[0] / 2, m[:, 0, 2] - w / 2 + size[1] / 2], 1).round()
    for k in range(4):  # the same sides and places, about as often
        values = np.union1d(ours[:, k], theirs[:, k])
        shares = [np.array([(side == v).mean() for v in values]) for side in (ours[:, k], theirs[:, k])]
        assert np.abs(shares[0] - shares[1]).max() < 0.04, k


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "symmetric"])
def test_each_sample_gets_its_own_random_crop_with_torchvisions_padding(mode):
    x = torch.rand(32, 3, 6, 7)
    crop = Crop([2, 2, 1, 1], mode)  # left, right, top, bottom
    out = BatchAugment([crop], (6, 7), [0.0] * 3, [1.0] * 3)(x)
    offsets = []
    for sample, image in zip(out, x):
        padded = TF.pad(image, [2, 1, 2, 1], padding_mode=mode)  # left, top, right, bottom
        found = [(i, j) for i in range(3) for j in range(5) if torch.equal(sample, padded[:, i : i + 6, j : j + 7])]
        assert found, "not a crop of the padded image"
        offsets.append(found[0])
    assert len(set(offsets)) > 6


def test_flips_are_per_sample_coins_and_compose_with_rotation():
    x = torch.rand(64, 3, 5, 5)
    out = Warp([Flip(0.5, axis=0)], (5, 5))(x, BLACK)
    kept, flipped = ((out == x).flatten(1).all(1), (out == x.flip(-1)).flatten(1).all(1))
    assert bool((kept | flipped).all()) and 16 < int(flipped.sum()) < 48
    both = Warp([Flip(1.0, axis=1), Rotation([90.0, 90.0])], (5, 5))(x, BLACK)  # flip first, then rotate
    torch.testing.assert_close(
        both, TF.rotate(x.flip(-2), 90.0, interpolation=v2.InterpolationMode.BILINEAR), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("which, factor", [(0, 1.4), (1, 0.6), (2, 1.7), (3, 0.2), (3, -0.45)])
def test_colour_jitter_is_torchvisions_adjustment(which, factor):
    x = torch.rand(4, 3, 6, 6)
    bounds = [None] * 4
    bounds[which] = (factor, factor)
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)[which]
    torch.testing.assert_close(ColorJitter(*bounds)(x), adjust(x, factor), atol=1e-5, rtol=0)


def test_colour_jitter_orders_its_ops_per_sample():
    x = torch.rand(1, 3, 6, 6).expand(40, -1, -1, -1)
    out = ColorJitter((1.5, 1.5), (0.3, 0.3), None, None)(x)
    one = TF.adjust_contrast(TF.adjust_brightness(x[0], 1.5), 0.3)
    other = TF.adjust_brightness(TF.adjust_contrast(x[0], 0.3), 1.5)
    first = torch.tensor([torch.allclose(s, one, atol=1e-6) for s in out])
    second = torch.tensor([torch.allclose(s, other, atol=1e-6) for s in out])
    assert bool((first ^ second).all()) and 8 < int(first.sum()) < 32


def test_random_erasing_boxes_per_sample():
    x = torch.rand(200, 3, 10, 10) + 1.0
    out = Erasing(0.5, (0.1, 0.2), (0.5, 2.0), [0.0, -1.0, 2.0])(x)
    erased = (out != x).any(1)  # (n, H, W)
    assert 70 < int(erased.flatten(1).any(1).sum()) < 130  # p = 0.5
    for box, sample in zip(erased, out):
        if box.any():
            rows, cols = box.any(1).nonzero()[:, 0], box.any(0).nonzero()[:, 0]
            assert box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # a rectangle
            assert 0.1 * 100 - 5 <= int(box.sum()) <= 0.2 * 100 + 5
            assert sample[:, box].T.unique(dim=0).tolist() == [[0.0, -1.0, 2.0]]
    assert len({tuple(b.nonzero()[0].tolist()) for b in erased if b.any()}) > 20  # placed per sample


def test_random_noise_erasing_and_a_bad_value():
    out = Erasing(1.0, (0.3, 0.3), (1.0, 1.0), None)(torch.zeros(4, 3, 10, 10))
    assert 0.5 < out[out != 0].std() < 1.5
    with pytest.raises(ValueError, match="needs one value or one per channel"):
        Erasing(1.0, (0.3, 0.3), (1.0, 1.0), [0.0, 1.0])(torch.zeros(2, 3, 10, 10))


# --- BatchAugment: normalisation, order, seeds --------------------------------------------------------------
def test_colour_ops_see_pixels_and_the_result_is_normalised_again():
    mean, std = [0.2, 0.4, 0.6], [0.5, 0.25, 0.2]
    pixels = torch.rand(6, 3, 8, 8)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    augment = BatchAugment([ColorJitter((1.8, 1.8), None, None, None), Rotation([90.0, 90.0])], (8, 8), mean, std)
    expected = (TF.rotate(TF.adjust_brightness(pixels, 1.8), 90.0, interpolation=v2.InterpolationMode.BILINEAR) - m) / s
    torch.testing.assert_close(augment((pixels - m) / s), expected, atol=1e-5, rtol=0)


def test_batches_keep_their_dtype():
    ops = [
        Rotation([-20.0, 20.0]),
        Crop([1, 1, 1, 1], "constant"),
        ColorJitter((0.5, 1.5), None, None, (-0.1, 0.1)),
        Erasing(1.0, (0.1, 0.2), (0.5, 2.0), [0.0]),
    ]
    augment = BatchAugment(ops, (8, 8), [0.5] * 3, [0.2] * 3)
    assert augment(torch.randn(4, 3, 8, 8, dtype=torch.float64)).dtype == torch.float64


def test_per_batch_augmentation_is_deterministic_under_a_seed():
    dm = Digits(augment=["hflip", "rotation", "random_resized_crop", "color_jitter", "random_erasing"])
    dm.setup()
    x = dm.train_set.tensors[0][:64]
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(dm.batch_augment(x))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert _distinct(runs[0]) == 64  # and every sample its own


def test_what_runs_per_sample_and_what_per_batch():
    def split(specs, **kwargs):
        augment = build_image_augment(specs, (8, 8), 3, "test", per_batch=True, **kwargs)
        per_sample = [type(t).__name__ for part in augment[:2] if part is not None for t in part.transforms]
        return per_sample, [type(op).__name__ for op in augment.per_batch]

    # everything after the last augmentation without a batched version runs per batch, in the per-sample order
    assert split(["hflip", "rand_augment", "rotation", "random_erasing"]) == (
        ["RandomHorizontalFlip", "RandAugment"],
        ["Rotation", "Erasing"],
    )
    assert split(["random_erasing", "auto_augment"]) == (["AutoAugment"], ["Erasing"])  # erasing runs last anyway
    assert split(["random_crop", "hflip"]) == ([], ["Crop", "Flip"])
    assert split(["color_jitter", "hflip"], sample_channels=1) == (["ColorJitter"], ["Flip"])  # colours made grey
    assert build_image_augment(["hflip"], (8, 8), 3, "test").per_batch == ()  # ImageFolder: all per sample


# --- in training only ---------------------------------------------------------------------------------------
def test_training_batches_are_augmented_on_the_device_validation_batches_are_not():
    dm, seen = Digits(batch_size=32, augment=[{"name": "rotation", "degrees": 30}, "hflip"]), BatchesSeen(part=0)
    _fit(_classifier(num_classes=10), dm, seen)
    train, val = dm.train_set.tensors[0], dm.val_set.tensors[0][:64]
    assert len(seen.train) == 2 and all(x.shape == (32, 1, 8, 8) for x in seen.train)
    for x in seen.train:  # not any training image as stored
        assert not (x.flatten(1)[:, None] == train.flatten(1)[None]).all(-1).any()
    assert torch.equal(torch.cat(seen.val[:2]), val) and torch.equal(torch.cat(seen.val[2:]), val)
    assert dm.on_after_batch_transfer([val, torch.zeros(64)], 0)[0] is val  # no trainer: left alone


def test_cifar10_example_config_is_the_standard_recipe():
    config = yaml.safe_load((ROOT / "configs" / "data" / "cifar10_augmented.yaml").read_text())
    dm = CIFAR10(**{**config["init_args"], "download": False})
    assert not dm.image_augment.per_sample  # both run per batch, as one whole-pixel warp
    crop, flip = dm.image_augment.per_batch
    assert (type(crop).__name__, crop.left, crop.right, crop.top, crop.bottom) == ("Crop", 4, 4, 4, 4)
    assert crop.mode == "constant"
    assert (type(flip).__name__, flip.p, flip.axis) == ("Flip", 0.5, 0)
    assert repr(dm.batch_augment) == "BatchAugment(Warp(Crop, Flip))" and dm.batch_augment.steps[0].exact


def test_the_model_summarys_example_input_is_left_alone():
    # Lightning's model summary sends the model's example_input_array (a bare tensor) through the batch hooks.
    dm = Digits(batch_size=32, augment=["rotation"], mixup_alpha=0.2)
    Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=True,
    ).fit(_classifier(num_classes=10), datamodule=dm)
    dm.trainer.training, example = True, torch.zeros(1, 1, 8, 8)
    assert dm.on_after_batch_transfer(example, 0) is example
    assert dm.on_after_batch_transfer([example, torch.zeros(1)], 0)[1].shape == (1, 10)  # a batch is mixed


def test_crops_of_resized_samples_move_by_scaled_whole_pixels():
    dm = CIFAR10(download=False, image_size=64, augment=[{"name": "random_crop", "padding": 4}])  # stored 32 x 32
    black = (-torch.tensor(dm.mean) / torch.tensor(dm.std)).view(3, 1, 1)
    x = torch.rand(16, 3, 64, 64)
    shifts = []
    for sample, image in zip(dm.batch_augment(x), x):
        padded = black.expand(3, 80, 80).clone()  # 4 stored pixels are 8 of these on each side
        padded[:, 8:72, 8:72] = image
        found = [(i, j) for i in range(17) for j in range(17) if torch.equal(sample, padded[:, i : i + 64, j : j + 64])]
        assert len(found) == 1 and found[0][0] % 2 == found[0][1] % 2 == 0
        shifts += found
    assert len(set(shifts)) > 6


def test_the_cpu_sampling_grid_is_affine_grids():
    # On a CPU the grid comes from numpy, elsewhere from affine_grid.
    theta = torch.randn(5, 2, 3)
    ours = torch.from_numpy(unit_grid(6, 9) @ theta.numpy().transpose(0, 2, 1)).view(5, 6, 9, 2)
    torch.testing.assert_close(ours, torch.nn.functional.affine_grid(theta, [5, 1, 6, 9], align_corners=False))
