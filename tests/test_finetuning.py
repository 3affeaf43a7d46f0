"""Fine-tuning schedules: which layer groups train at each epoch under every strategy, discriminative
learning rates through real schedulers, BatchNorm policy, resume after an unfreeze, DDP through an
unfreeze, per-group LR logging, and `zoo groups`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import ROOT, TINY, run_zoo
from zoo.callbacks import FineTuning
from zoo.errors import ConfigError
from zoo.tasks import Classifier

TINY_RESNET = {"widths": [4, 8, 8, 8], "stem": "small"}
BACKBONE = ["backbone.stem", "backbone.layer1", "backbone.layer2", "backbone.layer3", "backbone.layer4"]


# --- the schedule as a function of the epoch -------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"strategy": "full"}, [5, 5, 5, 5, 5, 5]),
        ({"strategy": "feature_extraction"}, [0, 0, 0, 0, 0, 0]),
        ({"strategy": "freeze_then_unfreeze", "unfreeze_epoch": 2}, [0, 0, 5, 5, 5, 5]),
        ({"strategy": "progressive"}, [0, 1, 2, 3, 4, 5]),
        ({"strategy": "progressive", "unfreeze_epoch": 0, "unfreeze_every": 2}, [1, 1, 2, 2, 3, 3]),
        ({"strategy": "milestones", "milestones": {1: 1, 3: 3, 4: -1}}, [0, 1, 1, 3, 5, 5]),
    ],
)
def test_strategies_unfreeze_top_groups_on_schedule(kwargs, expected):
    callback = FineTuning(**kwargs)
    assert [callback.num_trainable(epoch, 5) for epoch in range(6)] == expected
    # Always the top groups: the stem is the last to train.
    assert callback.trainable_at(3, BACKBONE) == (BACKBONE[5 - expected[3] :] if expected[3] else [])


def test_discriminative_lrs_decay_from_the_top():
    callback = FineTuning(backbone_lr_ratio=0.5, layer_lr_decay=0.5)
    assert callback.lr_multiplier("head", BACKBONE) == 1.0
    assert callback.lr_multiplier("backbone.layer4", BACKBONE) == 0.5
    assert callback.lr_multiplier("backbone.layer3.no_decay", BACKBONE) == 0.25
    assert callback.lr_multiplier("backbone.stem", BACKBONE) == 0.5 * 0.5**4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "gradual"}, "is not one of full, feature_extraction"),
        ({"strategy": "milestones"}, "needs finetuning.milestones"),
        ({"backbone_lr_ratio": 0.0}, "freeze groups with the strategy, not a zero LR"),
        ({"layer_lr_decay": 1.5}, r"layer_lr_decay=1.5 must be in \(0, 1\]"),
        ({"unfreeze_every": 0}, "unfreeze_every=0"),
        ({"bn_mode": "frozen"}, "bn_mode='frozen'"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FineTuning(**kwargs)


# --- training under a real Trainer ------------------------------------------------------------------
def make_model(**kwargs) -> Classifier:
    torch.manual_seed(0)
    return Classifier(backbone="resnet18", backbone_kwargs=TINY_RESNET, input_shape=(1, 8, 8), num_classes=3, **kwargs)


def loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True), DataLoader(TensorDataset(x, y), batch_size=16)


class Recorder(Callback):
    """Which layer groups' weights and BatchNorm statistics changed in each epoch, and the LR of every group."""

    def __init__(self) -> None:
        self.changed: list[set[str]] = []
        self.stats_changed: list[set[str]] = []
        self.lrs: list[dict[str, float]] = []

    def _snapshot(self, pl_module):
        weights, stats = {}, {}
        for name, module in pl_module.named_layer_groups().items():
            weights[name] = [p.detach().clone() for p in module.parameters()]
            stats[name] = [b.detach().clone() for n, b in module.named_buffers() if "running_mean" in n]
        return weights, stats

    def on_train_epoch_start(self, trainer, pl_module):
        self._before = self._snapshot(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.lrs.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})

    def on_train_epoch_end(self, trainer, pl_module):
        after = self._snapshot(pl_module)
        for i, record in enumerate((self.changed, self.stats_changed)):
            before, now = self._before[i], after[i]
            record.append({n for n in now if any(not torch.equal(a, b) for a, b in zip(before[n], now[n]))})


def fit(model, callbacks, max_epochs=3, **trainer_kwargs) -> Trainer:
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **trainer_kwargs,
    )
    train, val = loaders()
    trainer.fit(model, train, val)
    return trainer


