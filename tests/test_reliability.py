"""Nothing a user trained is lost: kills and preemption resume exactly, `last.ckpt` is always the latest step,
checkpoint files are whole or absent, untrusted checkpoints never run code, a NaN loss stops the run with
every checkpoint finite."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY, run_zoo
from tests.test_cli import error_of
from zoo.checkpoints import read_checkpoint
from zoo.errors import ConfigError
from zoo.run.files import AtomicCheckpointIO

# A shuffled run with dropout: resuming exactly needs the RNG states as well as the weights.
RUN = ["--config", "configs/experiments/digits_mlp.yaml", *TINY, "--trainer.max_epochs=4", "--test_after_fit=false"]
CKPTS = "runs/digits_mlp/version_{}/checkpoints"


def probe(name: str, **kwargs) -> list[str]:
    return [
        f"--trainer.callbacks+=tests.fault_probes.{name}",
        *[f"--trainer.callbacks.{k}={v}" for k, v in kwargs.items()],
    ]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(str(path))["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"not bit-identical: {different[:5]}"


@pytest.mark.parametrize(
    "extra",
    [
        [],
        pytest.param(
            ["--finetuning.strategy=freeze_then_unfreeze", "--finetuning.unfreeze_epoch=1"], marks=pytest.mark.slow
        ),
    ],
    ids=["shuffled_dropout", "after_an_unfreeze"],
)
def test_sigkill_then_resume_from_last_is_bit_identical_to_an_uninterrupted_run(workdir: Path, extra):
    done = run_zoo("fit", *RUN, *extra, cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = run_zoo("fit", *RUN, *extra, *probe("SignalAt", epoch=2, batch=1, signal="KILL"), cwd=workdir)
    assert killed.returncode == -signal.SIGKILL
    saved = read_checkpoint(str(workdir / CKPTS.format(1) / "last.ckpt"))
    assert (saved["epoch"], saved["global_step"]) == (1, 6)  # the end of epoch 1: only epoch 2 is repeated
    resumed = run_zoo("fit", *RUN, *extra, "--ckpt_path=last", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {CKPTS.format(1)}/last.ckpt" in resumed.stderr
    final = weights(workdir / CKPTS.format(2) / "last.ckpt")
    assert_same_weights(final, weights(workdir / CKPTS.format(0) / "last.ckpt"))
    if extra:  # the backbone unfroze in epoch 1, before the kill: after the resume it still trains
        backbone = [k for k in final if k.startswith("backbone.") and k.endswith("weight")]
        assert any(not torch.equal(final[k], saved["state_dict"][k]) for k in backbone)


@pytest.mark.slow
def test_without_rng_states_the_resume_would_differ(workdir: Path):
    # The check above can fail: drop the RNG states from the checkpoint and the resumed run drifts.
    assert run_zoo("fit", *RUN, cwd=workdir).returncode == 0
    assert run_zoo("fit", *RUN, *probe("SignalAt", epoch=2, batch=1), cwd=workdir).returncode == -signal.SIGKILL
    last = workdir / CKPTS.format(1) / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    del ckpt["zoo_rng_states"]
    torch.save(ckpt, last)
    assert run_zoo("fit", *RUN, "--ckpt_path=last", cwd=workdir).returncode == 0
    final, uninterrupted = (weights(workdir / CKPTS.format(v) / "last.ckpt") for v in (2, 0))
    assert any(not torch.equal(final[k], uninterrupted[k]) for k in final)


def test_last_ckpt_holds_the_latest_step_whatever_the_monitor_says(workdir: Path):
    # mode=max on a falling val/loss: the best checkpoint stays at epoch 0, last.ckpt must not.
    result = run_zoo("fit", *RUN, "--checkpoint.mode=max", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpts = workdir / CKPTS.format(0)
    assert sorted(p.name for p in ckpts.iterdir()) == ["best-epoch=0-step=3.ckpt", "last.ckpt"]
    last = read_checkpoint(str(ckpts / "last.ckpt"))
    assert (last["epoch"], last["global_step"]) == (3, 12)


def test_sigterm_mid_epoch_writes_a_checkpoint_exits_143_and_resumes(workdir: Path):
    stopped = run_zoo("fit", *RUN, *probe("SignalAt", epoch=1, batch=1, signal="TERM"), cwd=workdir)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "resume with --ckpt_path last" in stopped.stderr
    last = read_checkpoint(str(workdir / CKPTS.format(0) / "last.ckpt"))
    assert last["global_step"] == 5  # 3 steps of epoch 0, then 2 of epoch 1: the step it was stopped at
    resumed = run_zoo("fit", *RUN, "--ckpt_path=last", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_checkpoint(str(workdir / CKPTS.format(1) / "last.ckpt"))["epoch"] == 3


def test_ctrl_c_keeps_the_latest_step(workdir: Path):
    stopped = run_zoo("fit", *RUN, *probe("SignalAt", epoch=1, batch=2, signal="INT"), cwd=workdir)
    assert stopped.returncode != 0
    assert read_checkpoint(str(workdir / CKPTS.format(0) / "last.ckpt"))["global_step"] == 5  # 3 + 2 done


def test_nan_loss_stops_at_once_naming_the_step_and_every_checkpoint_stays_finite(workdir: Path):
    result = run_zoo("fit", *RUN, *probe("PoisonBatch", epoch=1, batch=1), cwd=workdir)
    assert result.returncode == 1
    assert "zoo: error: the training loss is nan at epoch 1, step 4 (batch 1 of the epoch)" in result.stderr
    assert "Traceback" not in result.stderr
    files = list((workdir / CKPTS.format(0)).iterdir())
    assert files
    for path in files:
        for name, tensor in read_checkpoint(str(path))["state_dict"].items():
            if tensor.is_floating_point():
                assert torch.isfinite(tensor).all(), f"{path.name}: {name}"
    assert read_checkpoint(str(workdir / CKPTS.format(0) / "last.ckpt"))["global_step"] == 3


def _all_finite(folder: Path) -> None:
    for path in folder.iterdir():
        for name, tensor in read_checkpoint(str(path))["state_dict"].items():
            if tensor.is_floating_point():
                assert torch.isfinite(tensor).all(), f"{path.name}: {name}"


def test_a_finite_loss_whose_update_makes_weights_non_finite_stops_naming_the_step(workdir: Path):
    huge = [
        "--config",
        "configs/experiments/digits_mlp.yaml",
        *TINY,
        "--trainer.max_epochs=20",
        "--trainer.limit_train_batches=1",
        "--model.init_args.optimizer.init_args.lr=1e6",
    ]
    result = run_zoo("fit", *huge, cwd=workdir)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "tensor(s) non-finite" in result.stderr and "Traceback" not in result.stderr
    assert re.search(r"the training step to step \d+ \(epoch \d+\)", result.stderr)
    _all_finite(workdir / CKPTS.format(0))


def test_an_overflowing_hyperparameter_stops_with_a_message(workdir: Path):
    result = run_zoo("fit", *RUN, "--model.init_args.optimizer.init_args.lr=1e300", cwd=workdir)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "the optimizer step at epoch 0, step 0 overflowed" in result.stderr


def test_a_non_finite_val_loss_stops_before_that_validations_checkpoints(workdir: Path):
    result = run_zoo("fit", *RUN, *probe("PoisonBatch", epoch=1, batch=0, stage="val"), cwd=workdir)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "zoo: error: val/loss is nan after epoch 1, step 6" in result.stderr
    assert read_checkpoint(str(workdir / CKPTS.format(0) / "last.ckpt"))["global_step"] == 3  # epoch 0's
    _all_finite(workdir / CKPTS.format(0))


def test_no_checkpoint_is_written_with_non_finite_weights():
    from types import SimpleNamespace

    from zoo.callbacks.checkpointing import ZooCheckpoint
    from zoo.errors import TrainingError

    module = torch.nn.BatchNorm1d(3)
    ZooCheckpoint().on_save_checkpoint(SimpleNamespace(), module, {})  # finite: written (no error)
    module.running_var[1] = float("inf")  # a buffer, as batch norm's statistics go first
    with pytest.raises(TrainingError, match=r"1 tensor\(s\) of the model are non-finite, e.g. running_var"):
        ZooCheckpoint().on_save_checkpoint(SimpleNamespace(current_epoch=2, global_step=7), module, {})


def test_the_non_finite_check_reads_a_shard_that_holds_nothing_of_a_parameter():
    # Under FSDP a process holds an empty tensor for each parameter outside its shard; the check's fused max over
    # all tensors failed on it at the first step of any multi-process FSDP run (found with tests/fsdp_probe.py).
    from zoo.callbacks.monitoring import non_finite_tensors

    module = torch.nn.Linear(3, 2)
    module.weight = torch.nn.Parameter(torch.empty(0))
    assert non_finite_tensors(module) == []
    module.bias.data[0] = float("nan")
    assert non_finite_tensors(module) == ["bias"]


def test_after_a_step_only_what_a_step_can_change_is_read_for_non_finite_values():
    from zoo.callbacks.monitoring import non_finite_tensors
    from zoo.tasks import Classifier

    model = Classifier(
        backbone="resnet18", backbone_kwargs={"widths": [4, 8, 8, 8]}, input_shape=(1, 8, 8), num_classes=3
    )
    with torch.no_grad():
        model.backbone.stem[0].conv.weight[0, 0, 0, 0] = float("nan")
    assert non_finite_tensors(model, changed_by_training=True) == ["backbone.stem.0.conv.weight"]
    model.backbone.requires_grad_(False)  # a frozen backbone in eval mode: a step changes none of it
    model.backbone.eval()
    assert non_finite_tensors(model, changed_by_training=True) == []
    assert non_finite_tensors(model) == ["backbone.stem.0.conv.weight"]  # what a checkpoint is checked for


@pytest.mark.parametrize(
    "how",
    [["--data.init_args.val_split=0", "--selection=best"], ["--trainer.max_steps=2"]],
    ids=["no_validation_split", "stops_before_it"],
)
def test_no_validation_metric_yet_trains_on_with_one_message(workdir: Path, capsys, how):
    from cli import main

    main(["fit", "--config", "configs/experiments/digits_mlp.yaml", *TINY, "--trainer.max_epochs=2", *how])
    err = capsys.readouterr().err
    assert err.count("no val/loss yet") == 1 and "early stopping waits for it" in err
    assert "testing the last weights" in err
    run = workdir / "runs/digits_mlp/version_0"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]
    assert set(json.loads((run / "test_metrics.json").read_text())) == {"test/acc", "test/f1", "test/loss"}


def test_a_mistyped_early_stopping_monitor_is_still_refused(workdir: Path, capsys):
    from cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/experiments/digits_mlp.yaml", *TINY, "--early_stopping.monitor=val/los"])
    assert exit_info.value.code == 2
    assert "early_stopping.monitor='val/los' is not a logged metric; the run logs val/acc" in capsys.readouterr().err


# --- checkpoint files: whole or absent ------------------------------------------------------------------
def _write_forever(target: str, weights: torch.Tensor, steps) -> None:
    io = AtomicCheckpointIO()
    while True:  # no torch ops here: a forked child must not start intra-op threads
        step = steps.value + 1
        io.save_checkpoint({"state_dict": {"w": weights}, "step": step}, target)
        steps.value = step


def test_kills_while_writing_never_leave_the_newest_checkpoint_unloadable(tmp_path: Path):
    import multiprocessing

    target = tmp_path / "last.ckpt"
    weights = torch.randn(2_000_000)
    context = multiprocessing.get_context("fork")  # torch is already imported: a writer starts in milliseconds
    rng = random.Random(0)
    seen = []
    for _ in range(12):
        steps = context.Value("i", 0)
        writer = context.Process(target=_write_forever, args=(str(target), weights, steps))
        writer.start()
        while steps.value < 1:  # one whole write, then kill it at a random moment of the later ones
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        ckpt = read_checkpoint(str(target))  # the previous file or the new one, never half of one
        assert torch.equal(ckpt["state_dict"]["w"], weights)
        seen.append(ckpt["step"])
        leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.ckpt"]
        assert len(leftovers) <= 1 and all(n.startswith(".last.ckpt.partial-") for n in leftovers)
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, target)  # the next write removes what a kill left
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert max(seen) > 1


# --- untrusted checkpoints: refused, nothing runs -----------------------------------------------------
class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def trained(workdir: Path) -> Path:
    result = run_zoo("fit", "--config", "configs/experiments/digits_mlp.yaml", *TINY, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / CKPTS.format(0) / "last.ckpt"


def test_untrusted_checkpoints_are_refused_and_never_run(trained: Path, workdir: Path, capsys):
    good = torch.load(trained, weights_only=True)
    marker = workdir / "payload-ran"
    evil = workdir / "evil.ckpt"
    torch.save({**good, "extra": Payload(str(marker))}, evil)
    foreign = workdir / "foreign.ckpt"
    torch.save({**good, "hyper_parameters": {**good["hyper_parameters"], "_class_path": "os.system"}}, foreign)
    truncated = workdir / "truncated.ckpt"
    truncated.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])

    config = ["--config", "configs/experiments/digits_mlp.yaml", *TINY]
    cases = [
        (["fit", *config, f"--ckpt_path={evil}"], "refused, it holds Python objects"),
        (["test", *config, f"--ckpt_path={evil}"], "refused, it holds Python objects"),
        (["fit", *config, f"--ckpt_path={foreign}"], "refused, hyper_parameters._class_path names 'os.system'"),
        (["predict", f"--ckpt_path={evil}", "examples/digits"], "refused, it holds Python objects"),
        (["export", f"--ckpt_path={evil}"], "refused, it holds Python objects"),
        (
            ["predict", f"--ckpt_path={foreign}", "examples/digits"],
            "refused, hyper_parameters._class_path names 'os.system'",
        ),
        (["fit", *config, f"--ckpt_path={truncated}"], "may be truncated or corrupt"),
        (["predict", f"--ckpt_path={truncated}", "examples/digits"], "may be truncated or corrupt"),
    ]
    (workdir / "examples").symlink_to(ROOT / "examples")
    for args, message in cases:  # in this process: `python cli.py` runs the same main()
        err = error_of(capsys, *args)
        assert message in err and "Traceback" not in err, (args, err[-2000:])
    assert not marker.exists()


def test_atomic_io_reads_through_the_safe_loader(tmp_path: Path):
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}, "x": Payload(str(tmp_path / "ran"))}, path)
    with pytest.raises(ConfigError, match="refused"):
        AtomicCheckpointIO().load_checkpoint(path)
    assert not (tmp_path / "ran").exists()


# --- bad data: named before training ------------------------------------------------------------------
def _image_folder(root: Path, per_class: int = 6) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


FOLDER = [
    "--data",
    "configs/data/image_folder.yaml",
    "--data.image_size=16",
    "--data.batch_size=4",
    "--model",
    "configs/model/cnn.yaml",
    "--model.backbone_kwargs.channels=[4, 8]",
    *TINY,
]


def test_an_unreadable_image_is_named_before_training(workdir: Path, capsys):
    root = _image_folder(workdir / "images")
    (root / "dog" / "broken.png").write_bytes(b"not a png at all")
    err = error_of(capsys, "fit", *FOLDER, f"--data.data_dir={root}")
    assert f"{root / 'dog' / 'broken.png'}: not a readable image" in err
    assert not (workdir / "runs").exists() or not list((workdir / "runs").rglob("*.ckpt"))


def test_an_empty_image_folder_is_named(workdir: Path, capsys):
    (workdir / "images").mkdir()
    err = error_of(capsys, "fit", *FOLDER, f"--data.data_dir={workdir / 'images'}")
    assert "ImageFolder" in err and str(workdir / "images") in err


def test_data_with_other_channels_than_the_checkpoint_is_refused(workdir: Path, capsys):
    root = _image_folder(workdir / "images")
    from cli import main

    main(["fit", *FOLDER, f"--data.data_dir={root}"])
    ckpt = next((workdir / "runs").rglob("last.ckpt"))
    err = error_of(capsys, "test", *FOLDER, f"--data.data_dir={root}", "--data.channels=1", f"--ckpt_path={ckpt}")
    assert (
        "the checkpoint's model takes inputs of shape (3, 16, 16) but the data (ImageFolder) gives (1, 16, 16)" in err
    )


def test_labels_outside_the_classes_are_named_before_training():
    from torch.utils.data import TensorDataset

    from datamodules.base import ZooDataModule
    from zoo.errors import DataError

    class Labelled(ZooDataModule):
        def _num_classes(self):
            return 3

        def build(self):
            x = torch.zeros(6, 2)
            return (
                TensorDataset(x, torch.tensor([0, 1, 2, 5, 1, -1])),
                TensorDataset(x[:2], torch.tensor([0, 1])),
                TensorDataset(x[:2], torch.tensor([0, 2])),
            )

    with pytest.raises(DataError, match=r"2 training labels fall outside 0..2 \(e.g. \[-1, 5\]\)"):
        Labelled().setup("fit")


def test_a_batch_larger_than_the_data_is_capped_before_training(workdir: Path, capsys):
    from cli import main

    wine = ["--config", "configs/experiments/breast_cancer_mlp.yaml", "--data.name=wine", *TINY]
    main(["fit", *wine, "--data.batch_size=200", "--data.drop_last=true"])
    # wine: 178 samples, 65 % (115) for training and 27 for validation, too few to select on: they join (142)
    assert "data.batch_size 200 -> 35, so that an epoch over 142 samples has 4 or more optimizer steps" in (
        capsys.readouterr().err
    )
    assert list((workdir / "runs").rglob("last.ckpt"))


def test_a_batch_larger_than_the_data_with_drop_last_is_named_in_python():
    from datamodules import SklearnTabular
    from zoo.errors import DataError

    with pytest.raises(DataError, match=r"data.batch_size=200 is larger than the training split \(115 samples\)"):
        SklearnTabular(name="wine", batch_size=200, drop_last=True).setup("fit")


def test_drop_last_drops_only_the_last_training_batch():
    from datamodules import SklearnTabular

    data = SklearnTabular(name="wine", batch_size=50, drop_last=True)
    data.setup("fit")
    assert [len(y) for _, y in data.train_dataloader()] == [50, 50]  # 115 samples: the last 15 dropped
    assert sum(len(y) for _, y in data.val_dataloader()) == len(data.val_set)  # evaluation keeps every sample


def test_an_epoch_never_ends_on_a_batch_of_one_sample(workdir: Path, caplog):
    # breast_cancer: 369 training samples = 4 x 92 + 1; the MLP recipe has batch norm, which cannot train on one
    # sample: PyTorch stopped the run at the end of the first epoch.
    from cli import main

    main(
        [
            "fit",
            "--config",
            "configs/experiments/breast_cancer_mlp.yaml",
            *TINY,
            "--trainer.limit_train_batches=1.0",
            "--data.batch_size=92",
        ]
    )
    assert "369 training samples per process make batches of 92 end on one of a single sample" in caplog.text
    assert list((workdir / "runs").rglob("last.ckpt"))


@pytest.mark.slow
def test_ddp_process_death_stops_the_other_within_a_minute_and_the_run_resumes(workdir: Path):
    ddp = [*RUN, "--trainer", "configs/trainer/ddp_cpu.yaml", "--trainer.max_epochs=3"]
    start = time.monotonic()
    died = run_zoo("fit", *ddp, *probe("SignalAt", epoch=1, batch=1, signal="KILL", rank=1), cwd=workdir, timeout=120)
    assert died.returncode == 1 and time.monotonic() - start < 60
    assert "zoo: error: another training process stopped" in died.stderr
    assert read_checkpoint(str(workdir / CKPTS.format(0) / "last.ckpt"))["epoch"] == 0
    resumed = run_zoo("fit", *ddp, "--ckpt_path=last", cwd=workdir, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_checkpoint(str(workdir / CKPTS.format(1) / "last.ckpt"))["epoch"] == 2
