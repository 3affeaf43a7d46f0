"""Augmentation by name: training samples change, validation / test / predict samples never do; MixUp and
CutMix give class probabilities the Classifier's loss and metrics handle; bad names and tasks are named."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch import Callback, Trainer
from PIL import Image
from torch.utils.data import TensorDataset

from cli import main
from datamodules import MNIST, Digits, ImageFolder, TimeSeries, ZooDataModule
from datamodules.augment import IMAGE_AUGMENTS, SERIES_AUGMENTS, BatchMix
from datamodules.sequences import pad_collate
from tests.conftest import TINY
from tests.test_datamodules_images import write_mnist
from tests.test_datamodules_sequences import synthetic, write_ts
from zoo.errors import ConfigError
from zoo.tasks import Classifier, Regressor

# Arguments that make each augmentation act on every sample (flips and erasing are otherwise coin tosses).
IMAGE_CASES = {
    "hflip": {"p": 1.0},
    "vflip": {"p": 1.0},
    "rotation": {"degrees": [20, 30]},
    "random_resized_crop": {"scale": [0.3, 0.6]},
    "random_crop": {"padding": 2},
    "color_jitter": {},
    "rand_augment": {},
    "trivial_augment": {},
    "auto_augment": {},
    "random_erasing": {"p": 1.0},
}
SERIES_CASES = {"jitter": {}, "scaling": {}, "shift": {"max_shift": 0.5}, "time_warp": {}}


def test_every_augmentation_is_tested():
    assert set(IMAGE_CASES) == set(IMAGE_AUGMENTS) and set(SERIES_CASES) == set(SERIES_AUGMENTS)


def _inputs(dataset, n: int = 16) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(n)])


def _trained_on(dm: ZooDataModule, n: int = 16) -> torch.Tensor:
    """The first ``n`` training inputs as training sees them: read (augmented per sample where they are), then
    augmented per batch where the datamodule does (on_after_batch_transfer, in training)."""
    x = _inputs(dm.train_set, n)
    return dm.batch_augment(x) if dm.batch_augment is not None else x


def _batches(loader) -> list[torch.Tensor]:
    return [x for x, _ in loader]


@pytest.fixture(scope="module")
def plain_digits() -> Digits:
    dm = Digits(batch_size=128)
    dm.setup()
    return dm


# --- images ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(IMAGE_CASES))
def test_image_augmentation_changes_training_images_only(name, plain_digits):
    dm = Digits(batch_size=128, augment=[{"name": name, **IMAGE_CASES[name]}])
    dm.setup()
    torch.manual_seed(0)
    augmented, plain = _trained_on(dm), _inputs(plain_digits.train_set)
    assert augmented.shape == plain.shape == (16, 1, 8, 8)
    changed = ~torch.isclose(augmented, plain, atol=1e-5).flatten(1).all(1)
    assert changed.sum() >= 4, f"{name} changed only {int(changed.sum())} of 16 training images"
    assert [dm.train_set[i][1] for i in range(16)] == [plain_digits.train_set[i][1] for i in range(16)]
    for loader in ("val_dataloader", "test_dataloader", "predict_dataloader"):
        for a, b in zip(_batches(getattr(dm, loader)()), _batches(getattr(plain_digits, loader)()), strict=True):
            assert torch.equal(a, b), loader


def test_image_augmentation_sees_raw_pixels_and_keeps_the_normalisation(plain_digits):
    # Brightness x2 on pixels in [0, 1] saturates at 1 (= 16 in the data's units) before standardisation.
    dm = Digits(augment=[{"name": "color_jitter", "brightness": [2.0, 2.0], "contrast": 0}, {"name": "hflip", "p": 1}])
    dm.setup()
    mean, std = dm.stats["mean"], dm.stats["std"]
    raw = plain_digits.train_set.tensors[0][:8] * std + mean  # 0-16
    expected = ((2 * raw).clamp(max=16) - mean) / std
    torch.testing.assert_close(_trained_on(dm, 8), expected.flip(-1), atol=1e-5, rtol=0)
    # and a no-op augmentation reads exactly the plain training images
    noop = Digits(augment=[{"name": "hflip", "p": 0.0}])
    noop.setup()
    torch.testing.assert_close(_trained_on(noop), _inputs(plain_digits.train_set), atol=1e-5, rtol=0)


def test_random_erasing_fills_with_the_normalised_mean(plain_digits):
    dm = Digits(augment=[{"name": "random_erasing", "p": 1.0, "scale": [0.2, 0.4]}])
    dm.setup()
    torch.manual_seed(0)
    augmented, plain = _trained_on(dm), _inputs(plain_digits.train_set)
    erased = ~torch.isclose(augmented, plain, atol=1e-6)
    assert erased.any() and torch.all(augmented[erased] == 0.0)  # 0 after normalisation is the mean pixel


def test_image_augmentation_is_deterministic_under_a_seed():
    dm = Digits(augment=["rand_augment", "random_resized_crop", "random_erasing"])  # per sample, then per batch
    dm.setup()
    assert dm.image_augment.per_sample and dm.batch_augment is not None
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(_trained_on(dm))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_mnist_augmentation_at_a_backbone_input_size(tmp_path):
    write_mnist(tmp_path, "MNIST")
    kwargs = {"data_dir": str(tmp_path), "download": False, "val_split": 0.2, "channels": 3, "image_size": 16}
    plain, flipped = MNIST(**kwargs), MNIST(**kwargs, augment=[{"name": "hflip", "p": 1.0}])
    per_sample = MNIST(**kwargs, augment=[{"name": "hflip", "p": 1.0}, "auto_augment"])  # on the stored pixels
    plain.setup(), flipped.setup(), per_sample.setup()
    assert _trained_on(flipped, 4).shape == _trained_on(per_sample, 4).shape == (4, 3, 16, 16)
    torch.testing.assert_close(_trained_on(flipped, 4), _inputs(plain.train_set, 4).flip(-1))
    assert torch.equal(_inputs(flipped.val_set, 6), _inputs(plain.val_set, 6))
    assert torch.equal(_inputs(flipped.test_set, 10), _inputs(plain.test_set, 10))


def test_image_folder_augments_the_training_split_only(tmp_path):
    for c, name in enumerate(["cat", "dog"]):
        for i in range(10):
            pixels = (torch.arange(10 * 7 * 3).view(7, 10, 3) * (c + 1 + i) % 256).to(torch.uint8).numpy()
            (tmp_path / name).mkdir(exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    kwargs = {"data_dir": str(tmp_path), "image_size": 8, "val_split": 0.2, "test_split": 0.2}
    plain, flipped = ImageFolder(**kwargs), ImageFolder(**kwargs, augment=[{"name": "hflip", "p": 1.0}])
    plain.setup(), flipped.setup()
    torch.testing.assert_close(_inputs(flipped.train_set, 12), _inputs(plain.train_set, 12).flip(-1))
    assert torch.equal(_inputs(flipped.val_set, 4), _inputs(plain.val_set, 4))
    assert torch.equal(_inputs(flipped.test_set, 4), _inputs(plain.test_set, 4))


# --- time series ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ts_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("ts")
    return write_ts(root / "Syn_TRAIN.ts", synthetic(40, seed=0)), write_ts(root / "Syn_TEST.ts", synthetic(10, seed=1))


def _series(ts_files, **kwargs) -> TimeSeries:
    dm = TimeSeries(train_file=ts_files[0], test_file=ts_files[1], batch_size=8, **kwargs)
    dm.setup()
    return dm


@pytest.mark.parametrize("name", sorted(SERIES_CASES))
def test_series_augmentation_changes_training_series_within_their_lengths(name, ts_files):
    plain, dm = _series(ts_files), _series(ts_files, augment=[{"name": name, **SERIES_CASES[name]}])
    torch.manual_seed(0)
    samples = [dm.train_set[i] for i in range(12)]
    originals = [plain.train_set[i] for i in range(12)]
    assert [s.shape for s, _ in samples] == [s.shape for s, _ in originals]  # each series keeps its length
    assert sum(not torch.allclose(a, b) for (a, _), (b, _) in zip(samples, originals)) >= 6
    batch, padded = pad_collate(samples)[0], pad_collate(originals)[0]
    assert torch.equal(batch["mask"], padded["mask"]) and torch.all(batch["x"][~batch["mask"]] == 0)  # padding stays
    for split in ("val_set", "test_set"):
        ours, theirs = getattr(dm, split), getattr(plain, split)
        assert all(torch.equal(ours[i][0], theirs[i][0]) for i in range(len(theirs)))


def test_series_augmentations_do_what_they_say(ts_files):
    plain = [s for s, _ in _series(ts_files).train_set]
    torch.manual_seed(0)
    jittered = _series(ts_files, augment=[{"name": "jitter", "sigma": 0.5}]).train_set
    noise = torch.cat([jittered[i][0] - plain[i] for i in range(10)])
    assert noise.mean().item() == pytest.approx(0.0, abs=0.1) and noise.std().item() == pytest.approx(0.5, rel=0.15)
    scaled = _series(ts_files, augment=[{"name": "scaling", "sigma": 0.5}]).train_set[0][0]
    factor = (scaled * plain[0]).sum(0) / (plain[0] ** 2).sum(0)  # one factor per channel, the same at every step
    torch.testing.assert_close(scaled, plain[0] * factor)
    assert not torch.allclose(factor, torch.ones(2), atol=0.01)
    x0, steps = plain[0], torch.arange(len(plain[0]))
    for wrap in (True, False):
        dm = _series(ts_files, augment=[{"name": "shift", "max_shift": 0.5, "wrap": wrap}])
        shifts = []
        for _ in range(6):
            x = dm.train_set[0][0]
            for k in sorted(range(1 - len(x0), len(x0)), key=abs):  # the smallest shift that explains x
                if torch.equal(x, x0.roll(k, 0) if wrap else x0[(steps - k).clamp(0, len(x0) - 1)]):
                    shifts.append(k)
                    break
        assert len(shifts) == 6 and all(abs(k) <= len(x0) // 2 for k in shifts) and any(shifts), (wrap, shifts)
    warped = _series(ts_files, augment=[{"name": "time_warp", "sigma": 0.5}]).train_set[0][0]
    assert not torch.allclose(warped, x0)
    torch.testing.assert_close(warped[[0, -1]], x0[[0, -1]])  # the ends stay where they are
    assert torch.all(warped.min(0).values >= x0.min(0).values - 1e-5)  # read between neighbouring steps
    assert torch.all(warped.max(0).values <= x0.max(0).values + 1e-5)


def test_series_augmentation_is_deterministic_under_a_seed(ts_files):
    dm = _series(ts_files, augment=["time_warp", "jitter", "scaling", "shift"])
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        runs.append(torch.cat([dm.train_set[i][0] for i in range(5)]))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


# --- MixUp / CutMix ------------------------------------------------------------------------------------------
def test_mixup_mixes_inputs_and_labels_by_the_same_lam():
    x, y = torch.randn(6, 3, 4, 4), torch.arange(6)
    torch.manual_seed(0)
    mixed, target = BatchMix(6, mixup_alpha=0.4)((x, y))
    lam = target[0, 0].item()
    assert 0 < lam < 1 and torch.allclose(target.sum(1), torch.ones(6))
    torch.testing.assert_close(target, lam * torch.eye(6) + (1 - lam) * torch.eye(6).roll(1, 0))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.roll(1, 0))


def test_cutmix_label_weights_are_the_pasted_area():
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 16, 16)  # image i is all i
    for seed in range(5):
        torch.manual_seed(seed)
        mixed, target = BatchMix(8, cutmix_alpha=1.0)((x, torch.arange(8)))
        for i in range(8):
            pasted = (mixed[i] == (i - 1) % 8).float().mean().item()  # CutMix pastes image i-1 into image i
            assert target[i, (i - 1) % 8].item() == pytest.approx(pasted)
            assert target[i, i].item() == pytest.approx(1 - pasted)


def test_mixing_is_seeded_and_mix_prob_zero_gives_one_hot():
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    outs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outs.append(BatchMix(3, mixup_alpha=1.0, cutmix_alpha=1.0)((x, y)))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(outs[0][1], outs[2][1])
    same, target = BatchMix(3, mixup_alpha=1.0, prob=0.0)((x, y))
    assert torch.equal(same, x) and torch.equal(target, F.one_hot(y, 3).float())


def test_mixup_of_padded_series_keeps_every_real_step():
    x = {"x": torch.randn(4, 6, 2), "mask": torch.arange(6) < torch.tensor([[2], [6], [3], [4]])}
    torch.manual_seed(0)
    mixed, _ = BatchMix(2, mixup_alpha=0.5)((x, torch.tensor([0, 1, 0, 1])))
    assert torch.equal(mixed["mask"], x["mask"] | x["mask"].roll(1, 0))
    with pytest.raises(ConfigError, match="cutmix_alpha pastes boxes between images"):
        BatchMix(2, cutmix_alpha=1.0)((x, torch.tensor([0, 1, 0, 1])))


class BatchesSeen(Callback):
    """Keeps one part of each training and validation batch as it reached the model (0: inputs, 1: targets)."""

    def __init__(self, part: int) -> None:
        self.part, self.train, self.val = part, [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.train.append(batch[self.part])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.val.append(batch[self.part])


def _fit(model, dm, *callbacks) -> None:
    Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    ).fit(model, datamodule=dm)


def _classifier(**kwargs) -> Classifier:
    torch.manual_seed(0)
    return Classifier(backbone="mlp", backbone_kwargs={"hidden_sizes": (16,)}, input_shape=(1, 8, 8), **kwargs)


def test_training_batches_are_mixed_validation_batches_are_not():
    dm, seen = Digits(batch_size=32, mixup_alpha=0.4, cutmix_alpha=1.0), BatchesSeen(part=1)
    _fit(_classifier(num_classes=10), dm, seen)
    assert len(seen.train) == 2 and len(seen.val) == 4  # 2 sanity-check batches, then 2 of validation
    for target in seen.train:
        assert target.shape == (32, 10) and torch.allclose(target.sum(1), torch.ones(32))
        assert (target.max(1).values < 1).any()  # mixed, not merely one-hot
    val_labels = torch.cat([dm.val_set.tensors[1][:32], dm.val_set.tensors[1][32:64]])
    assert torch.equal(torch.cat(seen.val[:2]), val_labels) and torch.equal(torch.cat(seen.val[2:]), val_labels)


# --- the Classifier with class probabilities ------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1, "class_weights": [1.0, 2.0, 0.5]}])
def test_soft_label_loss_equals_the_hand_computed_one(options):
    model = _classifier(num_classes=3, **options)
    logits, labels = torch.randn(8, 3), torch.tensor([0, 1, 2, 1, 0, 2, 2, 1])
    # one-hot probabilities are the class indices, label smoothing and class weights included
    torch.testing.assert_close(model.loss(logits, F.one_hot(labels, 3).float()), model.loss(logits, labels))
    probs = torch.softmax(torch.randn(8, 3), -1)
    smoothing, weights = options.get("label_smoothing", 0.0), torch.tensor(options.get("class_weights", [1.0] * 3))
    smoothed = (1 - smoothing) * probs + smoothing / 3
    expected = -(weights * smoothed * logits.log_softmax(-1)).sum() / (probs @ weights).sum()
    torch.testing.assert_close(model.loss(logits, probs), expected)


def test_metrics_of_soft_targets_count_the_likeliest_class():
    model = _classifier(num_classes=3)
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0]])
    soft = torch.tensor([[0.7, 0.3, 0], [0.2, 0.8, 0], [0.6, 0, 0.4], [0.1, 0.9, 0]])  # argmax 0, 1, 0, 1
    model.update_metrics(model.train_metrics, logits, soft)
    assert model.train_metrics.compute()["train/acc"].item() == pytest.approx(0.5)


# --- bad input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "augment, message",
    [
        (["hflp"], r"unknown augmentation 'hflp'; Digits takes hflip, vflip, .* Did you mean 'hflip'"),
        ([{"name": "rotation", "degress": 10}], r"rotation has no argument 'degress'; it takes degrees. Did you mean"),
        (["time_warp"], r"'time_warp' is a time-series augmentation; Digits takes hflip"),
        ([{"name": "color_jitter", "saturation": 0.4}], r"color_jitter .*these images are grey \(1 channel\)"),
        ([{"name": "auto_augment", "policy": "cifar"}], r"policy='cifar' must be one of .*cifar10"),
        ([{"degrees": 10}], r"each entry is a name \(hflip\) or a mapping with a name"),
    ],
)
def test_bad_image_augmentations_are_named(augment, message):
    with pytest.raises(ConfigError, match=message):
        Digits(augment=augment)


def test_bad_series_augmentations_are_named(ts_files):
    takes = r"'hflip' is an image augmentation; TimeSeries takes jitter, scaling, shift, time_warp"
    with pytest.raises(ConfigError, match=takes):
        TimeSeries(train_file=ts_files[0], test_file=ts_files[1], augment=["hflip"])
    with pytest.raises(ConfigError, match=r"jitter \{'sigma': -1\}: sigma=-1 must be >= 0"):
        TimeSeries(train_file=ts_files[0], test_file=ts_files[1], augment=[{"name": "jitter", "sigma": -1}])


@pytest.mark.parametrize(
    "kwargs, message",
    [({"mixup_alpha": -0.2}, r"data.mixup_alpha=-0.2 must be >= 0"), ({"mix_prob": 1.5}, r"data.mix_prob=1.5 must be")],
)
def test_bad_mix_settings_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Digits(**kwargs)


def test_unknown_augmentation_through_the_cli_exits_2(workdir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--data",
                "configs/data/digits.yaml",
                "--model",
                "configs/model/mlp.yaml",
                "--data.init_args.augment=[hflip, {name: rotaton, degrees: 10}]",
                *TINY,
            ]
        )
    assert exit_info.value.code == 2
    assert "unknown augmentation 'rotaton'; Digits takes hflip" in capsys.readouterr().err


def test_mixup_with_a_regressor_is_a_config_error():
    model = Regressor(backbone="mlp", backbone_kwargs={"hidden_sizes": (8,)}, input_shape=(1, 8, 8), num_targets=1)
    message = r"mixup_alpha=0.2: .* which Regressor cannot learn from; use zoo.tasks.Classifier, or remove data.mixup_"
    with pytest.raises(ConfigError, match=message):
        _fit(model, Digits(mixup_alpha=0.2))


class _RegressionData(ZooDataModule):
    """Any datamodule on the base may offer MixUp; on data without classes it must refuse."""

    task = "regression"
    input_shape = (3,)

    def __init__(self) -> None:
        super().__init__(cutmix_alpha=1.0)

    def build(self):
        return tuple(TensorDataset(torch.randn(10, 3), torch.randn(10, 1)) for _ in range(3))


def test_mixup_of_data_without_classes_is_a_config_error():
    message = r"cutmix_alpha=1.0: .* _RegressionData is a regression dataset \(no classes\); remove data.cutmix_alpha$"
    with pytest.raises(ConfigError, match=message):
        _RegressionData().setup("fit")


def test_mixup_with_a_task_without_classes_exits_2_from_the_command_line(workdir, capsys):
    # main() is what `python cli.py` runs; in-process it skips 5 s of imports in a fresh interpreter.
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--data",
                "configs/data/digits.yaml",
                "--model",
                "zoo.tasks.Autoencoder",
                "--data.init_args.mixup_alpha=0.2",
                *TINY,
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        "zoo: error: data.mixup_alpha=0.2: MixUp / CutMix turn labels into class probabilities, which "
        "Autoencoder cannot learn from; use zoo.tasks.Classifier, or remove data.mixup_alpha" in err
    )
    assert "Traceback" not in err


# --- end to end ------------------------------------------------------------------------------------------------
def test_fit_digits_with_augmentation_and_mixup_end_to_end(workdir):
    main(["fit", "--data", "configs/data/digits_augmented.yaml", "--model", "configs/model/mlp.yaml", *TINY])
    (run,) = [p.parent for p in (workdir / "runs").rglob("config.yaml")]
    config = yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]
    assert config["mixup_alpha"] == 0.2 and config["augment"][0] == {"name": "rotation", "degrees": 10}
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert set(metrics) == {"test/acc", "test/f1", "test/loss"} and 0.0 <= metrics["test/acc"] <= 1.0
    logged = (run / "metrics.csv").read_text().splitlines()
    header = logged[0].split(",")
    losses = [float(v) for row in logged[1:] if (v := row.split(",")[header.index("train/loss_step")])]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)  # 3 training steps on mixed batches