def test_progressive_trains_exactly_the_scheduled_groups():
    recorder = Recorder()
    fit(make_model(), [FineTuning("progressive"), recorder], max_epochs=3)
    assert recorder.changed == [{"head"}, {"head", "backbone.layer4"}, {"head", "backbone.layer4", "backbone.layer3"}]
    # bn_mode=eval: frozen groups' running statistics stay put through every .train() Lightning calls.
    assert recorder.stats_changed == [set(), {"backbone.layer4"}, {"backbone.layer4", "backbone.layer3"}]


def test_feature_extraction_with_bn_train_updates_only_norms_in_the_backbone():
    model = make_model()
    recorder = Recorder()
    fit(model, [FineTuning("feature_extraction", bn_mode="train"), recorder], max_epochs=1)
    assert recorder.changed == [{"head", *BACKBONE}]  # the norms' affine parameters train (fastai semantics)
    assert recorder.stats_changed == [set(BACKBONE)]
    convs_trainable = [p.requires_grad for n, p in model.backbone.named_parameters() if p.dim() == 4]
    assert convs_trainable and not any(convs_trainable)


def test_frozen_parameters_get_no_update_and_no_weight_decay():
    model = make_model(optimizer=partial(torch.optim.AdamW, lr=0.01, weight_decay=0.5))
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    fit(model, [FineTuning("feature_extraction")], max_epochs=1)
    assert all(torch.equal(before[n], p) for n, p in model.backbone.named_parameters())


@pytest.mark.parametrize(
    "scheduler",
    [
        # linear warmup for 2 epochs, then cosine
        lambda opt: torch.optim.lr_scheduler.SequentialLR(
            opt,
            [
                torch.optim.lr_scheduler.LinearLR(opt, 0.1, total_iters=2),
                torch.optim.lr_scheduler.CosineAnnealingLR(opt, 4),
            ],
            milestones=[2],
        ),
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=24),
        lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5),
    ],
    ids=["warmup_cosine", "one_cycle", "plateau"],
)
def test_schedulers_keep_discriminative_ratios_through_an_unfreeze(scheduler):
    recorder = Recorder()
    model = make_model(optimizer=partial(torch.optim.AdamW, lr=0.01), lr_scheduler=scheduler)
    callback = FineTuning("freeze_then_unfreeze", unfreeze_epoch=1, backbone_lr_ratio=0.5, layer_lr_decay=0.5)
    trainer = fit(model, [callback, recorder], max_epochs=3)
    assert recorder.changed[0] == {"head"} and recorder.changed[2] == {"head", *BACKBONE}
    head_lrs = [lrs["head"] for lrs in recorder.lrs]
    assert len(set(head_lrs)) > 1, "the scheduler did not move the LR"
    for lrs in recorder.lrs:  # every group follows the same schedule at its own multiplier
        for name, lr in lrs.items():
            expected = callback.lr_multiplier(name, BACKBONE) * lrs["head"]
            assert lr == pytest.approx(expected, rel=1e-6), name
    assert len(trainer.optimizers[0].param_groups) == len(recorder.lrs[0])  # the layout never changed


