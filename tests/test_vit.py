"""Vision Transformer: timm's shape and function, tokens, pooling, errors a user sees, and that it learns.

The registry-wide interface tests in test_backbones.py cover ``vit_tiny`` and ``vit_micro`` as well.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo.backbones.vit  # noqa: F401  (registers the vit family until zoo/backbones/__init__.py does)
from zoo.backbones.vit import DropPath, ViTBackbone
from zoo.errors import ConfigError
from zoo.registry import create_backbone, get_backbone_entry

MICRO = dict(input_shape=(1, 8, 8), patch_size=2, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- the same network as timm's ---------------------------------------------------------------------
def test_vit_tiny_has_timm_vit_tiny_parameter_count():
    timm = pytest.importorskip("timm")
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)  # no head, no download
    ours = create_backbone("vit_tiny")
    assert ours.input_shape == (3, 224, 224) and ours.num_tokens == 14 * 14 + 1
    assert _num_params(ours) == _num_params(reference) == 5_524_416


def _timm_to_zoo(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's VisionTransformer keys to ours: the stem lives under ``embed.``; the rest keeps its names."""
    out = {}
    for key, value in state.items():
        if key == "pos_embed":
            out["embed.pos_embed.weight"] = value[0]  # (1, N, D) -> (N, D)
        elif key == "cls_token" or key.startswith("patch_embed."):
            out[f"embed.{key}"] = value
        else:
            out[key] = value
    return out


def test_vit_computes_the_same_features_as_timm_with_the_same_weights():
    pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    reference = VisionTransformer(
        img_size=8,
        patch_size=2,
        in_chans=1,
        embed_dim=32,
        depth=2,
        num_heads=4,
        mlp_ratio=2.0,
        num_classes=0,
        global_pool="token",
    ).eval()
    ours = ViTBackbone(**MICRO).eval()
    ours.load_state_dict(_timm_to_zoo(reference.state_dict()))  # strict: every key matches, none left over
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), reference(x), atol=1e-5, rtol=1e-5)


# --- tokens and pooling -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, patch, tokens",
    [((1, 8, 8), 2, 17), ((1, 8, 8), 4, 5), ((3, 32, 32), 4, 65), ((1, 28, 28), 7, 17), ((3, 12, 20), 4, 16)],
)
def test_token_count_is_patches_plus_class_token(shape, patch, tokens):
    model = ViTBackbone(input_shape=shape, patch_size=patch, embed_dim=16, depth=1, num_heads=2)
    assert model.num_tokens == tokens == (shape[1] // patch) * (shape[2] // patch) + 1
    assert model.embed.pos_embed.weight.shape == (tokens, 16)
    assert model.forward_tokens(torch.randn(2, *shape)).shape == (2, tokens, 16)


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("name", ["vit_micro", "vit_tiny"])
def test_forward_features_is_batch_by_embed_dim(name, pool):
    entry = get_backbone_entry(name)
    shape = entry.parameters()["input_shape"].default
    model = create_backbone(name, pool=pool, depth=1)
    assert model.num_features == model.embed_dim == entry.parameters()["embed_dim"].default
    assert model.forward_features(torch.randn(3, *shape)).shape == (3, model.num_features)


def test_cls_and_mean_pooling_read_different_tokens():
    torch.manual_seed(0)
    cls_model = ViTBackbone(**MICRO, pool="cls").eval()
    mean_model = ViTBackbone(**MICRO, pool="mean").eval()
    mean_model.load_state_dict(cls_model.state_dict())  # same weights: only the pooling differs
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        tokens = cls_model.forward_tokens(x)
        by_cls, by_mean = cls_model.forward_features(x), mean_model.forward_features(x)
    torch.testing.assert_close(by_cls, tokens[:, 0])
    torch.testing.assert_close(by_mean, tokens[:, 1:].mean(dim=1))  # patch tokens only, not the class token
    assert not torch.allclose(by_cls, by_mean, atol=1e-3)


# --- attention: every token is part of the image, nothing else is --------------------------------------
def test_each_image_is_encoded_on_its_own():
    torch.manual_seed(0)
    model = ViTBackbone(**MICRO).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        batch = model.forward_features(x)
        alone = torch.cat([model.forward_features(x[i : i + 1]) for i in range(3)])
        x_changed = x.clone()
        x_changed[1:] = torch.randn(2, 1, 8, 8) * 5  # the other images of the batch change completely
        changed = model.forward_features(x_changed)
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(changed[0], batch[0])


def _patch_influence(encode, x: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """How far ``encode(x)`` moves when one ``patch`` x ``patch`` patch of ``x`` is shifted by 1: (H/patch, W/patch)."""
    base = encode(x)
    influence = torch.zeros(x.shape[-2] // patch, x.shape[-1] // patch)
    for i, j in np.ndindex(*influence.shape):
        moved = x.clone()
        moved[..., i * patch : (i + 1) * patch, j * patch : (j + 1) * patch] += 1.0
        influence[i, j] = (encode(moved) - base).abs().max()
    return influence


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_features_see_every_patch_without_a_mask(pool):
    torch.manual_seed(0)
    model = ViTBackbone(**MICRO, pool=pool).eval()
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        features = _patch_influence(model.forward_features, x)
        # The class token has no pixels of its own: it hears of a patch through attention only, so a masked-out
        # patch shows here even with mean pooling, where the patch's own token would still reach the mean.
        class_token = _patch_influence(lambda t: model.forward_tokens(t)[:, 0], x)
        keep = torch.ones_like(x)
        keep[..., 2:4, 4:6] = 0  # the control: patch (1, 2) never reaches the model, and the measure says so
        blind = _patch_influence(lambda t: model.forward_features(t * keep), x)
    # A shifted patch moves them by 0.02-0.2 here, rounding noise by ~1e-7.
    assert (features > 1e-3).all(), features
    assert (class_token > 1e-3).all(), class_token
    assert blind[1, 2] == 0 and (blind > 1e-3).sum() == 15, blind


# --- errors a user sees -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, patch, message",
    [
        (
            (1, 30, 30),
            4,
            r"a 30x30 image does not tile into 4x4 patches; set patch_size to one that divides both "
            r"30 and 30 \(1, 2, 3, 5, 6, 10, 15, 30\), or resize the images to multiples of 4",
        ),
        ((3, 224, 200), 16, r"a 224x200 image does not tile into 16x16 patches; .*\(1, 2, 4, 8\)"),
    ],
)
def test_image_size_not_divisible_by_patch_size_names_both_and_the_fix(shape, patch, message):
    with pytest.raises(ConfigError, match=message):
        create_backbone("vit_micro", input_shape=shape, patch_size=patch)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"embed_dim": 30, "num_heads": 4}, r"embed_dim=30 must be a multiple of num_heads=4"),
        ({"pool": "max"}, r"unknown pool 'max'; choose one of \['cls', 'mean'\]"),
        ({"input_shape": (8, 8)}, r"vit expects images of shape \(C, H, W\)"),
        ({"depth": 0}, r"at least one block"),
    ],
)
def test_bad_choice_raises_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_backbone("vit_micro", **kwargs)


