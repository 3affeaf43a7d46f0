"""The training toolkit from config: optimizers, L1 / L2, LR schedules (LR checked at given steps), gradient
clipping, accumulation, precision, weight averaging, gradient-norm logging, and the bad settings refused."""

from __future__ import annotations

import csv
import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import TINY
from tests.test_cli import error_of, zoo
from zoo.callbacks.monitoring import GradNormMonitor
from zoo.errors import ConfigError
from zoo.schedules import WarmupCosineLR
from zoo.tasks import Classifier

DIGITS_MLP = ["--config", "configs/experiments/digits_mlp.yaml"]


def mlp(**kwargs) -> Classifier:
    torch.manual_seed(0)
    kwargs.setdefault("backbone_kwargs", {"hidden_sizes": [16]})
    return Classifier(backbone="mlp", input_shape=(6,), num_classes=3, **kwargs)


def data(n: int = 64, batch_size: int = 8, shuffle: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def fit(model, max_epochs=2, callbacks=(), batch_size=8, val=True, **trainer_kwargs) -> Trainer:
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
        **trainer_kwargs,
    )
    trainer.fit(model, data(batch_size=batch_size), data(32) if val else None)
    return trainer


class LRs(Callback):
    """The head's LR before every optimizer step, and at every epoch start."""

    def __init__(self) -> None:
        self.per_step: list[float] = []
        self.per_epoch: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.per_epoch.append(_head_lr(trainer))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.per_step.append(_head_lr(trainer))


def _head_lr(trainer: Trainer) -> float:
    return next(g["lr"] for g in trainer.optimizers[0].param_groups if g["name"] == "head")


# --- optimizers and L1 / L2 ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("class_path", "init_args", "expected"),
    [
        (
            "torch.optim.SGD",
            {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
            {"momentum": 0.9, "nesterov": True},
        ),
        ("torch.optim.Adam", {"lr": 0.01, "betas": [0.8, 0.99], "weight_decay": 1e-4}, {"betas": (0.8, 0.99)}),
        ("torch.optim.AdamW", {"lr": 0.01, "betas": [0.9, 0.95], "weight_decay": 0.05}, {"betas": (0.9, 0.95)}),
        (
            "torch.optim.RMSprop",
            {"lr": 0.01, "alpha": 0.9, "momentum": 0.5, "weight_decay": 1e-4},
            {"alpha": 0.9, "momentum": 0.5},
        ),
        ("torch.optim.Adagrad", {"lr": 0.01, "weight_decay": 1e-4}, {}),  # any torch.optim class
    ],
    ids=["sgd_nesterov", "adam", "adamw", "rmsprop", "adagrad"],
)
def test_optimizers_from_config_never_decay_biases_or_norms(workdir: Path, class_path, init_args, expected):
    from cli import ZooCLI

    args = [f"--model.optimizer={class_path}", *[f"--model.optimizer.{k}={v}" for k, v in init_args.items()]]
    cli = ZooCLI(args=[*DIGITS_MLP, *args, *TINY], run=False)  # its MLP has BatchNorm
    optimizer = cli.model.configure_optimizers()
    assert type(optimizer).__name__ == class_path.rsplit(".", 1)[1]
    decay = init_args["weight_decay"]
    for group in optimizer.param_groups:
        assert group["lr"] == init_args["lr"]
        for key, value in expected.items():
            assert group[key] == value, key
        if group["name"].endswith(".no_decay"):  # biases and the BatchNorm weights
            assert group["weight_decay"] == 0.0 and all(p.dim() < 2 for p in group["params"])
        else:
            assert group["weight_decay"] == decay and all(p.dim() >= 2 for p in group["params"])
    assert any(g["name"] == "backbone.block0.no_decay" for g in optimizer.param_groups)


def test_l1_penalty_adds_the_weights_absolute_sum_to_the_training_loss():
    x, y = next(iter(data()))
    plain, penalised = mlp(), mlp(l1_penalty=0.01)
    l1 = sum(p.abs().sum() for p in penalised.parameters() if p.dim() >= 2)
    expected = plain.shared_step((x, y), "train") + 0.01 * l1
    assert penalised.shared_step((x, y), "train").item() == pytest.approx(expected.item(), rel=1e-6)
    assert penalised.shared_step((x, y), "val").item() == pytest.approx(plain.shared_step((x, y), "val").item())


def test_l1_penalty_shrinks_weights_and_zeroes_many():
    def weights(model):
        return torch.cat([p.detach().flatten() for p in model.parameters() if p.dim() >= 2])

    adam = partial(torch.optim.Adam, lr=0.01)
    plain, sparse = mlp(optimizer=adam), mlp(l1_penalty=0.05, optimizer=adam)
    fit(plain, max_epochs=5, val=False)
    fit(sparse, max_epochs=5, val=False)
    assert weights(sparse).abs().sum() < 0.5 * weights(plain).abs().sum()  # measured: 13.3 against 42.8
    assert (weights(sparse).abs() < 0.01).float().mean() > 0.3 > (weights(plain).abs() < 0.01).float().mean()


