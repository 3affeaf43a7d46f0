"""`zoo export`: a checkpoint as a ``torch.export`` program, ONNX, safetensors weights and a model card.

The checkpoint alone is enough: the task is rebuilt from its own hyperparameters
(:func:`zoo.checkpoints.load_task`). Every exported graph is loaded again and run on random batches beside the
PyTorch model, so an export that loads but computes something else fails here, not in production.

    zoo export --ckpt_path runs/digits_cnn/version_0/checkpoints/last.ckpt
    zoo export --ckpt_path last.ckpt --formats onnx card --output exported/ --opset 18

Files go to ``<run dir>/export/`` by default (the run dir holds the ``checkpoints`` folder and the metrics).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import io
import json
import logging
import math
import os
import re
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from zoo.checkpoints import CONFIG_KEY, class_names, load_task, read_checkpoint
from zoo.commands.exported import (
    CHECK_BATCHES,
    Exported,
    ModelInputs,
    check_text,
    init_kwargs,
    size_text,
    vocab_size,
)
from zoo.commands.model_card import model_card
from zoo.errors import ConfigError
from zoo.run.files import run_folder

FORMATS = ("torch_export", "onnx", "safetensors", "card")  # the order of work: the card records the others' checks
FILES = {"torch_export": "model.pt2", "onnx": "model.onnx", "safetensors": "model.safetensors", "card": "MODEL_CARD.md"}
DEFAULT_TOLERANCE = 1e-4
LARGE_MODEL_BYTES = 1 << 30  # ONNX protobufs stop at 2 GiB: larger models keep their weights in a side file


class SequenceInputs(nn.Module):
    """The task behind positional ``(x, mask)`` inputs: exporters take tensors, sequence tasks take a dict."""

    def __init__(self, task: nn.Module) -> None:
        super().__init__()
        self.task = task

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.task({"x": x, "mask": mask})


def takes_mask(task: Any) -> bool:
    """True for sequence and text backbones, whose ``forward_features`` take ``(x, mask)``."""
    return "mask" in inspect.signature(task.backbone.forward_features).parameters


def model_inputs(task: Any, seed: int = 0) -> tuple[nn.Module, ModelInputs]:
    """The module to export (the task, or :class:`SequenceInputs` around it) and its inputs.

    Check batches are random, of the model's input shape: floats from a normal distribution, token ids in
    ``[1, vocab_size)`` (0 is padding). Sequence batches get end-padded masks of random lengths, and one batch
    is half as long, so the dynamic length is checked too.
    """
    example = task.backbone.example_input(task.input_shape)  # (2, *input_shape)
    if not isinstance(example, torch.Tensor):
        raise ConfigError(
            f"backbone {task.backbone_name!r}: its example input is not one tensor; "
            "export it with --formats safetensors card"
        )
    gen = torch.Generator().manual_seed(seed)
    high = max(int(vocab_size(task) or 2), 2)

    def batch_of(size: int, steps: Optional[int] = None) -> torch.Tensor:
        shape = (size, *example.shape[1:]) if steps is None else (size, steps, *example.shape[2:])
        if example.is_floating_point():
            return torch.randn(shape, generator=gen, dtype=example.dtype)
        return torch.randint(1, high, shape, generator=gen, dtype=example.dtype)

    batch = torch.export.Dim("batch")
    if not takes_mask(task):
        return task, ModelInputs(("x",), (example,), ({0: batch},), [(batch_of(n),) for n in CHECK_BATCHES])
    steps = int(example.shape[1])
    dims: dict[int, Any] = {0: batch}
    if steps > 1:  # torch.export specialises a dim of size 1; positions are built for `steps` at most
        dims[1] = torch.export.Dim("steps", max=steps)

    def sequences(size: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch_of(size, length)
        lengths = torch.randint(1, length + 1, (size,), generator=gen)
        lengths[0] = length  # one sequence without padding
        mask = torch.arange(length) < lengths.unsqueeze(1)  # (B, T), True at real steps, padding at the end
        return x * mask.view(*mask.shape, *[1] * (x.dim() - 2)).to(x.dtype), mask

    samples = [sequences(n, steps) for n in CHECK_BATCHES] + ([sequences(2, steps // 2)] if steps > 1 else [])
    example_mask = torch.ones(example.shape[:2], dtype=torch.bool)
    return SequenceInputs(task), ModelInputs(("x", "mask"), (example, example_mask), (dims, dims), samples, steps)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences the exporters' progress prints, warnings and partial-graph dumps: their errors say enough."""
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        torch_logger.setLevel(level)


