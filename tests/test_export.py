"""`zoo export`: each format loads again and computes what the PyTorch model does; the card; the errors a user sees."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from cli import main as zoo_main
from tests.conftest import run_zoo, tiny_fit
from zoo.backbones.base import Backbone
from zoo.checkpoints import CONFIG_KEY, load_task
from zoo.commands.export import export_checkpoint
from zoo.registry import _REGISTRY, register_backbone

ort = pytest.importorskip("onnxruntime", reason="zoo export's ONNX checks need the export extra")
pytest.importorskip("onnxscript", reason="torch.onnx.export needs onnxscript")

CLASSES = ["cat", "dog", "bird"]
SEQ = (6, 3)  # (T, C)
CASES: dict[str, dict[str, Any]] = {
    "mlp": {"backbone": "mlp", "input_shape": (8,), "backbone_kwargs": {"hidden_sizes": [16], "norm": "batch"}},
    "resnet18": {
        "backbone": "resnet18",
        "input_shape": (1, 8, 8),
        "backbone_kwargs": {"widths": [4, 8, 8, 8], "stem": "small"},
    },
    "vit_micro": {
        "backbone": "vit_micro",
        "input_shape": (1, 8, 8),
        "backbone_kwargs": {"embed_dim": 16, "depth": 1, "num_heads": 2},
    },
    "transformer": {
        "backbone": "transformer",
        "input_shape": SEQ,
        "backbone_kwargs": {"d_model": 16, "num_heads": 2, "num_layers": 1, "dim_feedforward": 16, "pool": "mean"},
    },
    "transformer_tokens": {
        "backbone": "transformer",
        "input_shape": (6,),
        "vocab_size": 20,
        "backbone_kwargs": {
            "d_model": 16,
            "num_heads": 2,
            "num_layers": 1,
            "dim_feedforward": 16,
            "positional": "learned",
        },
    },
    "fcn1d": {"backbone": "fcn1d", "input_shape": SEQ, "backbone_kwargs": {"filters": [4, 8], "kernel_sizes": [3, 3]}},
}


def _checkpoint(run_dir: Path, with_config: bool = True, **hparams: Any) -> Path:
    """A checkpoint shaped like `zoo fit`'s (random weights, nothing trained), beside a test_metrics.json."""
    from zoo.tasks import Classifier

    hparams = {"_class_path": "zoo.tasks.Classifier", "pretrained": False, "num_classes": 3, **hparams}
    torch.manual_seed(0)
    task = Classifier(**{k: v for k, v in hparams.items() if k != "_class_path"})
    for m in task.modules():  # running statistics away from (0, 1), so eval-mode batch norm is exercised too
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ckpt: dict[str, Any] = {"epoch": 3, "global_step": 12, "state_dict": task.state_dict(), "hyper_parameters": hparams}
    if with_config:
        config = {
            "model": {"class_path": "zoo.tasks.Classifier"},
            "data": {"class_path": "datamodules.Digits", "init_args": {"batch_size": 4}},
        }
        ckpt[CONFIG_KEY] = yaml.safe_dump(config)
        ckpt["Digits"] = {"class_names": CLASSES, "stats": {"mean": 0.5}}  # the datamodule's state
    path = run_dir / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    (run_dir / "test_metrics.json").write_text(json.dumps({"test/acc": 0.75, "test/loss": 0.5}))
    return path


def _batch(hparams: dict[str, Any], size: int = 5) -> tuple[torch.Tensor, ...]:
    """New inputs, unlike the exporter's own checks: 5 samples; sequences padded to lengths T, 2, 1, ..."""
    shape = hparams["input_shape"]
    if hparams["backbone"] not in ("transformer", "fcn1d"):
        return (torch.randn(size, *shape),)
    steps = shape[0]
    vocab = hparams.get("vocab_size")
    x = torch.randint(1, vocab, (size, steps)) if vocab else torch.randn(size, *shape)
    mask = torch.arange(steps) < torch.tensor([steps, 2, 1, steps - 1, 3][:size]).unsqueeze(1)
    return x, mask