def test_negative_l1_penalty_is_refused():
    with pytest.raises(ConfigError, match="l1_penalty=-1"):
        mlp(l1_penalty=-1)


# --- LR schedules: the LR at given steps ---------------------------------------------------------------
def test_warmup_cosine_counts_the_run_steps_and_follows_its_formula():
    lrs = LRs()
    model = mlp(
        optimizer=partial(torch.optim.AdamW, lr=0.1),
        lr_scheduler=partial(WarmupCosineLR, warmup_steps=4, warmup_start_factor=0.1, min_lr_factor=0.01),
    )
    fit(model, max_epochs=2, callbacks=[lrs])  # 8 batches x 2 epochs: total_steps=16 from the trainer
    assert len(lrs.per_step) == 16
    assert lrs.per_step[0] == pytest.approx(0.01)  # 0.1 x warmup_start_factor
    assert lrs.per_step[2] == pytest.approx(0.1 * (0.1 + 0.9 * 2 / 4))  # linear
    assert lrs.per_step[4] == pytest.approx(0.1)  # the peak, then cosine
    assert lrs.per_step[10] == pytest.approx(0.1 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 6 / 12))))
    assert all(a > b for a, b in zip(lrs.per_step[4:], lrs.per_step[5:]))
    assert model.trainer.lr_scheduler_configs[0].interval == "step"


def test_warmup_cosine_respects_accumulation_and_warmup_fraction():
    lrs = LRs()
    model = mlp(lr_scheduler=partial(WarmupCosineLR, warmup_fraction=0.25))
    fit(model, max_epochs=2, callbacks=[lrs], accumulate_grad_batches=2)  # 8 optimizer steps
    scheduler = model.trainer.lr_scheduler_configs[0].scheduler
    assert (scheduler.total_steps, scheduler.warmup_steps) == (8, 2)
    assert len(lrs.per_step) == 8 and lrs.per_step[0] == 0.0


def test_warmup_longer_than_the_run_is_refused():
    with pytest.raises(ConfigError, match="warmup_steps=20 must be in"):
        fit(mlp(lr_scheduler=partial(WarmupCosineLR, warmup_steps=20)), max_epochs=1)


def test_one_cycle_gets_its_total_steps_from_the_trainer():
    lrs = LRs()
    model = mlp(lr_scheduler=partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, pct_start=0.25))
    fit(model, max_epochs=2, callbacks=[lrs])
    assert model.trainer.lr_scheduler_configs[0].scheduler.total_steps == 16
    assert lrs.per_step[0] == pytest.approx(0.1 / 25)  # max_lr / div_factor
    assert max(lrs.per_step) == pytest.approx(0.1, rel=0.05) and lrs.per_step.index(max(lrs.per_step)) in (3, 4)


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        (partial(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.5), [0.1, 0.1, 0.05, 0.05, 0.025]),
        (partial(torch.optim.lr_scheduler.MultiStepLR, milestones=[1, 4], gamma=0.1), [0.1, 0.01, 0.01, 0.01, 0.001]),
        (partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.5), [0.1, 0.05, 0.025, 0.0125, 0.00625]),
        (
            partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4),
            [0.1 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(5)],
        ),
    ],
    ids=["step", "multistep", "exponential", "cosine"],
)
def test_epoch_schedules_step_once_per_epoch(scheduler, expected):
    lrs = LRs()
    model = mlp(optimizer=partial(torch.optim.SGD, lr=0.1), lr_scheduler=scheduler)
    fit(model, max_epochs=5, callbacks=[lrs], limit_train_batches=3, limit_val_batches=1)
    assert lrs.per_epoch == pytest.approx(expected)
    assert lrs.per_step == pytest.approx([lr for lr in expected for _ in range(3)])


def test_plateau_follows_the_monitor_given_in_the_config(workdir: Path):
    from cli import ZooCLI

    cli = ZooCLI(
        args=[
            *DIGITS_MLP,
            "--model.lr_scheduler=lightning.pytorch.cli.ReduceLROnPlateau",
            "--model.lr_scheduler.monitor=val/acc",
            "--model.lr_scheduler.mode=max",
            *TINY,
        ],
        run=False,
    )
    cli.model.trainer = cli.trainer
    config = cli.model.configure_optimizers()["lr_scheduler"]
    assert (config["monitor"], config["interval"], config["scheduler"].mode) == ("val/acc", "epoch", "max")