def _reason(err: BaseException, locate: bool) -> str:
    """The exporter's first line (and its detail lines); with ``locate``, the model's own line that raised it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # no terminal colours in a message
    if "## Exception summary" in text:  # torch.onnx's own errors: the cause follows its advice on what to do next
        text = text.split("## Exception summary", 1)[1].replace("<class '", "").replace("'>", "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = ": ".join([type(err).__name__, *lines[:1]]).rstrip(".")
    reason += "".join(f"; {line[2:].split('. ')[0]}" for line in lines[1:9] if line.startswith("- "))
    skip = (os.path.dirname(torch.__file__), os.path.dirname(os.__file__), __file__)  # torch, the stdlib, this file
    own = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith(skip)]
    if own and locate:
        where = os.path.relpath(own[-1].filename) if own[-1].filename.startswith(os.getcwd()) else own[-1].filename
        reason += f" (at {where}:{own[-1].lineno} in {own[-1].name}: `{(own[-1].line or '').strip()}`)"
    return reason.rstrip(".")


def _cannot(what: str, formats: list[str], step: str, err: BaseException, ckpt: str, others: list[str]) -> ConfigError:
    """The error for a model an exporter cannot take: why, and the command for the formats that still work."""
    if "Constraints violated" in str(err):
        why = "The model turns a dynamic dimension into a constant, e.g. `.view(len(x), ...)`: `x.shape[0]` keeps it"
    elif step == "torch.export":
        why = "Control flow that depends on tensor values cannot be exported as one graph"
    elif "ONNX" in step:
        why = "Some operations have no ONNX translation (at this opset)"
    else:
        why = "The exported program does not survive saving and loading (a torch.export limitation)"
    reason = _reason(err, locate=step == "torch.export")  # other steps fail inside the exporters, not the model
    return ConfigError(
        f"cannot export {what} to {' and '.join(formats)}: {step} failed: {reason}. {why}. The other formats "
        f"still work (safetensors always does): zoo export --ckpt_path {ckpt} --formats {' '.join(others)}"
    )


def max_abs_diff(reference: Callable[..., torch.Tensor], run: Callable[..., torch.Tensor], samples: list) -> float:
    """The largest absolute difference between two implementations over the samples (inf for NaN or a wrong shape)."""
    worst = 0.0
    for sample in samples:
        with torch.no_grad():
            expected, got = reference(*sample), run(*sample)
        if tuple(got.shape) != tuple(expected.shape):
            return math.inf
        diff = (got.double() - expected.double()).abs()
        diff[got.isnan() & expected.isnan()] = 0.0
        value = float(diff.max()) if diff.numel() else 0.0
        worst = max(worst, value if math.isfinite(value) else math.inf)
    return worst


def write_torch_export(program: Any, module: nn.Module, inputs: ModelInputs, path: Path) -> Exported:
    """``torch.export.save``, then ``torch.export.load`` and a comparison with the eager model."""
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    return Exported("torch_export", path, max_abs_diff(module, loaded, inputs.samples), "torch.export.load")


def write_onnx(program: Any, module: nn.Module, inputs: ModelInputs, path: Path, opset: Optional[int]) -> Exported:
    """ONNX from the exported program, then onnxruntime on the check batches beside the eager model."""
    import onnx
    import onnxruntime as ort
    import torch.onnx

    large = sum(v.numel() * v.element_size() for v in program.state_dict.values()) > LARGE_MODEL_BYTES
    with _quiet():
        torch.onnx.export(
            program,
            inputs.example,
            str(path),
            dynamo=True,
            opset_version=opset,
            external_data=large,
            input_names=list(inputs.names),
            output_names=["output"],
        )
    graph = onnx.load(str(path), load_external_data=False)
    used = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}  # an input the graph does not use is dropped

    def run(*sample: torch.Tensor) -> torch.Tensor:
        feeds = {name: t.numpy() for name, t in zip(inputs.names, sample) if name in wanted}
        return torch.from_numpy(session.run(None, feeds)[0])

    asked = f", not the {opset} asked (the exporter's converter cannot reach it)" if opset not in (None, used) else ""
    return Exported("onnx", path, max_abs_diff(module, run, inputs.samples), f"onnxruntime, opset {used}{asked}")


def write_safetensors(task: nn.Module, path: Path, metadata: dict[str, str]) -> Exported:
    """The task's state dict, contiguous, with string metadata enough to rebuild the task."""
    from safetensors.torch import save_file

    tensors, storages = {}, set()
    for name, value in task.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        tensors[name] = tensor.clone() if storage in storages else tensor  # safetensors refuses shared memory
        storages.add(storage)
    save_file(tensors, str(path), metadata=metadata)
    return Exported("safetensors", path, None, f"{len(tensors)} tensors")