def test_image_of_another_size_at_run_time_names_both_shapes():
    model = create_backbone("vit_micro")  # built for (1, 8, 8)
    with pytest.raises(ValueError, match=r"built for images of shape \(1, 8, 8\), got \(1, 16, 16\)"):
        model.forward_features(torch.randn(2, 1, 16, 16))


# --- structure, init and regularisation ---------------------------------------------------------------
def test_layer_groups_are_stem_blocks_norm():
    model = create_backbone("vit_micro", depth=3)
    groups = model.layer_groups()
    assert list(groups) == ["embed", "block0", "block1", "block2", "norm"]
    stem = {name for name, _ in groups["embed"].named_parameters()}
    assert stem == {"cls_token", "pos_embed.weight", "patch_embed.proj.weight", "patch_embed.proj.bias"}


def test_linear_weights_start_truncated_normal_and_biases_zero():
    torch.manual_seed(0)
    model = create_backbone("vit_tiny", depth=2)
    qkv = model.blocks[0].attn.qkv
    assert qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert qkv.bias.abs().sum() == 0
    for token in (model.embed.cls_token, model.embed.pos_embed.weight):
        assert token.std().item() == pytest.approx(0.02, rel=0.25)
    norm = model.blocks[0].norm1
    assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and norm.eps == 1e-6


def test_drop_path_rises_linearly_to_the_last_block():
    model = create_backbone("vit_micro", depth=5, drop_path=0.2)
    rates = [block.drop_path1.p for block in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_drop_path_drops_whole_samples_in_training_only():
    torch.manual_seed(0)
    layer = DropPath(0.5)
    x = torch.ones(64, 5, 3)
    out = layer.train()(x)
    per_sample = out.flatten(1)
    assert ((per_sample == 0).all(dim=1) | (per_sample == 2).all(dim=1)).all()  # kept samples scaled by 1/(1-p)
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    assert torch.equal(layer.eval()(x), x)


def test_dropout_makes_training_stochastic_and_eval_deterministic():
    torch.manual_seed(0)
    model = create_backbone("vit_micro", dropout=0.1, attn_dropout=0.1, drop_path=0.1)
    x = torch.randn(4, 1, 8, 8)
    assert not torch.allclose(model.train().forward_features(x), model.forward_features(x))
    model.eval()
    torch.testing.assert_close(model.forward_features(x), model.forward_features(x))


# --- it learns ----------------------------------------------------------------------------------------
@pytest.fixture
def one_thread():
    # Ops this small gain nothing from a second thread, and on a busy 2-core machine every op of a
    # 2-thread run waits for whichever thread was descheduled: these 30 steps take ~2 s on one thread
    # and were seen taking a minute on two.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_vit_micro_learns_to_separate_two_kinds_of_images(one_thread):
    torch.manual_seed(0)
    # Class 0: horizontal stripes, class 1: vertical stripes, both under noise.
    y = torch.randint(0, 2, (64,))
    stripes = (torch.arange(8) % 2).float() * 2 - 1  # -1, 1, -1, ...
    x = torch.randn(64, 1, 8, 8) * 0.5
    x[y == 0] += stripes.view(1, 8, 1)
    x[y == 1] += stripes.view(1, 1, 8)
    backbone = create_backbone("vit_micro")
    head = nn.Linear(backbone.num_features, 2)
    optimizer = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=1e-3)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(head(backbone.forward_features(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():
        accuracy = (head(backbone.eval().forward_features(x)).argmax(-1) == y).float().mean().item()
    assert accuracy == 1.0


def test_position_embeddings_are_what_tells_patches_apart():
    # Without positions a ViT is blind to where a patch is: the class token reads a set of patches, so
    # swapping the top and bottom halves of an image changes nothing. A bright top half and a bright
    # bottom half are told apart by the learned positions alone.
    torch.manual_seed(0)
    model = ViTBackbone(**MICRO).eval()
    x = torch.randn(2, 1, 8, 8)
    swapped = torch.cat([x[:, :, 4:], x[:, :, :4]], dim=2)  # whole 2x2 patches move
    with torch.no_grad():
        assert not torch.allclose(model.forward_features(x), model.forward_features(swapped), atol=1e-4)
        model.embed.pos_embed.weight.zero_()
        torch.testing.assert_close(model.forward_features(x), model.forward_features(swapped))
