"""Your own network as a backbone by class path (zoo.backbones.user): trained through `zoo fit`, checked against
the backbone contract when built, and never imported by a checkpoint unless the user names it."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY, run_zoo
from zoo.checkpoints import load_task, read_checkpoint
from zoo.errors import ConfigError
from zoo.registry import create_backbone

MODULE = "zoo_test_user_nets"  # a name no installed package has
NETS = '''
import math
import os

from torch import nn

if os.environ.get("IMPORT_MARKER"):  # tells the tests whether a command imported this module at all
    open(os.environ["IMPORT_MARKER"], "w").close()


class MyNet(nn.Module):
    """Two linear layers of my own."""

    def __init__(self, input_shape=(64,), width=32):
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU())
        self.body = nn.Sequential(nn.Linear(width, width), nn.ReLU())
        self.num_features = width

    def forward_features(self, x):
        return self.body(self.stem(x))

    def layer_groups(self):
        return {"stem": self.stem, "body": self.body}


class NoGroups(nn.Module):
    def __init__(self, input_shape=(64,)):
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), 8)
        self.num_features = 8

    def forward_features(self, x):
        return self.fc(x.flatten(1))


class WrongWidth(MyNet):
    def __init__(self, input_shape=(64,)):
        super().__init__(input_shape, width=16)
        self.num_features = 10


class GroupsMissOne(MyNet):
    def layer_groups(self):
        return {"stem": self.stem}


class Plain(nn.Module):
    def __init__(self, input_shape=(64,), hidden=12):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU())

    def forward(self, x):
        return self.net(x)


class PlainImage(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return self.conv(x)  # (B, 4, H', W'): not features
'''

CONFIG = f"""
trainer:
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: runs, name: mine}}
model:
  class_path: zoo.tasks.Classifier
  init_args:
    backbone: {MODULE}.MyNet
    backbone_kwargs: {{width: 16}}
data:
  class_path: datamodules.Digits
  init_args: {{batch_size: 32}}