def metadata(ckpt: dict[str, Any], task: Any) -> dict[str, str]:
    """safetensors metadata: the task class, backbone, data facts, class names and resolved config, as strings."""
    meta = {
        "format": "pt",
        "task": str(ckpt["hyper_parameters"].get("_class_path")),
        "backbone": str(task.backbone_name),
        "input_shape": json.dumps(list(task.input_shape)),
        "init_kwargs": json.dumps(init_kwargs(ckpt)),
    }
    meta.update({key: str(getattr(task, key)) for key in ("num_classes", "num_targets") if hasattr(task, key)})
    if class_names(ckpt):
        meta["class_names"] = json.dumps(class_names(ckpt))
    if isinstance(ckpt.get(CONFIG_KEY), str):
        meta["config"] = ckpt[CONFIG_KEY]
    return meta


def export_checkpoint(
    ckpt_path: str,
    formats: Sequence[str] = FORMATS,
    output: Optional[str] = None,
    opset: Optional[int] = None,
    tolerance: float = DEFAULT_TOLERANCE,
    backbone: Optional[str] = None,
) -> list[Exported]:
    """Export a `zoo fit` checkpoint to each of ``formats`` and check every graph against the PyTorch model.

    ``backbone``: for a model of your own network, its class path (the checkpoint's), which a checkpoint may not
    import unless the user names it.

    Raises:
        ConfigError: the checkpoint cannot be read or rebuilt; the model cannot be exported (naming the reason
            and the formats that still work); an export differs from the model by more than ``tolerance``.
    """
    if set(formats) - set(FORMATS):
        raise ConfigError(f"unknown export format(s) {sorted(set(formats) - set(FORMATS))}; choose from {FORMATS}")
    needed = ("onnx", "onnxruntime", "onnxscript") if "onnx" in formats else ()
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"ONNX export needs {', '.join(missing)}: pip install 'zoo[export]', or leave onnx out of --formats"
        )
    ckpt = read_checkpoint(ckpt_path, trusted=[backbone] if backbone else ())
    task = load_task(ckpt_path, ckpt)
    what = f"{type(task).__name__} with backbone {task.backbone_name!r}"
    wanted = [f for f in FORMATS if f in formats]
    out_dir = Path(output) if output else run_folder(ckpt_path) / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[Exported] = []
    inputs: Optional[ModelInputs] = None
    graphs = [f for f in wanted if f in ("torch_export", "onnx")]
    if graphs:
        module, inputs = model_inputs(task)
        try:
            with _quiet(), torch.no_grad():  # one traced graph, dynamic batch (and length), for both formats
                program = torch.export.export(
                    module, inputs.example, dynamic_shapes=inputs.dynamic_shapes, strict=False
                )  # non-strict: traced in Python, so an error points at the model's own line
        except Exception as err:  # noqa: BLE001  (every tracing failure means the same to a user)
            raise _cannot(what, graphs, "torch.export", err, ckpt_path, ["safetensors", "card"]) from None
        writers = {
            "torch_export": lambda path: write_torch_export(program, module, inputs, path),
            "onnx": lambda path: write_onnx(program, module, inputs, path, opset),
        }
        for fmt in graphs:
            try:
                result = writers[fmt](out_dir / FILES[fmt])
            except Exception as err:  # noqa: BLE001
                (out_dir / FILES[fmt]).unlink(missing_ok=True)
                step = "torch.export.save / load" if fmt == "torch_export" else "the ONNX conversion or onnxruntime"
                raise _cannot(what, [fmt], step, err, ckpt_path, [f for f in FORMATS if f != fmt]) from None
            diff = result.max_abs_diff
            assert diff is not None  # both graph writers compare the export with the PyTorch model
            if not diff <= tolerance:  # also for NaN
                result.path.unlink(missing_ok=True)  # never leave an export behind that computes something else
                raise ConfigError(
                    f"the {fmt} export of {what} differs from the PyTorch model by up to {diff:.3g} "
                    f"(tolerance {tolerance:g}) on random batches of {' and '.join(map(str, CHECK_BATCHES))}; "
                    f"{result.path} was removed. Raise --tolerance if such a difference is expected for this model"
                )
            results.append(result)
    if "safetensors" in wanted:
        results.append(write_safetensors(task, out_dir / FILES["safetensors"], metadata(ckpt, task)))
    if "card" in wanted:
        path = out_dir / FILES["card"]
        path.write_text(model_card(ckpt_path, ckpt, task, inputs or model_inputs(task)[1], results))
        results.append(Exported("card", path))
    return results


