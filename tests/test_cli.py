"""The `zoo` command as a user meets it: training runs, metrics files, listing, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli import main
from tests.conftest import ROOT, TINY, run_zoo
from zoo.arguments import HELP_HINT

DIGITS_CNN = ["--config", "configs/experiments/digits_cnn.yaml"]


def zoo(*args: str) -> None:
    main(list(args))


def error_of(capsys: pytest.CaptureFixture, *args: str) -> str:
    """Run the CLI expecting a usage error: exit code 2, returns what it printed to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        zoo(*args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_fit_writes_checkpoints_config_and_test_metrics(workdir: Path) -> None:
    zoo("fit", *DIGITS_CNN, *TINY)
    run = workdir / "runs" / "digits_cnn" / "version_0"
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    assert (run / "config.yaml").read_text().count("class_path: zoo.tasks.Classifier") == 1
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert set(metrics) == {"test/acc", "test/f1", "test/loss"}
    assert 0.0 <= metrics["test/acc"] <= 1.0
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss_step", "val/loss", "val/acc", "val/f1"} <= set(header)


def test_data_facts_are_linked_into_the_model(workdir: Path) -> None:
    zoo("fit", *DIGITS_CNN, *TINY, "--test_after_fit=false")
    ckpt = torch.load(workdir / "runs/digits_cnn/version_0/checkpoints/last.ckpt", weights_only=False)
    hparams = ckpt["hyper_parameters"]
    assert hparams["num_classes"] == 10
    assert tuple(hparams["input_shape"]) == (1, 8, 8)
    assert not (workdir / "runs/digits_cnn/version_0/test_metrics.json").exists()


def test_test_and_validate_from_checkpoint_write_metrics_json(workdir: Path) -> None:
    zoo("fit", *DIGITS_CNN, *TINY)
    ckpt = workdir / "runs/digits_cnn/version_0/checkpoints/last.ckpt"
    zoo("test", *DIGITS_CNN, "--ckpt_path", str(ckpt), *TINY)
    zoo("validate", *DIGITS_CNN, "--ckpt_path", str(ckpt), *TINY)
    test_metrics = json.loads((workdir / "runs/digits_cnn/version_1/test_metrics.json").read_text())
    val_metrics = json.loads((workdir / "runs/digits_cnn/version_2/val_metrics.json").read_text())
    assert "test/acc" in test_metrics and "val/acc" in val_metrics


def test_config_groups_compose_with_overrides(workdir: Path) -> None:
    zoo(
        "fit",
        "--data",
        "configs/data/breast_cancer.yaml",
        "--model",
        "configs/model/mlp.yaml",
        "--trainer",
        "configs/trainer/default.yaml",
        "--model.init_args.label_smoothing=0.1",
        "--trainer.logger.init_args.name=bc",
        *TINY,
    )
    config = (workdir / "runs/bc/version_0/config.yaml").read_text()
    assert "name: breast_cancer" in config and "label_smoothing: 0.1" in config
    metrics = json.loads((workdir / "runs/bc/version_0/test_metrics.json").read_text())
    assert "test/auroc" in metrics  # binary data -> binary metrics


def test_regression_config_reports_regression_metrics(workdir: Path) -> None:
    zoo("fit", "--config", "configs/experiments/diabetes_mlp.yaml", *TINY)
    metrics = json.loads((workdir / "runs/diabetes_mlp/version_0/test_metrics.json").read_text())
    assert set(metrics) == {"test/loss", "test/mae", "test/rmse", "test/r2"}


def test_print_config_resolves_without_training(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        zoo("fit", *DIGITS_CNN, "--print_config")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "class_path: datamodules.Digits" in out and "backbone: cnn" in out
    assert not (workdir / "runs").exists()


def test_typo_in_config_key_names_key_and_close_match(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    err = error_of(capsys, "fit", *DIGITS_CNN, "--model.init_args.lable_smoothing=0.1")
    assert "lable_smoothing" in err and "Did you mean 'label_smoothing'" in err
    assert not (workdir / "runs").exists()  # nothing trained


def test_typo_in_yaml_file_names_key(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    bad = workdir / "bad.yaml"
    bad.write_text((ROOT / "configs/experiments/digits_cnn.yaml").read_text().replace("max_epochs", "max_epoch"))
    err = error_of(capsys, "fit", "--config", str(bad))
    assert "max_epoch" in err and "Did you mean 'max_epochs'" in err


def test_typo_in_a_command_line_option_names_the_close_match(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    err = error_of(capsys, "fit", *DIGITS_CNN, "--trainer.max_epohcs=1")
    assert "unrecognized arguments: --trainer.max_epohcs=1" in err and "Did you mean --trainer.max_epochs " in err


def test_only_errors_about_keys_point_to_help(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    # --help lists the keys and their types: it helps with a mistyped key, not with data or a backbone's name.
    err = error_of(capsys, "fit", *DIGITS_CNN, "--trainer.max_epohcs=1")
    assert err.rstrip().endswith(HELP_HINT)
    err = error_of(capsys, "fit", *DIGITS_CNN, "--data.batch_size=many")
    assert err.rstrip().endswith(HELP_HINT)
    err = error_of(capsys, "fit", *DIGITS_CNN, "--data.init_args.batch_size=0")  # a DataError
    assert err.rstrip() == "zoo: error: data.batch_size=0 must be at least 1"
    err = error_of(capsys, "fit", *DIGITS_CNN, "--model.init_args.backbone=cnnn")  # a ConfigError
    assert "unknown backbone 'cnnn'" in err and "--help" not in err


def test_wrong_type_names_key(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    err = error_of(capsys, "fit", *DIGITS_CNN, "--data.batch_size=many")
    assert "batch_size" in err and "int" in err


def test_unknown_backbone_suggests_close_names(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    err = error_of(capsys, "fit", *DIGITS_CNN, "--model.init_args.backbone=cnnn")
    assert "unknown backbone 'cnnn'" in err and "Did you mean 'cnn'" in err


def test_unknown_backbone_argument_names_it(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    err = error_of(capsys, "fit", *DIGITS_CNN, "--model.init_args.backbone_kwargs.chanels=[8]")
    assert "'chanels'" in err and "Did you mean 'channels'" in err


def test_num_classes_disagreeing_with_data_is_refused(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    err = error_of(capsys, "fit", *DIGITS_CNN, "--data.init_args.num_classes=5")
    assert "num_classes=5" in err and "10 classes" in err
    err = error_of(capsys, "fit", *DIGITS_CNN, "--model.init_args.num_classes=5")
    assert "5 classes" in err and "has 10" in err


def test_classifier_on_regression_data_is_refused(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    err = error_of(capsys, "fit", "--data", "configs/data/diabetes.yaml", "--model", "configs/model/mlp.yaml")
    assert "Regressor" in err


def test_missing_dataset_files_offline_say_where_to_put_them(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    err = error_of(
        capsys,
        "fit",
        "--data",
        "configs/data/mnist.yaml",
        "--data.download=false",
        "--model",
        "configs/model/cnn.yaml",
        *TINY,
    )
    assert str(workdir / "data" / "MNIST" / "raw") in err
    assert "train-images-idx3-ubyte" in err and "--data.download true" in err


def test_models_lists_backbones_with_family_params_and_input(capsys: pytest.CaptureFixture) -> None:
    zoo("models")
    out = capsys.readouterr().out
    from zoo.registry import create_backbone, list_backbones

    for name in list_backbones():
        params = sum(p.numel() for p in create_backbone(name).parameters())
        assert name in out and f"{params:,}" in out
    assert "image" in out and "vector" in out


def test_models_pattern_filters_and_unmatched_pattern_fails(capsys: pytest.CaptureFixture) -> None:
    zoo("models", "ml*")
    out = capsys.readouterr().out
    assert "mlp" in out and "cnn" not in out
    with pytest.raises(SystemExit) as exit_info:
        zoo("models", "nothing*")
    assert exit_info.value.code == 2
    assert "no registered backbone matches" in capsys.readouterr().err


def test_console_script_is_the_same_program_as_cli_py(tmp_path: Path) -> None:
    # The console script sits beside this interpreter, whether or not the venv is activated.
    script = Path(sys.executable).parent / "zoo"
    assert script.exists(), "the `zoo` console script is not installed (pip install -e .)"

    by_script = subprocess.run([script, "models", "c*"], capture_output=True, text=True, cwd=tmp_path)
    by_file = run_zoo("models", "c*", cwd=tmp_path)
    assert by_script.returncode == by_file.returncode == 0
    assert by_script.stdout == by_file.stdout and "cnn" in by_script.stdout


def test_help_lists_commands(tmp_path: Path) -> None:
    result = run_zoo("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("fit", "validate", "test", "predict", "models"):
        assert command in result.stdout


def test_zoo_alone_prints_the_help_and_an_error(tmp_path: Path) -> None:
    result = run_zoo(cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    help_text = run_zoo("--help", cwd=tmp_path).stdout
    assert result.stderr.startswith(help_text)  # every command, the zoo's own too
    assert "lr-find" in help_text and "export" in help_text
    assert result.stderr.endswith("\nzoo: error: no command given; choose one above, e.g. zoo fit --config CONFIG\n")


def _project_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_version_names_the_zoo_torch_and_lightning_without_importing_torch() -> None:
    from importlib import metadata

    script = "import sys, cli; cli.main(['--version']); print('torch imported:', 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"zoo {_project_version()}",
        f"torch {metadata.version('torch')}",
        f"lightning {metadata.version('lightning')}",
        "torch imported: False",
    ]
    assert torch.__version__.startswith(metadata.version("torch"))


def test_version_of_a_source_tree_that_is_not_installed(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from importlib import metadata

    installed = metadata.version

    def version(name: str) -> str:
        if name == "zoo":
            raise metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(metadata, "version", version)
    zoo("--version")
    assert capsys.readouterr().out.splitlines()[0] == f"zoo {_project_version()}"


def test_a_run_prints_no_lightning_tips_warnings_or_version_number(workdir: Path) -> None:
    shown = ["--trainer.enable_progress_bar=true", "--trainer.enable_model_summary=true"]
    result = run_zoo("fit", "--config", "configs/experiments/digits_mlp.yaml", *TINY, *shown, cwd=workdir)
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    assert "Trainable params" in said and "Epoch 0/0" in said  # the summary and the progress bar are there
    for noise in ("litlogger", "Tip:", "already configured with model summary", "LeafSpec", "v_num"):
        assert noise not in said


def test_predict_returns_class_probabilities(workdir: Path) -> None:
    from cli import ZooCLI

    zoo("fit", *DIGITS_CNN, *TINY)
    ckpt = workdir / "runs/digits_cnn/version_0/checkpoints/last.ckpt"
    cli = ZooCLI(args=[*DIGITS_CNN, *TINY], run=False)
    batches = cli.trainer.predict(cli.model, datamodule=cli.datamodule, ckpt_path=str(ckpt))
    probs = torch.cat(batches)
    assert probs.shape[1] == 10
    torch.testing.assert_close(probs.sum(1), torch.ones(len(probs)))


# --- preprocessing follows a pretrained backbone -------------------------------------------------------
def test_image_data_takes_the_timm_backbones_size_channels_and_statistics(workdir: Path) -> None:
    from cli import ZooCLI
    from tests.test_datamodules_images import write_mnist

    write_mnist(workdir / "data", "MNIST")
    cli = ZooCLI(
        args=[
            "--data=MNIST",
            "--data.download=false",
            "--model=Classifier",
            "--model.backbone=timm/test_resnet",
            "--model.pretrained=false",
            "--trainer.logger=false",
        ],
        run=False,
    )
    dm = cli.datamodule
    assert (dm.image_size, dm.channels, dm.mean, dm.std) == (160, 3, [0.5] * 3, [0.5] * 3)  # timm's test_resnet cfg
    assert cli.model.input_shape == (3, 160, 160)
    dm.setup()
    assert dm.train_set[0][0].shape == (3, 160, 160)
    # what the user sets wins
    cli = ZooCLI(
        args=[
            "--data=MNIST",
            "--data.download=false",
            "--data.image_size=64",
            "--model=Classifier",
            "--model.backbone=timm/test_resnet",
            "--model.pretrained=false",
            "--trainer.logger=false",
        ],
        run=False,
    )
    assert cli.datamodule.image_size == 64 and cli.datamodule.mean == [0.5] * 3


def test_text_data_takes_the_hf_backbones_tokenizer(workdir: Path) -> None:
    from cli import ZooCLI
    from tests.test_datamodules_text import ROWS, minilm_dir, write

    train = write(workdir / "train.csv", ROWS)
    cli = ZooCLI(
        args=[
            "--data=TextClassification",
            f"--data.train_file={train}",
            "--model=Classifier",
            "--model.backbone=hf/sentence-transformers/all-MiniLM-L6-v2",
            "--model.pretrained=false",
            "--trainer.logger=false",
        ],
        run=False,
    )
    assert Path(cli.datamodule.tokenizer) == Path(minilm_dir())
    assert cli.datamodule.vocab_size == 30522 and cli.model.backbone.num_features == 384