def test_resume_after_an_unfreeze_matches_the_uninterrupted_run(tmp_path: Path):
    def run(max_epochs: int, ckpt_path=None, dirpath=None):
        recorder = Recorder()
        model = make_model(lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
        callback = FineTuning("progressive", backbone_lr_ratio=0.5, layer_lr_decay=0.8)
        checkpoint = ModelCheckpoint(dirpath=dirpath, save_last=True) if dirpath else None
        trainer = Trainer(
            accelerator="cpu",
            max_epochs=max_epochs,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            enable_checkpointing=checkpoint is not None,
            callbacks=[callback, recorder, *([checkpoint] if checkpoint else [])],
        )
        train, val = loaders()
        trainer.fit(model, train, val, ckpt_path=ckpt_path, weights_only=False)  # our own file: hparams hold a partial
        groups = [(g["name"], g["lr"], len(g["params"])) for g in trainer.optimizers[0].param_groups]
        trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        return recorder, groups, trainable, callback

    full, full_groups, full_trainable, _ = run(4)
    run(2, dirpath=tmp_path)  # unfreezes layer4 in epoch 1, then stops
    resumed, groups, trainable, callback = run(4, ckpt_path=tmp_path / "last.ckpt")
    assert callback.trainable == ["backbone.layer2", "backbone.layer3", "backbone.layer4"]
    assert trainable == full_trainable
    assert [(g[0], g[2]) for g in groups] == [(g[0], g[2]) for g in full_groups]
    assert [g[1] for g in groups] == pytest.approx([g[1] for g in full_groups])
    assert resumed.lrs == [pytest.approx(lrs) for lrs in full.lrs[2:]]
    assert resumed.changed[-1] == full.changed[-1] == {"head", "backbone.layer4", "backbone.layer3", "backbone.layer2"}


# --- the CLI: LR of every group logged, `zoo groups` ------------------------------------------------
def test_cli_logs_the_lr_of_every_named_group(workdir: Path):
    result = run_zoo(
        "fit",
        "--config",
        "configs/experiments/digits_cnn.yaml",
        *TINY,
        "--trainer.max_epochs=2",
        "--finetuning.strategy=freeze_then_unfreeze",
        "--finetuning.backbone_lr_ratio=0.1",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "FineTuning: epoch 1: unfroze backbone.stage0" in result.stderr + result.stdout
    rows = list(csv.DictReader((workdir / "runs/digits_cnn/version_0/metrics.csv").open()))
    groups = ["backbone.stage0", "backbone.stage1", "backbone.dense", "head"]
    lr = {g: float(next(r[f"lr-AdamW/{g}"] for r in rows if r.get(f"lr-AdamW/{g}"))) for g in groups}
    assert lr["backbone.stage0"] == pytest.approx(0.1 * lr["head"])
    assert all(f"lr-AdamW/{g}.no_decay" in rows[0] for g in groups)
    trainable = [float(r["finetune/trainable_groups"]) for r in rows if r.get("finetune/trainable_groups")]
    assert trainable == [0.0, 3.0]


def _table(stdout: str) -> dict[str, list[str]]:
    """Rows of the `zoo groups` table: [params, LR x, then one mark per epoch]."""
    rows = [line.split("│")[1:-1] for line in stdout.splitlines() if line.startswith("│")]
    cells = {row[0].strip(): [c.strip() for c in row[1:]] for row in rows}
    return {name: [*values[:2], *values[2].replace(" ", "")] for name, values in cells.items()}


def test_zoo_groups_prints_the_schedule(workdir: Path):
    result = run_zoo(
        "groups",
        "resnet18",
        "--strategy",
        "progressive",
        "--unfreeze_every",
        "2",
        "--layer_lr_decay",
        "0.5",
        "--epochs",
        "4",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    table = _table(result.stdout)
    assert list(table) == [*BACKBONE, "head"]
    assert table["backbone.layer4"] == ["8,393,728", "1", ".", "+", "+", "+"]
    assert table["backbone.layer3"] == ["2,099,712", "0.5", ".", ".", ".", "+"]
    assert table["backbone.stem"][2:] == [".", ".", ".", "."]
    assert table["head"] == ["new", "1", "+", "+", "+", "+"]


def test_zoo_groups_from_a_config_with_overrides(workdir: Path):
    result = run_zoo(
        "groups",
        "--config",
        "configs/experiments/digits_cnn.yaml",
        "--finetuning.strategy=milestones",
        "--finetuning.milestones={2: 1, 3: -1}",
        "--epochs",
        "4",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    table = _table(result.stdout)
    assert list(table) == ["backbone.stage0", "backbone.stage1", "backbone.dense", "head"]
    assert table["backbone.dense"][2:] == [".", ".", "+", "+"]
    assert table["backbone.stage0"][2:] == [".", ".", ".", "+"]
    assert int(table["head"][0].replace(",", "")) == 128 * 10 + 10


def test_zoo_groups_needs_one_source(workdir: Path):
    result = run_zoo("groups", cwd=workdir)
    assert result.returncode == 2 and "give a backbone name or --config" in result.stderr


# --- DDP: 2 CPU processes (gloo) through an unfreeze -------------------------------------------------
DDP_SCRIPT = """
import json, sys, torch
from lightning.pytorch import Trainer
from tests.test_finetuning import Recorder, loaders, make_model
from zoo.callbacks import FineTuning

recorder = Recorder()
model = make_model()
trainer = Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    callbacks=[FineTuning("freeze_then_unfreeze", unfreeze_epoch=1, backbone_lr_ratio=0.5), recorder],
)
train, val = loaders()
trainer.fit(model, train, val)
weights = {n: p.detach().tolist() for n, p in model.named_parameters()}
out = {"changed": [sorted(c) for c in recorder.changed], "weights": weights}
json.dump(out, open(f"{sys.argv[1]}/rank{trainer.global_rank}.json", "w"))
"""


@pytest.mark.slow  # end to end (a whole run and its processes): the second tier
def test_ddp_with_two_cpu_processes_runs_through_an_unfreeze(tmp_path: Path):
    script = tmp_path / "ddp_finetune.py"
    script.write_text(DDP_SCRIPT)
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "find_unused_parameters=True" in result.stderr + result.stdout
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["changed"] == [["head"], sorted(["head", *BACKBONE])]
    # Gradients of the unfrozen groups were all-reduced: both processes end with the same weights.
    assert ranks[0]["weights"] == ranks[1]["weights"]
