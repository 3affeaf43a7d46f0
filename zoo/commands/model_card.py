"""The model card `zoo export` writes: architecture, data, metrics, the exports' checks and how to load each."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import yaml

from zoo.checkpoints import CONFIG_KEY, class_names, datamodule_state, run_config
from zoo.commands.exported import (
    CHECK_BATCHES,
    Exported,
    ModelInputs,
    check_text,
    init_kwargs,
    plain,
    size_text,
    vocab_size,
)
from zoo.run.files import run_folder


def _brief(value: Any) -> Any:
    """Long lists and dicts (a vocabulary) as their length, so the card stays readable."""
    if isinstance(value, (list, dict)) and len(value) > 20:
        return f"<{len(value)} entries>"
    return {k: _brief(v) for k, v in value.items()} if isinstance(value, dict) else value


def _io_lines(task: Any, inputs: ModelInputs) -> list[str]:
    from zoo.tasks import Autoencoder, Classifier, Regressor

    x = inputs.example[0]
    dtype = str(x.dtype).replace("torch.", "")
    if len(inputs.names) == 1:
        shape = ", ".join(map(str, x.shape[1:]))
        lines = [f"- Input `x`: {dtype} `(B, {shape})`, preprocessed as the datamodule does (below); B is dynamic"]
    else:
        rest = "".join(f", {d}" for d in x.shape[2:])
        ids = "" if x.is_floating_point() else f" token ids below {vocab_size(task)} (0 is padding)"
        lines = [
            f"- Inputs `x`: {dtype}{ids} `(B, T{rest})` and `mask`: bool `(B, T)`, True at real steps (padding "
            f"at the end); B and T are dynamic, T at most {inputs.max_steps}"
        ]
    if isinstance(task, Classifier):
        output = f"logits `(B, {task.num_classes})`; their softmax is the class probabilities"
    elif isinstance(task, Regressor):
        output = (
            f"standardised predictions `(B, {task.num_targets})`: times {task.target_std.tolist()} plus "
            f"{task.target_mean.tolist()} (target std and mean) gives the data's units"
        )
    elif isinstance(task, Autoencoder):
        output = f"the reconstruction `(B, {', '.join(map(str, task.input_shape))})`"
    else:
        output = "the task's forward output"
    return lines + [f"- Output `output`: {output}"]


def _how_to_load(ckpt_path: str, ckpt: dict[str, Any], inputs: ModelInputs, made: set[str]) -> list[str]:
    x, seq = inputs.example[0], len(inputs.names) > 1
    shape = (1, *x.shape[1:])
    np_x = f"np.zeros({shape}, dtype=np.float32)" if x.is_floating_point() else f"np.ones({shape}, dtype=np.int64)"
    pt_x = f"torch.zeros{shape}" if x.is_floating_point() else f"torch.ones({shape}, dtype=torch.long)"
    np_feeds = "{'x': x, 'mask': np.ones(x.shape[:2], dtype=bool)}" if seq else "{'x': x}"
    pt_args = "x, torch.ones(x.shape[:2], dtype=torch.bool)" if seq else "x"
    module, _, name = str(ckpt["hyper_parameters"].get("_class_path")).rpartition(".")
    kwargs = ", ".join(f"{k}={v!r}" for k, v in init_kwargs(ckpt).items())
    snippets = {
        "onnx": [
            "ONNX, with onnxruntime:",
            "import numpy as np",
            "import onnxruntime as ort",
            "",
            'session = ort.InferenceSession("model.onnx")',
            f"x = {np_x}",
            f"output = session.run(None, {np_feeds})[0]",
        ],
        "torch_export": [
            "torch.export:",
            "import torch",
            "",
            'model = torch.export.load("model.pt2").module()',
            f"x = {pt_x}",
            f"output = model({pt_args})",
        ],
        "safetensors": [
            "safetensors, into the zoo's task:",
            "from safetensors.torch import load_file",
            f"from {module} import {name}",
            "",
            f"task = {name}({kwargs})",
            'task.load_state_dict(load_file("model.safetensors"))',
            "task.eval()",
        ],
        "checkpoint": [
            "The checkpoint itself:",
            "from zoo.checkpoints import load_task",
            "",
            f"task = load_task({ckpt_path!r})  # in eval mode",
        ],
    }
    lines: list[str] = []
    for fmt, (title, *code) in snippets.items():
        if fmt in made or fmt == "checkpoint":
            lines += [title, "", "```python", *code, "```", ""]
    return lines


def model_card(ckpt_path: str, ckpt: dict[str, Any], task: Any, inputs: ModelInputs, results: list[Exported]) -> str:
    """``MODEL_CARD.md``: architecture, data, metrics, the exports and their checks, how to load each, the config."""
    run_dir, hparams, config = run_folder(ckpt_path), ckpt["hyper_parameters"], run_config(ckpt) or {}
    params = list(task.parameters())
    lines = [
        f"# {type(task).__name__}, backbone {task.backbone_name} ({run_dir.resolve().parent.name}/"
        f"{run_dir.resolve().name})",
        "",
        f"Exported by `zoo export` from `{ckpt_path}` (epoch {ckpt.get('epoch')}, step {ckpt.get('global_step')}).",
        "",
        "## Architecture",
        "",
        f"- Task: `{hparams.get('_class_path')}`",
        f"- Backbone: `{task.backbone_name}`, kwargs `{json.dumps(plain(hparams.get('backbone_kwargs') or {}))}`",
        f"- Parameters: {sum(p.numel() for p in params):,} "
        f"({sum(p.numel() for p in params if p.requires_grad):,} trainable)",
        *_io_lines(task, inputs),
        "",
        "| layer group | parameters |",
        "|---|---:|",
        *(f"| {name} | {sum(p.numel() for p in m.parameters()):,} |" for name, m in task.named_layer_groups().items()),
        "",
        "## Data",
        "",
    ]
    data = config.get("data") or {}
    if data:
        args = yaml.safe_dump(plain(data.get("init_args") or {}), sort_keys=False).rstrip()
        lines += [f"- Datamodule: `{data.get('class_path')}`, with:", "", "```yaml", args, "```", ""]
    else:
        lines.append("- Datamodule: not recorded (the checkpoint holds no resolved config)")
    names = class_names(ckpt)
    lines.append(f"- Classes ({len(names)}): {', '.join(names)}" if names else "- Classes: not recorded")
    state = {k: v for k, v in datamodule_state(ckpt).items() if k != "class_names"}
    if state:
        lines.append(
            f"- Fitted by the datamodule (the exports take inputs after this preprocessing): "
            f"`{json.dumps(_brief(plain(state)))}`"
        )
    rows = []
    for stage in ("test", "val"):
        path = run_dir / f"{stage}_metrics.json"
        with contextlib.suppress(OSError, ValueError):
            values = json.loads(path.read_text()) if path.is_file() else {}
            for key, value in sorted(values.items()):
                rows.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += ["", "## Metrics", ""]
    lines += ["| metric | value |", "|---|---:|", *rows] if rows else [f"No test or val metrics file in `{run_dir}`."]
    lines += [
        "",
        "## Exports",
        "",
        "Each graph was loaded again and run beside the PyTorch model on random batches of "
        f"{' and '.join(map(str, CHECK_BATCHES))} (sequence models: padded, and one batch half as long).",
        "",
        "| format | file | size | check |",
        "|---|---|---:|---|",
        *(f"| {r.format} | {r.path.name} | {size_text(r.path.stat().st_size)} | {check_text(r)} |" for r in results),
        "",
        "## How to load",
        "",
        *_how_to_load(ckpt_path, ckpt, inputs, {r.format for r in results}),
        "## Resolved config",
        "",
    ]
    if isinstance(ckpt.get(CONFIG_KEY), str):
        lines += ["```yaml", ckpt[CONFIG_KEY].rstrip(), "```"]
    else:
        hp = yaml.safe_dump(plain({k: v for k, v in hparams.items() if k != "_instantiator"}), sort_keys=False)
        lines += [
            "The checkpoint holds no resolved config (written before `zoo fit` saved it); its hyperparameters:",
            "",
            "```yaml",
            hp.rstrip(),
            "```",
        ]
    return "\n".join(lines) + "\n"


# --- the command -----------------------------------------------------------------------------------------
