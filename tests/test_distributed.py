"""Distributed training through `zoo fit`: DDP with 2 CPU processes (gloo), as Lightning launches it, as
torchrun launches it and as scripts/slurm.sbatch launches it under srun; and the trainer recipes in
configs/trainer/ as valid Trainer settings (NCCL needs GPUs, so those are checked as settings only); the FSDP recipe on
2 CPU processes through a test-only subclass (tests/fsdp_probe.py), since Lightning runs FSDP on GPUs only.

The DDP runs use sklearn's digits: 180 validation and 360 test samples, split evenly over 2 processes, so
no sample is padded in twice and the synchronised metrics equal one process's over the whole set.
"""

from __future__ import annotations

import csv
import json
import socket
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml

from tests.conftest import ROOT, TINY, run_zoo
from tests.wandb_records import offline_runs

TRAINER_CONFIGS = ROOT / "configs" / "trainer"
FLAT_PARAMS = """
strategy:
  class_path: lightning.pytorch.strategies.FSDPStrategy
  dict_kwargs:
    use_orig_params: false
"""
NO_WANDB_LOGIN = {"WANDB_API_KEY": "", "WANDB_MODE": ""}  # with HOME set to the test's folder: offline
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
TWO_LOGGERS = """
trainer:
  logger:
    - class_path: lightning.pytorch.loggers.CSVLogger
      init_args: {save_dir: runs, name: ddp}
    - class_path: zoo.loggers.WandbLogger
      init_args: {save_dir: runs, project: zoo}
"""


def probe_args(out_dir: Path) -> list[str]:
    """`zoo fit` arguments adding tests.ddp_probe.RankProbe, which writes what each process saw."""
    return ["--trainer.callbacks+=tests.ddp_probe.RankProbe", f"--trainer.callbacks.out_dir={out_dir}"]