@pytest.mark.parametrize("case", list(CASES))
def test_every_format_loads_again_and_matches_pytorch(case: str, tmp_path: Path) -> None:
    hparams = CASES[case]
    with_config = case != "fcn1d"  # checkpoints from before `zoo fit` saved its config still export
    ckpt = _checkpoint(tmp_path / "run", with_config=with_config, **hparams)
    results = export_checkpoint(str(ckpt))
    out = tmp_path / "run" / "export"
    assert [r.format for r in results] == ["torch_export", "onnx", "safetensors", "card"]
    assert all(r.path.parent == out and r.path.stat().st_size > 0 for r in results)
    assert all(r.max_abs_diff < 1e-4 for r in results[:2])

    task = load_task(str(ckpt))
    inputs = _batch(hparams)
    with torch.no_grad():
        expected = task({"x": inputs[0], "mask": inputs[1]} if len(inputs) == 2 else inputs[0])
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    torch.testing.assert_close(torch.from_numpy(session.run(None, feeds)[0]), expected, rtol=1e-4, atol=1e-4)
    program = torch.export.load(str(out / "model.pt2")).module()
    torch.testing.assert_close(program(*inputs), expected, rtol=1e-5, atol=1e-5)

    from safetensors import safe_open
    from safetensors.torch import load_file

    weights, state = load_file(str(out / "model.safetensors")), task.state_dict()
    assert weights.keys() == state.keys()
    assert all(torch.equal(weights[k], state[k]) for k in state)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["task"] == "zoo.tasks.Classifier" and meta["backbone"] == hparams["backbone"]
    assert meta["num_classes"] == "3" and ("config" in meta) == with_config

    card = (out / "MODEL_CARD.md").read_text()
    assert f"backbone {hparams['backbone']}" in card and "| test/acc | 0.7500 |" in card
    assert "| onnx | model.onnx |" in card and "max abs diff" in card
    if with_config:
        assert "Classes (3): cat, dog, bird" in card and "datamodules.Digits" in card
    else:
        assert "holds no resolved config" in card and "Classes: not recorded" in card


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory of one tiny `zoo fit` of the digits CNN: a real checkpoint, config and metrics."""
    return tiny_fit(tmp_path_factory, "digits_cnn")


def test_cli_exports_a_fitted_run_and_prints_the_checks(fitted: Path) -> None:
    run = Path("runs/digits_cnn/version_0")
    done = run_zoo("export", "--ckpt_path", str(run / "checkpoints/last.ckpt"), cwd=fitted)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    onnx_line = next(line for line in lines if "model.onnx" in line)
    assert str(run / "export") in onnx_line and "kB" in onnx_line and "max abs diff" in onnx_line
    assert float(onnx_line.split("max abs diff ")[1].split()[0]) < 1e-4
    assert any("model.safetensors" in line for line in lines) and any("MODEL_CARD.md" in line for line in lines)
    card = (fitted / run / "export/MODEL_CARD.md").read_text()
    metrics = json.loads((fitted / run / "test_metrics.json").read_text())
    assert "Classes (10): 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in card and "datamodules.Digits" in card
    assert f"| test/acc | {metrics['test/acc']:.4f} |" in card
    assert "backbone.stage0" in card and "```yaml" in card and "max_epochs: 1" in card


class BranchyBackbone(Backbone):
    """Test-only: its forward branches on a tensor's value, which no graph exporter can trace."""

    def __init__(self, input_shape: tuple[int, ...] = (4,)) -> None:
        super().__init__()
        self.fc = nn.Linear(input_shape[0], 4)
        self.num_features = 4

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)

    def layer_groups(self) -> dict[str, nn.Module]:
        return {"fc": self.fc}


@pytest.fixture
def branchy() -> Any:
    register_backbone("test_export_branchy", family="test", input_kind="vector")(BranchyBackbone)
    yield "test_export_branchy"
    _REGISTRY.pop("test_export_branchy")


def test_untraceable_model_is_a_clear_error_and_safetensors_still_work(branchy, tmp_path, capsys) -> None:
    ckpt = str(_checkpoint(tmp_path / "run", backbone=branchy, input_shape=(4,)))
    with pytest.raises(SystemExit) as exit_info:
        zoo_main(["export", "--ckpt_path", ckpt, "--formats", "onnx"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"zoo: error: cannot export Classifier with backbone '{branchy}' to onnx: torch.export")
    assert "data-dependent" in err and "if x.sum() > 0:" in err and "test_export.py" in err  # the reason and where
    assert "--formats safetensors card" in err and "safetensors always does" in err
    assert not (tmp_path / "run/export/model.onnx").exists()

    zoo_main(["export", "--ckpt_path", ckpt, "--formats", "safetensors", "card"])
    assert "model.safetensors" in capsys.readouterr().out
    assert (tmp_path / "run/export/MODEL_CARD.md").is_file()


def test_bad_checkpoint_or_format_exits_with_code_2(workdir: Path, capsys) -> None:
    done = run_zoo("export", "--ckpt_path", "missing.ckpt", cwd=workdir)
    assert done.returncode == 2 and done.stderr.strip() == "zoo: error: checkpoint missing.ckpt: no such file"
    (workdir / "corrupt.ckpt").write_bytes(b"PK\x03\x04 not a zip archive")
    with pytest.raises(SystemExit) as exit_info:
        zoo_main(["export", "--ckpt_path", "corrupt.ckpt"])
    assert exit_info.value.code == 2
    assert "zoo: error: checkpoint corrupt.ckpt: cannot read it" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        zoo_main(["export", "--ckpt_path", "corrupt.ckpt", "--formats", "onnx", "tflite"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