"""


def _write_module(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{MODULE}.py").write_text(NETS)
    return folder


@pytest.fixture
def nets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The test module importable in this process; its name."""
    monkeypatch.syspath_prepend(str(_write_module(tmp_path / "src")))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    yield MODULE
    sys.modules.pop(MODULE, None)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A tiny `zoo fit` of MyNet on the digits, its module on PYTHONPATH: the working directory and env."""
    home = tmp_path_factory.mktemp("own_net")
    env = {"PYTHONPATH": str(_write_module(home / "src"))}
    (home / "own.yaml").write_text(CONFIG)
    done = run_zoo("fit", "--config", "own.yaml", *TINY, cwd=home, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return home, env


def test_own_network_trains_through_the_cli(fitted: tuple[Path, dict[str, str]]):
    home, _ = fitted
    run = home / "runs/mine/version_0"
    assert (run / "test_metrics.json").is_file()
    ckpt = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["backbone"] == f"{MODULE}.MyNet"
    assert ckpt["state_dict"]["backbone.model.stem.1.weight"].shape == (16, 64)  # the user's own module, trained
    assert "backbone.model.body.0.weight" in ckpt["state_dict"]


def test_checkpoint_never_imports_a_class_path_the_user_did_not_name(fitted, tmp_path: Path):
    home, env = fitted
    ckpt = str(home / "runs/mine/version_0/checkpoints/last.ckpt")
    out, marker = tmp_path / "preds.csv", tmp_path / "imported"
    images = str(ROOT / "examples/digits")
    refused = run_zoo(
        "predict",
        "--ckpt_path",
        ckpt,
        images,
        "--output",
        str(out),
        cwd=home,
        env={**env, "IMPORT_MARKER": str(marker)},
    )
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"the class path '{MODULE}.MyNet'" in refused.stderr and f"--backbone {MODULE}.MyNet" in refused.stderr
    assert not marker.exists() and not out.exists()  # refused before the module was imported

    done = run_zoo(
        "predict",
        "--backbone",
        f"{MODULE}.MyNet",
        "--ckpt_path",
        ckpt,
        images,
        "--output",
        str(out),
        cwd=home,
        env={**env, "IMPORT_MARKER": str(marker)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 10 and all(0 <= int(r["predicted"]) <= 9 for r in rows)
    assert marker.exists()


def test_config_naming_the_class_evaluates_its_checkpoint(fitted):
    home, env = fitted
    ckpt = str(home / "runs/mine/version_0/checkpoints/last.ckpt")
    done = run_zoo("test", "--config", "own.yaml", "--ckpt_path", ckpt, *TINY, cwd=home, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test/acc=" in done.stdout
    other = home / "other.yaml"  # a config naming another backbone: the checkpoint may not swap in its class
    other.write_text(CONFIG.replace(f"{MODULE}.MyNet", "mlp").replace("{width: 16}", "{}"))
    refused = run_zoo("test", "--config", str(other), "--ckpt_path", ckpt, *TINY, cwd=home, env=env)
    assert refused.returncode == 2 and "may not import code by itself" in refused.stderr, refused.stderr[-2000:]


def test_checkpoint_reader_needs_the_class_path_named(fitted, nets: str):
    home, _ = fitted
    ckpt = str(home / "runs/mine/version_0/checkpoints/last.ckpt")
    with pytest.raises(ConfigError, match="may not import code by itself"):
        read_checkpoint(ckpt)
    with pytest.raises(ConfigError, match="may not import code by itself"):  # a zoo/ backbone reads it too
        create_backbone(f"zoo/{ckpt}", input_shape=(1, 8, 8))
    assert MODULE not in sys.modules
    task = load_task(ckpt, trusted=[f"{MODULE}.MyNet"])
    assert task(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_export_takes_the_class_path_named(fitted, nets: str, tmp_path: Path):
    from zoo.commands.export import export_checkpoint

    home, _ = fitted
    ckpt = str(home / "runs/mine/version_0/checkpoints/last.ckpt")
    with pytest.raises(ConfigError, match=f"export\\) --backbone {MODULE}.MyNet"):
        export_checkpoint(ckpt, ["torch_export"], str(tmp_path))
    results = export_checkpoint(ckpt, ["torch_export", "safetensors"], str(tmp_path), backbone=f"{MODULE}.MyNet")
    assert {r.path.name for r in results} == {"model.pt2", "model.safetensors"}


def test_contract_violation_is_named_before_training(tmp_path: Path):
    env = {"PYTHONPATH": str(_write_module(tmp_path / "src"))}
    (tmp_path / "own.yaml").write_text(CONFIG.replace(".MyNet", ".NoGroups").replace("{width: 16}", "{}"))
    done = run_zoo("fit", "--config", "own.yaml", *TINY, cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "has num_features, forward_features but not layer_groups" in done.stderr
    assert "def layer_groups(self)" in done.stderr  # how to add it
    assert not (tmp_path / "runs/mine").exists()


def test_class_path_that_does_not_import_is_named(tmp_path: Path):
    (tmp_path / "own.yaml").write_text(CONFIG)  # the module is not on PYTHONPATH
    done = run_zoo("fit", "--config", "own.yaml", *TINY, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"no module named '{MODULE}'" in done.stderr and "PYTHONPATH" in done.stderr


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (f"{MODULE}.MyNett", f"module '{MODULE}' has no attribute 'MyNett'. Did you mean '{MODULE}.MyNet'?"),
        ("zoo_test_no_such_module.Net", "no module named 'zoo_test_no_such_module'"),
        ("resnet81", "unknown backbone 'resnet81'.*'resnet18'"),  # no dot: a registered name
        (f"{MODULE}.WrongWidth", "forward_features returns 16 features per sample but num_features is 10"),
        (f"{MODULE}.GroupsMissOne", "parameters in no layer group: body.0.weight"),
        (f"{MODULE}.PlainImage", r"forward must return features of shape \(batch, features\), got \(2, 4, 6, 6\)"),
    ],
)
def test_bad_backbones_are_named(nets: str, name: str, message: str):
    with pytest.raises(ConfigError, match=message):
        create_backbone(name, input_shape=(1, 8, 8))


def test_misspelt_argument_is_named(nets: str):
    with pytest.raises(ConfigError, match="does not take the argument 'widht'.*Did you mean 'width'"):
        create_backbone(f"{MODULE}.MyNet", input_shape=(1, 8, 8), widht=8)


def test_plain_module_is_one_layer_group_with_its_width_found(nets: str):
    from zoo.tasks import Classifier

    task = Classifier(backbone=f"{MODULE}.Plain", backbone_kwargs={"hidden": 12}, input_shape=(1, 8, 8), num_classes=3)
    assert task.backbone.num_features == 12
    assert list(task.named_layer_groups()) == ["backbone.all", "head"]
    assert task(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    assert {g["name"] for g in task.param_groups()} >= {"backbone.all", "backbone.all.no_decay", "head"}
