"""A checkpoint is data: whatever a crafted checkpoint names, in whatever place, no command that reads it builds
anything but the zoo's own classes and torch's optimizers, and `trust_remote_code` is never taken from it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

from tests.conftest import ROOT, TINY, tiny_fit
from tests.test_cli import error_of
from zoo.checkpoints import CONFIG_KEY, read_checkpoint
from zoo.errors import ConfigError

MARKER = "payload-ran"


def popen(marker: Path) -> dict[str, Any]:
    """What jsonargparse would build into ``subprocess.Popen("touch MARKER", shell=True)``."""
    return {"class_path": "subprocess.Popen", "init_args": {"args": f"touch {marker}", "shell": True}}


def _in_config(section: str, key: str) -> Callable[[dict, Path], str]:
    def put(ckpt: dict, marker: Path) -> str:
        config = yaml.safe_load(ckpt[CONFIG_KEY])
        config[section]["init_args"][key] = popen(marker)
        ckpt[CONFIG_KEY] = yaml.safe_dump(config)
        return f"{CONFIG_KEY}.{section}.init_args.{key}.class_path"

    return put


def _set(where: str, value: Callable[[Path], Any]) -> Callable[[dict, Path], str]:
    """Put ``value(marker)`` at the dotted place ``where`` of the checkpoint; returns the key the refusal names."""

    def put(ckpt: dict, marker: Path) -> str:
        *parents, last = where.split(".")
        node = ckpt
        for key in parents:
            node = node[key]
        node[last] = value(marker)
        return where

    return put


# Every place a payload can hide; each returns the key path the refusal must name.
PLACES = {
    "hparams_nested_dict": _set("hyper_parameters.backbone_kwargs.evil", popen),
    "hparams_nested_list": _set("hyper_parameters.backbone_kwargs.layers", lambda m: [1, {"deep": [popen(m)]}]),
    "hparams_optimizer_class": _set("hyper_parameters.optimizer", popen),
    "hparams_optimizer_import_path": _set("hyper_parameters.optimizer", lambda m: "os.system"),
    "hparams_scheduler_callable": _set(
        "hyper_parameters.lr_scheduler",
        lambda m: {"class_path": "torch.optim.lr_scheduler.LambdaLR", "init_args": {"lr_lambda": "os.system"}},
    ),
    "hparams_task_class": _set("hyper_parameters._class_path", lambda m: "subprocess.Popen"),
    "hparams_instantiator": _set("hyper_parameters._instantiator", lambda m: "os.system"),
    "stored_config_data": _in_config("data", "evil"),
    "stored_config_model": _in_config("model", "evil"),
    # A zoo class that is no task, datamodule, optimizer or scheduler: a nested CLI would parse its own arguments.
    "hparams_a_zoo_class_not_a_model_part": _set(
        "hyper_parameters.backbone_kwargs.cli",
        lambda m: {"class_path": "zoo.lightning_cli.ZooCLI", "init_args": {"args": ["--model.init_args.x=1"]}},
    ),
    "hparams_attribute_chain": _set(
        "hyper_parameters.lr_scheduler",
        lambda m: {
            "class_path": "torch.optim.lr_scheduler.LambdaLR",
            "init_args": {"lr_lambda": "zoo.checkpoints.os._exit"},
        },
    ),
    "hparams_chain_as_class": _set("hyper_parameters.optimizer", lambda m: {"class_path": "zoo.checkpoints.os.system"}),
    "callback_state": _set("callbacks.FineTuning.evil", popen),
    "datamodule_state": _set("Digits.evil", lambda m: [popen(m)]),
}


def _shared_with_an_unchecked_place(ckpt: dict, marker: Path) -> str:
    # The same arguments dict first under a key of no class (seen there first), then where LambdaLR takes them.
    arguments = {"lr_lambda": "os._exit"}
    ckpt["hyper_parameters"]["lr_scheduler"] = {
        "class_path": "torch.optim.lr_scheduler.LambdaLR",
        "init_args": arguments,
    }
    ckpt["callbacks"]["FineTuning"]["kept"] = arguments
    return "hyper_parameters.lr_scheduler.init_args.lr_lambda"


def _without_task_class(ckpt: dict, marker: Path) -> str:
    del ckpt["hyper_parameters"]["_class_path"]  # rebuilt by whatever task the config names: its arguments count
    ckpt["hyper_parameters"]["lr_scheduler"] = "this.s"
    return "hyper_parameters.lr_scheduler"


PLACES.update(shared_container=_shared_with_an_unchecked_place, hparams_without_task_class=_without_task_class)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny digits MLP run: its last.ckpt is the good checkpoint every crafted one starts from."""
    return tiny_fit(tmp_path_factory, "digits_mlp") / "runs/digits_mlp/version_0"