def test_plateau_reduces_the_lr_when_the_monitored_metric_stalls():
    lrs = LRs()
    # threshold=10: only a 10x better val/loss counts as progress, so every epoch after the first is a plateau.
    model = mlp(
        optimizer=partial(torch.optim.SGD, lr=0.1),
        lr_scheduler=partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0, factor=0.5, threshold=10.0),
    )
    fit(model, max_epochs=4, callbacks=[lrs], limit_train_batches=1)
    assert model.trainer.lr_scheduler_configs[0].monitor == "val/loss"
    assert lrs.per_epoch == pytest.approx([0.1, 0.05, 0.025, 0.0125])  # the first best is inf x (1 - 10)


def test_plateau_on_a_metric_the_task_does_not_log_is_refused(workdir: Path, capsys):
    err = error_of(
        capsys,
        "fit",
        *DIGITS_MLP,
        "--model.lr_scheduler=lightning.pytorch.cli.ReduceLROnPlateau",
        "--model.lr_scheduler.monitor=val/accuracy",
        *TINY,
    )
    assert "monitors 'val/accuracy', which this task does not log" in err and "'val/acc'" in err


def test_plateau_without_validation_is_refused(workdir: Path, capsys):
    err = error_of(
        capsys,
        "fit",
        *DIGITS_MLP,
        "--model.lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau",
        *TINY,
        "--trainer.limit_val_batches=0",
    )
    assert "no validation (trainer.limit_val_batches=0)" in err and "train/loss" in err


def test_fit_without_validation_drops_early_stopping_and_keeps_checkpoints(workdir: Path, capsys):
    zoo("fit", *DIGITS_MLP, *TINY, "--trainer.limit_val_batches=0")
    assert "early stopping on val/loss is off" in capsys.readouterr().err
    ckpts = sorted(p.name for p in (workdir / "runs/digits_mlp/version_0/checkpoints").iterdir())
    assert "last.ckpt" in ckpts and len(ckpts) == 2


# --- training controls ---------------------------------------------------------------------------------
class GradsAtStep(Callback):
    """Gradients as the optimizer used them (after clipping): Lightning clips inside optimizer.step's closure."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self.max_abs: list[float] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        trainer.optimizers[0].register_step_post_hook(self._hook)

    def _hook(self, optimizer, args, kwargs) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        self.max_abs.append(max(g.abs().max().item() for g in grads))


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_by_norm_and_value(algorithm):
    unclipped, clipped = GradsAtStep(), GradsAtStep()
    fit(mlp(), max_epochs=1, callbacks=[unclipped])
    fit(mlp(), max_epochs=1, callbacks=[clipped], gradient_clip_val=0.05, gradient_clip_algorithm=algorithm)
    if algorithm == "norm":
        assert min(unclipped.norms) > 0.05 and max(clipped.norms) <= 0.05 + 1e-6
    else:
        assert max(unclipped.max_abs) > 0.05 and max(clipped.max_abs) <= 0.05 + 1e-7


def test_gradient_accumulation_equals_the_larger_batch():
    small, large = mlp(optimizer=partial(torch.optim.SGD, lr=0.5)), mlp(optimizer=partial(torch.optim.SGD, lr=0.5))
    fit(small, max_epochs=2, batch_size=8, accumulate_grad_batches=4, val=False)
    fit(large, max_epochs=2, batch_size=32, val=False)
    assert small.trainer.global_step == large.trainer.global_step == 4
    for (name, a), b in zip(small.named_parameters(), large.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_mixed_on_cpu_runs_the_forward_in_bfloat16_and_keeps_fp32_weights():
    dtypes: list[torch.dtype] = []
    model = mlp()
    model.head.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = fit(model, max_epochs=1, precision="bf16-mixed")
    assert set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert math.isfinite(trainer.callback_metrics["train/loss"])


def _tested_under(run: Path, precision: str | None) -> dict[str, float]:
    """The run's test metrics, after checking they are finite and that the run trained at ``precision``."""
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["precision"] == precision
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert {"test/acc", "test/loss"} <= set(metrics) and all(math.isfinite(v) for v in metrics.values())
    return metrics


def test_bf16_mixed_through_zoo_fit(workdir: Path):
    zoo("fit", *DIGITS_MLP, *TINY, "--trainer.precision=bf16-mixed")
    _tested_under(workdir / "runs/digits_mlp/version_0", "bf16-mixed")