def main(argv: Optional[Sequence[str]] = None) -> None:
    """`zoo export`: export a checkpoint, check each graph, print one line per file written."""
    parser = argparse.ArgumentParser(
        prog="zoo export",
        description="Export a `zoo fit` checkpoint as a torch.export program (model.pt2), ONNX (model.onnx), "
        "safetensors weights and a model card (MODEL_CARD.md); each graph is checked against the PyTorch model.",
        epilog="examples:\n  zoo export --ckpt_path runs/digits_cnn/version_0/checkpoints/last.ckpt\n"
        "  zoo export --ckpt_path last.ckpt --formats onnx card --output exported --opset 18",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by `zoo fit`")
    parser.add_argument(
        "--backbone",
        metavar="CLASS_PATH",
        help="for a model of your own network: its class path (mypkg.nets.MyNet), which must be the checkpoint's",
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        choices=FORMATS,
        default=list(FORMATS),
        metavar="FORMAT",
        help=f"any of {', '.join(FORMATS)} (default: all)",
    )
    parser.add_argument("--output", help="folder for the files (default: <run dir>/export, beside checkpoints/)")
    parser.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's recommended one)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest absolute difference from the PyTorch outputs an export may have",
    )
    opts = parser.parse_args(argv)
    if not opts.tolerance >= 0:
        parser.error(f"--tolerance must be >= 0, got {opts.tolerance}")
    results = export_checkpoint(opts.ckpt_path, opts.formats, opts.output, opts.opset, opts.tolerance, opts.backbone)
    width = max(len(str(r.path)) for r in results)
    print(f"exported {opts.ckpt_path}:")
    for r in results:
        print(f"  {str(r.path):{width}s}  {size_text(r.path.stat().st_size):>9s}  {check_text(r)}".rstrip())