def _commands(path: Path, run: Path) -> dict[str, list[str]]:
    config = ["--config", "configs/experiments/digits_mlp.yaml", *TINY]
    return {
        "test": ["test", *config, f"--ckpt_path={path}"],
        "validate": ["validate", *config, f"--ckpt_path={path}"],
        "fit": ["fit", *config, f"--ckpt_path={path}"],
        "predict": ["predict", f"--ckpt_path={path}", str(ROOT / "examples/digits")],
        "export": ["export", f"--ckpt_path={path}"],
        "report": ["report", str(run)],
    }


@pytest.mark.parametrize("place", sorted(PLACES))
def test_a_payload_anywhere_in_a_checkpoint_is_refused_by_every_command(place, trained, workdir: Path, capsys):
    marker = workdir / MARKER
    ckpt = torch.load(trained / "checkpoints/last.ckpt", weights_only=True)
    key = PLACES[place](ckpt, marker)
    run = workdir / "run"  # a run folder whose only checkpoint is the crafted one, for `zoo report`
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("*.ckpt", "test_confusion.json"))
    path = run / "checkpoints/best-epoch=0-step=3.ckpt"
    torch.save(ckpt, path)
    for command, args in _commands(path, run).items():
        err = error_of(capsys, *args)
        assert f"refused, {key}" in err and "Traceback" not in err, (command, err[-2000:])
    with pytest.raises(ConfigError, match=f"refused, {key}"):  # the fifth reader: a zoo/ backbone
        from zoo.registry import create_backbone

        create_backbone(f"zoo/{path}", pretrained=True, input_shape=(1, 8, 8))
    assert not marker.exists()


def test_a_yaml_tag_in_the_stored_config_is_refused_without_a_traceback(trained, workdir: Path, capsys):
    ckpt = torch.load(trained / "checkpoints/last.ckpt", weights_only=True)
    ckpt[CONFIG_KEY] = f"data: !!python/object/apply:os.system ['touch {workdir / MARKER}']\n"
    path = workdir / "tagged.ckpt"
    torch.save(ckpt, path)
    for args in (["predict", f"--ckpt_path={path}", str(ROOT / "examples/digits")], ["export", f"--ckpt_path={path}"]):
        err = error_of(capsys, *args)
        assert "its stored config (zoo_config) is not plain YAML" in err and "Traceback" not in err
    assert not (workdir / MARKER).exists()


def test_the_refusal_can_fail(trained, workdir: Path):
    # The good checkpoint itself passes: the checks refuse payloads, not zoo checkpoints.
    ckpt = read_checkpoint(str(trained / "checkpoints/last.ckpt"))
    assert ckpt["hyper_parameters"]["optimizer"]["class_path"] == "torch.optim.AdamW"


# --- trust_remote_code: only from the user's own config or command line ----------------------------------------
REMOTE_CODE = """
import pathlib
pathlib.Path({marker!r}).touch()
from transformers import PretrainedConfig

class RemoteConfig(PretrainedConfig):
    model_type = "remote"
"""


def _remote_code_model(folder: Path, marker: Path) -> Path:
    """A local HuggingFace model folder whose config is its own Python code (``auto_map``)."""
    folder.mkdir()
    (folder / "config.json").write_text(
        '{"model_type": "remote", "auto_map": {"AutoConfig": "remote.RemoteConfig", '
        '"AutoModel": "remote.RemoteConfig"}}'
    )
    (folder / "remote.py").write_text(REMOTE_CODE.format(marker=str(marker)))
    return folder