def test_grad_norm_monitor_logs_pre_clipping_norms_per_group(workdir: Path):
    zoo("fit", *DIGITS_MLP, *TINY, "--trainer.gradient_clip_val=0.01")
    rows = list(csv.DictReader(open(workdir / "runs/digits_mlp/version_0/metrics.csv")))
    logged = [r for r in rows if r.get("grad_norm/total")]
    assert len(logged) == 3  # every step (log_every_n_steps=1)
    groups = [k for k in rows[0] if k.startswith("grad_norm/") and k != "grad_norm/total"]
    assert set(groups) == {"grad_norm/backbone.block0", "grad_norm/backbone.block1", "grad_norm/head"}
    for row in logged:
        total = math.sqrt(sum(float(row[g]) ** 2 for g in groups))
        assert float(row["grad_norm/total"]) == pytest.approx(total, rel=1e-4)
        assert float(row["grad_norm/total"]) > 0.01  # measured before clipping to 0.01


def test_grad_norm_monitor_skips_frozen_groups():
    seen: list[str] = []

    class Keys(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            seen.extend(k for k in trainer.callback_metrics if k.startswith("grad_norm/"))

    from zoo.callbacks import FineTuning

    fit(
        mlp(),
        max_epochs=1,
        callbacks=[FineTuning("feature_extraction"), GradNormMonitor(), Keys()],
        log_every_n_steps=1,
    )
    assert set(seen) == {"grad_norm/total", "grad_norm/head"}


def test_ema_weight_averaging_from_the_command_line(workdir: Path):
    zoo(
        "fit",
        *DIGITS_MLP,
        *TINY,
        "--trainer.max_epochs=2",
        "--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging",
        "--trainer.callbacks.decay=0.5",
    )
    ckpt = torch.load(workdir / "runs/digits_mlp/version_0/checkpoints/last.ckpt", weights_only=False)
    # The checkpoint's weights are the average; the raw ones are kept beside them for resuming.
    assert "current_model_state" in ckpt and "averaging_state" in ckpt
    averaged, current = ckpt["state_dict"], ckpt["current_model_state"]
    assert any(not torch.equal(averaged[k], current[k]) for k in averaged if k.endswith("weight"))


def test_swa_from_the_command_line_switches_to_its_lr(workdir: Path):
    zoo(
        "fit",
        *DIGITS_MLP,
        *TINY,
        "--trainer.max_epochs=3",
        "--trainer.callbacks+=StochasticWeightAveraging",
        "--trainer.callbacks.swa_lrs=0.0005",
        "--trainer.callbacks.swa_epoch_start=1",
        "--trainer.callbacks.annealing_epochs=1",
    )
    rows = list(csv.DictReader(open(workdir / "runs/digits_mlp/version_0/metrics.csv")))
    head_lrs = [float(r["lr-AdamW/head"]) for r in rows if r.get("lr-AdamW/head")]
    assert head_lrs[0] == pytest.approx(0.001) and head_lrs[-1] == pytest.approx(0.0005)
    _tested_under(workdir / "runs/digits_mlp/version_0", None)  # the default precision


# --- settings this machine cannot run: named before training ----------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trainer.precision=16-true"], "trainer.precision='16-true' trains the whole model in float16"),
        (["--trainer.accelerator=gpu"], "the trainer settings cannot run here: No supported gpu backend"),
        (["--trainer.precision=transformer-engine"], "cannot run here: Requirement 'transformer_engine"),
        (["--trainer.accumulate_grad_batches=4"], "accumulate_grad_batches=4 but an epoch has only 3 training"),
    ],
    ids=["fp16_on_cpu", "gpu_missing", "transformer_engine_missing", "accumulation_over_the_epoch"],
)
def test_settings_the_hardware_cannot_do_are_named(workdir: Path, capsys, args, message):
    assert message in error_of(capsys, "fit", *DIGITS_MLP, *TINY, *args)


def test_bf16_true_runs_the_model_summary_on_cpu(workdir: Path):
    # Lightning's summary feeds example_input_array as is; the task casts it as the precision plugin does.
    zoo("fit", *DIGITS_MLP, *TINY, "--trainer.precision=bf16-true", "--trainer.enable_model_summary=true")
    _tested_under(workdir / "runs/digits_mlp/version_0", "bf16-true")


def test_same_seed_twice_gives_bit_identical_weights_with_workers(workdir: Path):
    args = [*DIGITS_MLP, *TINY, "--trainer.max_epochs=2", "--data.num_workers=2", "--trainer.deterministic=true"]
    zoo("fit", *args)
    zoo("fit", *args)
    first, second = (
        torch.load(workdir / f"runs/digits_mlp/version_{v}/checkpoints/last.ckpt", weights_only=False)["state_dict"]
        for v in (0, 1)
    )
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    zoo("fit", *args, "--seed_everything=7")  # and the seed matters
    third = torch.load(workdir / "runs/digits_mlp/version_2/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    assert not all(torch.equal(first[k], third[k]) for k in first)