def read_probes(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def metrics_path(stdout: str) -> Path:
    (line,) = [line for line in stdout.splitlines() if line.startswith("metrics written to ")]
    return Path(line.removeprefix("metrics written to "))


# --- the recipes, as settings ----------------------------------------------------------------------
def _trainer_settings(name: str) -> tuple[dict[str, Any], Any]:
    """A trainer recipe validated against Trainer's signature (as the CLI does), and its strategy built."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import Trainer
    from lightning.pytorch.cli import LightningArgumentParser
    from lightning.pytorch.strategies import Strategy

    settings = yaml.safe_load((TRAINER_CONFIGS / name).read_text())
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(Trainer, "trainer")
    parser.parse_object({"trainer": settings})  # raises on an unknown key or a bad value
    strategy_parser = ArgumentParser(exit_on_error=False)
    strategy_parser.add_argument("--strategy", type=Strategy)
    strategy = strategy_parser.instantiate(strategy_parser.parse_object({"strategy": settings["strategy"]})).strategy
    return settings, strategy


def test_ddp_recipes_set_the_backend_and_devices():
    from lightning.pytorch.strategies import DDPStrategy

    settings, strategy = _trainer_settings("ddp_cpu.yaml")
    assert (settings["accelerator"], settings["devices"]) == ("cpu", 2)
    assert isinstance(strategy, DDPStrategy) and strategy._process_group_backend == "gloo"
    settings, strategy = _trainer_settings("ddp.yaml")
    assert settings["accelerator"] == "gpu" and strategy._process_group_backend == "nccl"
    settings, strategy = _trainer_settings("multinode.yaml")
    assert settings["num_nodes"] > 1 and isinstance(strategy, DDPStrategy)


def test_fsdp_recipe_wraps_the_zoo_transformer_blocks_in_bf16():
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from zoo.registry import create_backbone

    settings, strategy = _trainer_settings("fsdp.yaml")
    assert settings["precision"] == "bf16-mixed" and isinstance(strategy, FSDPStrategy)
    # Stated, not left to Lightning's default: a FineTuning schedule freezes part of a flat parameter.
    assert settings["strategy"]["dict_kwargs"]["use_orig_params"] is True and strategy.kwargs["use_orig_params"]
    assert strategy._state_dict_type == "full"  # one ordinary checkpoint file, as zoo test / predict read
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    # The classes named are the blocks the registry builds: renaming one would leave FSDP one giant unit.
    for backbone in (
        create_backbone("vit_micro", input_shape=(1, 8, 8)),
        create_backbone("transformer", input_shape=(16, 3)),
    ):
        wrapped = [m for m in backbone.modules() if type(m) in policy._module_classes]
        assert len(wrapped) >= 2, type(backbone).__name__


def test_fsdp_without_orig_params_is_refused_with_a_schedule_that_freezes(workdir: Path, capsys):
    # Before any process starts (here: before the missing GPU is noticed), naming the setting and the fix.
    from tests.test_cli import error_of

    (workdir / "flat.yaml").write_text(FLAT_PARAMS)
    recipe = ["--config", "configs/experiments/digits_vit.yaml", "--trainer", "configs/trainer/fsdp.yaml"]
    err = error_of(capsys, "fit", *recipe, "--trainer", "flat.yaml", "--finetuning.strategy=progressive", *TINY)
    assert "finetuning.strategy=progressive freezes part of the model" in err
    assert "set trainer.strategy.dict_kwargs.use_orig_params: true" in err
    # The recipe as it is passes the check; this machine has no GPU for it, which is the next error.
    err = error_of(capsys, "fit", *recipe, "--finetuning.strategy=progressive", *TINY)
    assert "use_orig_params" not in err and "the trainer settings cannot run here" in err


def test_the_sharded_freezing_check_looks_at_fsdp_and_freezing_schedules_only():
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from zoo.callbacks.finetuning import FineTuning
    from zoo.errors import ConfigError
    from zoo.run.preflight import check_sharded_freezing

    flat = FSDPStrategy(use_orig_params=False)
    check_sharded_freezing(flat, [FineTuning("full")])  # nothing frozen
    check_sharded_freezing(FSDPStrategy(), [FineTuning("feature_extraction")])  # Lightning's default: True
    check_sharded_freezing(DDPStrategy(), [FineTuning("progressive")])
    check_sharded_freezing("fsdp", [FineTuning("progressive")])  # by name: Lightning's defaults
    for schedule in ("feature_extraction", "freeze_then_unfreeze", "progressive", "milestones"):
        with pytest.raises(ConfigError, match=f"finetuning.strategy={schedule} freezes"):
            check_sharded_freezing(flat, [FineTuning(schedule, milestones={0: 1})])


@pytest.mark.slow
def test_the_fsdp_recipe_trains_a_progressive_schedule_on_two_shards(workdir: Path):
    # configs/trainer/fsdp.yaml as it is (bf16-mixed, one unit per ViT block, use_orig_params, full state dict)
    # on 2 CPU processes (tests/fsdp_probe.py: Lightning runs FSDP on GPUs only). Each process holds half of every
    # flat parameter; the schedule freezes the backbone's groups inside them and unfreezes the top one at epoch 1.
    result = run_zoo(
        "fit",
        "--config",
        "configs/experiments/digits_vit.yaml",
        "--trainer",
        "configs/trainer/fsdp.yaml",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy.class_path=tests.fsdp_probe.CPUFSDPStrategy",
        "--finetuning.strategy=progressive",
        "--finetuning.unfreeze_epoch=1",
        *TINY,
        "--trainer.max_epochs=2",
        "--test_after_fit=false",  # Lightning re-wraps badly for a test in the same Trainer (the README says)
        "--trainer.callbacks+=tests.fsdp_probe.ChangedGroups",
        f"--trainer.callbacks.out_dir={workdir / 'probe'}",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        seen = json.loads((workdir / "probe" / f"rank{rank}.json").read_text())
        assert (seen["world_size"], seen["strategy"]) == (2, "CPUFSDPStrategy")
        assert seen["units"] == 7  # the root and one per block (vit_micro: 6 blocks)
        # Epoch 0 trains the head alone; epoch 1 also the top backbone group; nothing frozen moved.
        assert seen["changed"] == {"0": ["head"], "1": ["backbone.norm", "head"]}
    # The checkpoint is an ordinary one (state_dict_type: full): `zoo test` reads it in one process, without FSDP.
    ckpt = workdir / "runs" / "digits_vit" / "version_0" / "checkpoints" / "last.ckpt"
    tested = run_zoo(
        "test", "--config", "configs/experiments/digits_vit.yaml", f"--ckpt_path={ckpt}", *TINY, cwd=workdir
    )
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "test/acc=" in tested.stdout


# --- one DDP run through `zoo fit`, read by the tests below -----------------------------------------
@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """`zoo fit` digits_cnn under ddp_cpu.yaml, 2 epochs, logging to CSV and W&B (offline), pictures on, and
    the best checkpoint tested after fit on the whole test set (both processes)."""
    workdir = tmp_path_factory.mktemp("ddp")
    (workdir / "configs").symlink_to(ROOT / "configs")
    (workdir / "loggers.yaml").write_text(TWO_LOGGERS)
    result = run_zoo(
        "fit",
        "--config",
        "configs/experiments/digits_cnn.yaml",
        "--config",
        "loggers.yaml",
        "--trainer",
        "configs/trainer/ddp_cpu.yaml",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2",
        "--trainer.log_every_n_steps=1",
        *QUIET,
        *probe_args(workdir / "probe"),
        cwd=workdir,
        env={"HOME": str(workdir), **NO_WANDB_LOGIN},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return SimpleNamespace(workdir=workdir, result=result, probes=read_probes(workdir / "probe"))


@pytest.mark.slow
def test_ddp_processes_train_on_different_shards_and_agree_on_metrics_and_weights(ddp_run):
    rank0, rank1 = ddp_run.probes
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["first_labels"] != rank1["first_labels"]  # each process its own shard of the data
    # val/loss is logged with sync_dist and the torchmetrics sync themselves: one value per epoch everywhere,
    # so the checkpoint monitor and early stopping decide the same on both processes.
    assert sorted(rank0["val"]) == ["0", "1"]
    assert rank0["val"] == rank1["val"]
    assert set(rank0["val"]["1"]) >= {"val/loss", "val/acc", "val/f1"}
    # Gradients were averaged every step: both processes end with the same weights (BatchNorm buffers too).
    weights = [torch.load(ddp_run.workdir / "probe" / f"rank{r}.pt") for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
def test_ddp_writes_one_run_folder_with_one_best_and_one_last_checkpoint(ddp_run):
    runs = ddp_run.workdir / "runs" / "ddp"
    assert [p.name for p in runs.iterdir()] == ["version_0"]
    ckpts = sorted(p.name for p in (runs / "version_0" / "checkpoints").iterdir())
    assert len(ckpts) == 2 and ckpts[1] == "last.ckpt" and ckpts[0].startswith("best-epoch=")
    # The checkpoint holds the trained weights (rank 0's, identical to rank 1's).
    last = torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    final = torch.load(ddp_run.workdir / "probe" / "rank0.pt")
    assert all(torch.equal(last["state_dict"][k], final[k]) for k in final)
    # The best is the epoch with the lowest synchronised val/loss.
    val_losses = {int(e): m["val/loss"] for e, m in ddp_run.probes[0]["val"].items()}
    assert ckpts[0].startswith(f"best-epoch={min(val_losses, key=val_losses.get)}-")
    # The CSV holds each epoch's val/loss once, the synchronised value.
    import csv

    rows = list(csv.DictReader((runs / "version_0" / "metrics.csv").open()))
    logged = {int(r["epoch"]): float(r["val/loss"]) for r in rows if r.get("val/loss")}
    assert logged == pytest.approx(val_losses, rel=1e-6)


@pytest.mark.slow
def test_ddp_writes_the_layer_statistics_and_the_diagnosis_once_from_rank_zero(ddp_run):
    run = ddp_run.workdir / "runs" / "ddp" / "version_0"
    with open(run / "layer_stats.csv", newline="") as f:
        rows = [(int(row["step"]), row["layer"]) for row in csv.DictReader(f)]
    assert len(rows) == len(set(rows)), "a step's layer written twice"
    assert sorted({step for step, _ in rows}) == list(range(6))  # 2 epochs of 3 steps, each logged
    assert (run / "diagnosis.json").is_file() and ddp_run.result.stdout.count("diagnosis of ") == 1


@pytest.mark.slow
def test_ddp_logs_one_wandb_run_from_rank_zero(ddp_run):
    (run,) = offline_runs(ddp_run.workdir / "runs")
    val_losses = [m["val/loss"] for _, m in sorted(ddp_run.probes[0]["val"].items())]
    assert run.series("val/loss") == pytest.approx(val_losses, rel=1e-6)
    # One validation confusion matrix and one panel of samples per epoch: drawn by rank 0 only.
    assert len(run.series("pictures/val_confusion_matrix")) == 2
    assert len(run.series("pictures/val_samples")) == 2
    assert run.config["backbone"] == "cnn"  # the task's hyperparameters, as every logger gets them
    ckpt = ddp_run.workdir / "runs" / "ddp" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["wandb_run_id"] == run.id


@pytest.mark.slow
def test_ddp_tests_the_best_checkpoint_after_fit_and_writes_metrics_once(ddp_run):
    stdout = ddp_run.result.stdout  # both processes print here: Lightning's second one inherits stdout
    assert stdout.count("metrics written to ") == 1
    written = json.loads((ddp_run.workdir / metrics_path(stdout)).read_text())
    rank0, rank1 = ddp_run.probes
    model_metrics = {k: v for k, v in written.items() if not k.startswith("baseline/")}
    assert rank0["test"] == rank1["test"] == pytest.approx(model_metrics, rel=1e-6)
    assert set(written) >= {"test/loss", "test/acc", "baseline/majority/acc"}  # baselines: rank 0's, written once
    # The test confusion matrix counts each of the 360 test samples once, gathered from both processes.
    confusion = json.loads((ddp_run.workdir / "runs" / "ddp" / "version_0" / "test_confusion.json").read_text())
    assert sum(map(sum, confusion["matrix"])) == 360


@pytest.mark.slow
def test_checkpoint_written_under_ddp_tests_in_one_process_with_the_same_metrics(ddp_run):
    (best,) = (ddp_run.workdir / "runs" / "ddp" / "version_0" / "checkpoints").glob("best-*.ckpt")
    result = run_zoo(
        "test",
        "--config",
        "configs/experiments/digits_cnn.yaml",
        "--ckpt_path",
        str(best),
        "--trainer.logger=false",
        *QUIET,
        cwd=ddp_run.workdir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    single = json.loads((ddp_run.workdir / metrics_path(result.stdout)).read_text())
    under_ddp = json.loads((ddp_run.workdir / metrics_path(ddp_run.result.stdout)).read_text())
    assert single["test/acc"] == under_ddp["test/acc"]
    assert single["test/loss"] == pytest.approx(under_ddp["test/loss"], rel=1e-5)


# What a finished run leaves behind: the gloo worker threads and the TCPStore server, at exit.
AFTER_MAIN = """
import os, sys
import torch.distributed as dist
from cli import main

main(sys.argv[1:])
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
print("left after main:", dist.is_initialized(), sorted(n for n in names if "gloo" in n or "tcpstore" in n))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc (Linux)")
def test_a_finished_ddp_run_destroys_its_process_group_before_exit(workdir: Path):
    # Lightning leaves a gloo group to interpreter shutdown, where its threads can abort the process (SIGABRT).
    import os
    import subprocess

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            AFTER_MAIN,
            "fit",
            "--config",
            "configs/experiments/digits_cnn.yaml",
            *TINY,
            "--trainer.strategy=ddp",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
        ],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 1/1" in result.stderr  # a process group was set up (gloo, one process)
    assert "left after main: False []" in result.stdout, result.stdout[-2000:]