def test_trust_remote_code_stored_in_a_checkpoint_is_never_honoured(trained, workdir: Path, capsys):
    marker = workdir / MARKER
    model = _remote_code_model(workdir / "remote_model", marker)
    ckpt = torch.load(trained / "checkpoints/last.ckpt", weights_only=True)
    ckpt["hyper_parameters"].update(backbone=f"hf/{model}", backbone_kwargs={"trust_remote_code": True})
    path = workdir / "remote.ckpt"
    torch.save(ckpt, path)
    run = workdir / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("*.ckpt", "test_confusion.json"))
    torch.save(ckpt, run / "checkpoints/best-epoch=0-step=3.ckpt")
    for command, args in _commands(path, run).items():
        if command == "fit":  # its own model must match the checkpoint's backbone to resume it
            args = [*args, f"--model.init_args.backbone=hf/{model}"]
        with pytest.raises(SystemExit) as exit_info:
            from cli import main

            main(args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err, (command, err[-2000:])
        assert "needs its own Python code" in err, (command, err[-2000:])
        assert "stores hyper_parameters.backbone_kwargs.trust_remote_code: true" in err, (command, err[-2000:])
        assert not marker.exists(), command
    # The user's own word on the command line is what counts: then (and only then) the folder's code runs (and
    # fails later, being no model: that is not what this checks).
    with pytest.raises((SystemExit, ValueError)):
        from cli import main

        main([*_commands(path, run)["test"], "--model.init_args.backbone_kwargs.trust_remote_code=true"])
    assert marker.exists()


# --- not a checkpoint at all ---------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b"epoch,step\n1,2\n", b"\x80\x04K\x01."], ids=["empty", "text", "pickle"])
def test_a_file_that_is_not_a_checkpoint_is_named_with_its_size(tmp_path: Path, content: bytes):
    path = tmp_path / "x.ckpt"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"not a zoo checkpoint \({len(content)} bytes"):
        read_checkpoint(str(path))


def test_shared_and_deeply_nested_values_neither_hang_nor_crash_the_check():
    import time

    from zoo.checkpoints import check_is_data

    # 4**29 paths through 30 aliased lists: walked as 30 lists, each once.
    bomb = ["a0: &a0 [x]", *(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 30))]
    config = "data:\n  class_path: datamodules.Digits\n  init_args:\n    bomb:\n" + "".join(
        f"      {b}\n" for b in bomb
    )
    start = time.monotonic()
    check_is_data({CONFIG_KEY: config}, "x.ckpt")
    assert time.monotonic() - start < 5
    deep: dict = {}
    node = deep
    for _ in range(100_000):
        node["d"] = node = {}
    with pytest.raises(ConfigError, match="nest deeper than any zoo checkpoint"):
        check_is_data({"hyper_parameters": deep}, "x.ckpt")
    dag: list = ["x"]
    for _ in range(60):  # 2**60 paths, as pickle's memo can share lists
        dag = [dag, dag]
    start = time.monotonic()
    check_is_data({"hyper_parameters": {"backbone_kwargs": {"zzz": dag}}}, "x.ckpt")
    assert time.monotonic() - start < 5


def test_a_zoo_backbone_chain_that_comes_back_to_itself_is_refused(trained, tmp_path: Path):
    from zoo.registry import create_backbone

    ckpt = torch.load(trained / "checkpoints/last.ckpt", weights_only=True)
    first, second = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    for path, other in ((first, second), (second, first)):
        ckpt["hyper_parameters"]["backbone"] = f"zoo/{other}"
        torch.save(ckpt, path)
    with pytest.raises(ConfigError, match="its backbone comes back to itself"):
        create_backbone(f"zoo/{first}", pretrained=True, input_shape=(1, 8, 8))


def test_a_data_state_of_the_wrong_kind_is_refused(trained, workdir: Path, capsys):
    ckpt = torch.load(trained / "checkpoints/last.ckpt", weights_only=True)
    ckpt["Digits"] = {"class_names": [str(i) for i in range(10)], "stats": {"mean": "abc", "std": None}}
    path = workdir / "state.ckpt"
    torch.save(ckpt, path)
    err = error_of(capsys, "predict", f"--ckpt_path={path}", str(ROOT / "examples/digits"))
    assert "its data state's 'stats' is not what a zoo datamodule stores" in err and "Traceback" not in err