# --- the launchers ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_launches_the_ddp_cpu_recipe(workdir: Path):
    import subprocess

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "cli.py"),
            "fit",
            "--config",
            "configs/experiments/digits_cnn.yaml",
            "--trainer",
            "configs/trainer/ddp_cpu.yaml",
            *TINY,
            *probe_args(workdir / "probe"),
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stderr  # 2 processes in one group: torchrun's, not 2 more each
    rank0, rank1 = read_probes(workdir / "probe")
    assert rank0["world_size"] == rank1["world_size"] == 2 and rank0["val"] == rank1["val"]
    assert [p.name for p in (workdir / "runs" / "digits_cnn").iterdir()] == ["version_0"]
    assert result.stdout.count("metrics written to ") == 1


FAKE_SRUN = """#!/bin/bash
# Stands in for srun on one node: SLURM_NTASKS copies of the command, each with the variables srun sets.
pids=()
for ((rank = 0; rank < SLURM_NTASKS; rank++)); do
  SLURM_PROCID=$rank SLURM_LOCALID=$rank SLURM_NODEID=0 "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_slurm_script_trains_with_ddp_under_srun(workdir: Path):
    """scripts/slurm.sbatch itself, with a stand-in srun starting 2 tasks on this machine: Lightning's
    SLURMEnvironment must accept the devices / num_nodes the script sets, and a W&B run is named after
    the job, so a requeued job continues it."""
    import os
    import subprocess

    for name in ("cli.py", "scripts"):
        (workdir / name).symlink_to(ROOT / name)
    (workdir / "bin").mkdir()
    (workdir / "bin" / "srun").write_text(FAKE_SRUN)
    (workdir / "bin" / "srun").chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "zoo",
        "SLURM_NNODES": "1",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NODELIST": "localhost",
        "SLURM_CPUS_PER_TASK": "1",
    }
    env = {
        **os.environ,
        **slurm,
        **NO_WANDB_LOGIN,
        "HOME": str(workdir),
        "MASTER_PORT": str(_free_port()),
        "PATH": f"{workdir / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    env.pop("WANDB_RUN_ID", None)
    result = subprocess.run(
        [
            "bash",
            "scripts/slurm.sbatch",
            "configs/experiments/digits_cnn.yaml",
            "--trainer",
            "configs/trainer/ddp_cpu.yaml",
            "--trainer.logger",
            "configs/logger/wandb.yaml",
            *TINY,
            *probe_args(workdir / "probe"),
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SLURM auto-requeueing enabled" in result.stderr  # Lightning saw a SLURM job, not a local run
    rank0, rank1 = read_probes(workdir / "probe")
    assert rank0["world_size"] == rank1["world_size"] == 2 and rank0["val"] == rank1["val"]
    (run,) = offline_runs(workdir / "runs")
    assert run.id == "slurm-4242"
    assert (workdir / "runs" / "zoo" / "slurm-4242" / "checkpoints" / "last.ckpt").is_file()
