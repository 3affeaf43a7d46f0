"""Sequence backbones (rnn, lstm, gru, transformer, fcn1d, resnet1d): masks, padding, pooling, tokens, learning.

The central promise: a sample's features do not depend on the padding around it in a batch.
"""

from __future__ import annotations

import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo.backbones.conv1d  # noqa: F401  (registration side effect)
import zoo.backbones.rnn  # noqa: F401
import zoo.backbones.transformer  # noqa: F401
from tests.conftest import GRAD_FLOOR, feature_loss
from zoo.errors import ConfigError, DataError
from zoo.layers import masked_max, masked_mean
from zoo.registry import create_backbone, get_backbone_entry

T, C, VOCAB = 12, 3, 30
LENGTHS = (7, 12, 4)  # sample 1 is full length, the others padded
SEQUENCE_BACKBONES = ["rnn", "lstm", "gru", "transformer", "fcn1d", "resnet1d"]

# (name, kwargs): every pooling, direction and depth that changes how padding is handled.
CONFIGS = [
    ("rnn", {}),
    ("lstm", {}),
    ("gru", {}),
    ("lstm", {"pool": "mean"}),
    ("lstm", {"pool": "max"}),
    ("gru", {"pool": "attention"}),
    ("lstm", {"bidirectional": True, "num_layers": 2, "dropout": 0.3}),
    ("gru", {"bidirectional": True, "pool": "attention"}),
    ("transformer", {"pool": "cls", "positional": "sinusoidal"}),
    ("transformer", {"pool": "mean", "positional": "learned"}),
    ("fcn1d", {"filters": (8, 16, 8)}),
    ("resnet1d", {"filters": (8, 16, 16)}),
]
_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for n, kw in CONFIGS]


@pytest.fixture(autouse=True)
def _one_thread():
    # These tensors are tiny: intra-op threads only add synchronisation, which on a loaded CI machine made
    # the packed LSTM steps ~15x slower with two threads than with one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(name: str, tokens: bool = False, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    shape = (T,) if tokens else (T, C)
    vocab = {"vocab_size": VOCAB} if tokens else {}
    return create_backbone(name, input_shape=shape, **vocab, **kwargs).eval()


def _mask(lengths=LENGTHS, steps=T) -> torch.Tensor:
    return torch.arange(steps) < torch.tensor(lengths).unsqueeze(1)  # (B, T), True at real steps


def _padded_batch(tokens: bool, garbage: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of LENGTHS; every padded step holds garbage the backbone must never see."""
    torch.manual_seed(1)
    mask = _mask()
    if tokens:
        x = torch.randint(1, VOCAB, (len(LENGTHS), T))
        return x.masked_fill(~mask, 0) if garbage == "zeros" else x, mask  # garbage: real-looking ids
    x = torch.randn(len(LENGTHS), T, C)
    fill = {"random": 100 * torch.randn_like(x), "zeros": torch.zeros_like(x), "nan": torch.full_like(x, float("nan"))}
    return torch.where(mask.unsqueeze(-1), x, fill[garbage]), mask


# --- padding never reaches the features --------------------------------------------------------------
@pytest.mark.parametrize("tokens", [False, True], ids=["series", "tokens"])
@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=_IDS)
def test_padded_sample_matches_the_sample_alone(name, kwargs, tokens):
    # Exact for every family in eval mode: packing (rnn), key padding mask + masked pooling (transformer),
    # zeroing padding before every convolution + masked pooling (conv1d: "same" padding pads with zeros too).
    model = _build(name, tokens, **kwargs)
    x, mask = _padded_batch(tokens)
    with torch.no_grad():
        batched = model.forward_features(x, mask)
        for i, length in enumerate(LENGTHS):
            alone = model.forward_features(x[i : i + 1, :length])  # no padding, no mask
            torch.testing.assert_close(batched[i], alone[0], atol=1e-5, rtol=1e-5, msg=f"sample {i} (length {length})")


@pytest.mark.parametrize("name", SEQUENCE_BACKBONES)
def test_nan_in_padding_stays_out(name):
    model = _build(name)
    x, mask = _padded_batch(tokens=False, garbage="nan")
    clean, _ = _padded_batch(tokens=False, garbage="zeros")
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x, mask), model.forward_features(clean, mask))


@pytest.mark.parametrize("name", ["lstm", "transformer", "fcn1d"])
def test_padding_is_ignored_in_training_mode_too(name):
    # rnn and transformer: exactly, with dropout off. conv1d: batch norm's training statistics include the
    # padded (zeroed) steps, so padding *amount* matters there, but padding *values* never do.
    kwargs = {"dropout": 0.0} if name == "transformer" else {}
    model = _build(name, **kwargs).train()
    zeros, mask = _padded_batch(tokens=False, garbage="zeros")
    garbage, _ = _padded_batch(tokens=False, garbage="random")
    torch.testing.assert_close(model.forward_features(garbage, mask), model.forward_features(zeros, mask))
    if name != "fcn1d":
        alone = model.forward_features(zeros[:1, : LENGTHS[0]])
        torch.testing.assert_close(model.forward_features(zeros, mask)[0], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", SEQUENCE_BACKBONES)
def test_no_mask_equals_an_all_true_mask(name):
    model = _build(name)
    x = torch.randn(2, T, C)
    with torch.no_grad():
        full = model.forward_features(x, torch.ones(2, T, dtype=torch.bool))
        torch.testing.assert_close(model.forward_features(x), full, atol=0, rtol=0)
        torch.testing.assert_close(model(x), full, atol=0, rtol=0)  # forward(x, mask=None) too


def test_mask_must_put_padding_at_the_end():
    model = _build("lstm")
    holes = torch.tensor([[True, False, True] + [True] * (T - 3)])
    with pytest.raises(DataError, match="padding goes at the end"):
        model.forward_features(torch.randn(1, T, C), holes)
    with pytest.raises(DataError, match="no real step"):
        model.forward_features(torch.randn(1, T, C), torch.zeros(1, T, dtype=torch.bool))


# --- recurrent pooling -------------------------------------------------------------------------------
def _run_layers_alone(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's raw recurrent layers on one unpadded sequence: its outputs ``(1, L, num_features)``."""
    for layer in model.layers:
        x, _ = layer(x)
    return x


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_last_pooling_takes_the_last_real_step(name, num_layers):
    model = _build(name, pool="last", num_layers=num_layers)
    x, mask = _padded_batch(tokens=False)
    with torch.no_grad():
        features = model.forward_features(x, mask)
        for i, length in enumerate(LENGTHS):
            out = _run_layers_alone(model, x[i : i + 1, :length])
            torch.testing.assert_close(features[i], out[0, length - 1], atol=1e-6, rtol=1e-5)
            if length < T:  # a naive last step of the padded tensor would have read the garbage
                naive = _run_layers_alone(model, x[i : i + 1])[0, -1]
                assert not torch.allclose(features[i], naive, atol=1e-3)


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_bidirectional_last_is_forward_last_step_and_backward_first_step(name):
    model = _build(name, pool="last", bidirectional=True)
    hidden = model.hidden_size
    x, mask = _padded_batch(tokens=False)
    with torch.no_grad():
        features = model.forward_features(x, mask)
        for i, length in enumerate(LENGTHS):
            out = _run_layers_alone(model, x[i : i + 1, :length])[0]  # (L, 2 * hidden): forward, then backward
            expected = torch.cat([out[length - 1, :hidden], out[0, hidden:]])
            torch.testing.assert_close(features[i], expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_mean_and_max_pool_the_real_steps_of_the_last_layer(pool):
    model = _build("gru", pool=pool, num_layers=2)
    x, mask = _padded_batch(tokens=False)
    with torch.no_grad():
        features = model.forward_features(x, mask)
        for i, length in enumerate(LENGTHS):
            out = _run_layers_alone(model, x[i : i + 1, :length])[0]
            expected = out.mean(0) if pool == "mean" else out.amax(0)
            torch.testing.assert_close(features[i], expected, atol=1e-6, rtol=1e-5)


def test_attention_pool_learns_a_query_and_weights_only_real_steps():
    model = _build("lstm", pool="attention")
    assert list(model.layer_groups()) == ["layer0", "pool"]
    with torch.no_grad():
        model.attention.query.copy_(torch.randn(model.num_features) * 5)
    x, mask = _padded_batch(tokens=False)
    with torch.no_grad():
        features = model.forward_features(x, mask)
        out = _run_layers_alone(model, x[:1, : LENGTHS[0]])[0]  # (L, D)
        weights = (out @ model.attention.query / model.num_features**0.5).softmax(0)
        torch.testing.assert_close(features[0], weights @ out, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(features[0], out.mean(0), atol=1e-3)  # a real weighting, not the mean


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("pool", ["last", "mean", "attention"])
def test_bidirectional_doubles_num_features(name, pool):
    one = _build(name, hidden_size=5, pool=pool)
    two = _build(name, hidden_size=5, pool=pool, bidirectional=True)
    assert (one.num_features, two.num_features) == (5, 10)
    x, mask = _padded_batch(tokens=False)
    assert two.forward_features(x, mask).shape == (len(LENGTHS), 10)


def test_stacked_layers_are_separate_groups_with_dropout_between():
    model = _build("lstm", num_layers=3, hidden_size=6, bidirectional=True, dropout=0.5)
    assert list(model.layer_groups()) == ["layer0", "layer1", "layer2"]
    assert [(m.input_size, m.hidden_size) for m in model.layers] == [(C, 6), (12, 6), (12, 6)]
    x, mask = _padded_batch(tokens=False)
    model.train()
    torch.manual_seed(0)
    a = model.forward_features(x, mask)
    b = model.forward_features(x, mask)
    assert not torch.allclose(a, b)  # dropout acts between layers in training
    model.eval()
    torch.testing.assert_close(model.forward_features(x, mask), model.forward_features(x, mask))


def test_lstm_forget_gate_bias_starts_at_one():
    model = _build("lstm", hidden_size=4)
    layer = model.layers[0]
    total = layer.bias_ih_l0 + layer.bias_hh_l0  # gates: input, forget, cell, output
    torch.testing.assert_close(total.detach(), torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 8))


# --- token input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SEQUENCE_BACKBONES)
def test_token_ids_are_embedded_with_a_zero_padding_row(name):
    model = _build(name, tokens=True)
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    assert len(embeddings) == 1 and embeddings[0].num_embeddings == VOCAB and embeddings[0].padding_idx == 0
    assert torch.equal(embeddings[0].weight[0], torch.zeros_like(embeddings[0].weight[0]))
    assert list(model.layer_groups())[0] == "embed" and embeddings[0] in model.layer_groups()["embed"].modules()
    example = model.example_input((T,))
    assert example.dtype == torch.long and example.shape == (2, T) and not example.any()
    model.train()
    x, mask = _padded_batch(tokens=True, garbage="zeros")
    feature_loss(model.forward_features(x, mask)).backward()
    grad = embeddings[0].weight.grad
    assert grad[1:].abs().max() > GRAD_FLOOR and torch.equal(grad[0], torch.zeros_like(grad[0]))  # row 0 never trains


@pytest.mark.parametrize("name", SEQUENCE_BACKBONES)
def test_input_shape_must_match_the_input_kind(name):
    with pytest.raises(ConfigError, match=r"expects time series of shape \(T, C\).*set vocab_size"):
        create_backbone(name, input_shape=(T,))
    with pytest.raises(ConfigError, match=r"expects token ids of shape \(T,\)"):
        create_backbone(name, input_shape=(T, C), vocab_size=VOCAB)


@pytest.mark.parametrize("name", SEQUENCE_BACKBONES)
def test_float_example_input_is_float_zeros(name):
    model = _build(name)
    example = model.example_input((T, C))
    assert example.dtype == torch.float32 and example.shape == (2, T, C)
    assert model(example).shape == (2, model.num_features)


# --- every parameter is reached, groups cover it once, stem to top (non-default configurations) -------
@pytest.mark.parametrize("tokens", [False, True], ids=["series", "tokens"])
@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=_IDS)
def test_gradients_and_layer_groups(name, kwargs, tokens):
    model = _build(name, tokens, **kwargs).train()
    groups = model.layer_groups()
    owners = [id(p) for module in groups.values() for p in module.parameters()]
    assert len(owners) == len(set(owners)) and set(owners) == {id(p) for p in model.parameters()}
    called: list[str] = []
    for group, module in groups.items():
        module.register_forward_pre_hook(lambda *_, g=group: called.append(g) if g not in called else None)
    x, mask = _padded_batch(tokens)
    feature_loss(model.forward_features(x, mask)).backward()
    assert called == list(groups)
    for param_name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > GRAD_FLOOR, f"{param_name} got no gradient"


# --- transformer ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("pool, max_len", [("cls", T + 1), ("mean", T)])
def test_learned_positions_refuse_a_longer_sequence(pool, max_len):
    model = _build("transformer", positional="learned", pool=pool)
    assert model.embed.pos.weight.shape[0] == max_len
    assert model.forward_features(torch.randn(2, T, C)).shape == (2, 64)  # the full length fits
    with pytest.raises(ConfigError, match=rf"a sequence of {T + 5} steps is longer than the {T} steps.*sinusoidal"):
        model.forward_features(torch.randn(2, T + 5, C))


def test_sinusoidal_positions_take_any_length_and_change_the_features():
    model = _build("transformer", positional="sinusoidal", pool="mean")
    assert model.forward_features(torch.randn(2, 3 * T, C)).shape == (2, 64)
    x = torch.randn(1, T, C)
    with torch.no_grad():  # positions make order matter: reversing the steps changes the features
        assert not torch.allclose(model.forward_features(x), model.forward_features(x.flip(1)), atol=1e-4)
    assert "embed.pos.table" not in model.state_dict()  # the fixed table is not saved


def test_transformer_is_pre_norm_with_a_final_norm_and_groups():
    model = _build("transformer", num_layers=3, d_model=16, num_heads=2)
    assert list(model.layer_groups()) == ["embed", "layer0", "layer1", "layer2", "norm"]
    assert all(layer.norm_first and layer.self_attn.batch_first for layer in model.layers)
    assert isinstance(model.norm, nn.LayerNorm) and model.num_features == 16
    with pytest.raises(ConfigError, match="d_model=16 must be a multiple of num_heads=3"):
        create_backbone("transformer", d_model=16, num_heads=3)


def test_transformer_cls_pool_reads_the_prepended_token():
    model = _build("transformer", pool="cls")
    x, mask = _padded_batch(tokens=False)
    with torch.no_grad():
        tokens, token_mask = model.forward_tokens(x, mask)
        assert tokens.shape == (len(LENGTHS), T + 1, 64) and token_mask[:, 0].all()
        torch.testing.assert_close(model.forward_features(x, mask), tokens[:, 0])


# --- conv1d --------------------------------------------------------------------------------------------
def _convs(model: nn.Module) -> list[tuple[int, int, int]]:
    return [(m.in_channels, m.out_channels, m.kernel_size[0]) for m in model.modules() if isinstance(m, nn.Conv1d)]


def test_fcn1d_is_wang_et_al_fcn():
    model = create_backbone("fcn1d", input_shape=(T, C))
    assert _convs(model) == [(C, 128, 8), (128, 256, 5), (256, 128, 3)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 3
    assert model.num_features == 128 and list(model.layer_groups()) == ["block0", "block1", "block2"]


def test_resnet1d_is_wang_et_al_resnet():
    model = create_backbone("resnet1d", input_shape=(T, C))
    main = [(C, 64, 8), (64, 64, 5), (64, 64, 3), (C, 64, 1)]  # block 0: three convs, then the 1x1 shortcut
    main += [(64, 128, 8), (128, 128, 5), (128, 128, 3), (64, 128, 1)]
    main += [(128, 128, 8), (128, 128, 5), (128, 128, 3)]  # equal channels: the shortcut is batch norm alone
    assert _convs(model) == main
    assert isinstance(model.blocks[2].shortcut, nn.BatchNorm1d)
    assert model.num_features == 128 and list(model.layer_groups()) == ["block0", "block1", "block2"]


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 8])
def test_conv1d_same_padding_keeps_length_and_pads_like_pytorch(kernel_size):
    from zoo.backbones.conv1d import ConvBN1d

    torch.manual_seed(0)
    layer = ConvBN1d(2, 3, kernel_size).eval()
    x = torch.randn(1, 2, 9)
    with warnings.catch_warnings():  # PyTorch's own "same" (it warns about a padded copy for even kernels)
        warnings.simplefilter("ignore", UserWarning)
        expected = layer.bn(F.conv1d(x, layer.conv.weight, padding="same"))
    torch.testing.assert_close(layer(x), expected)


# --- the pooling helpers ---------------------------------------------------------------------------------
def test_masked_pooling_helpers():
    x = torch.tensor([[[1.0], [3.0], [float("nan")]], [[-2.0], [-4.0], [-6.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor([[2.0], [-4.0]]))
    torch.testing.assert_close(masked_max(x, mask), torch.tensor([[3.0], [-2.0]]))
    empty = torch.zeros(2, 3, dtype=torch.bool)
    assert torch.equal(masked_mean(x, empty), torch.zeros(2, 1))
    assert torch.equal(masked_max(x, empty), torch.zeros(2, 1))


# --- registry --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SEQUENCE_BACKBONES)
def test_registered_as_sequence_backbones_that_build_without_arguments(name):
    entry = get_backbone_entry(name)
    assert entry.input_kind == "sequence" and entry.description
    assert entry.family == {"transformer": "transformer", "fcn1d": "conv1d", "resnet1d": "conv1d"}.get(name, "rnn")
    model = create_backbone(name)
    shape = tuple(entry.parameters()["input_shape"].default)
    assert model.forward_features(torch.randn(2, *shape)).shape == (2, model.num_features)


# --- learning --------------------------------------------------------------------------------------------
def _sum_sign_task(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Variable-length 2-channel sequences; the label is whether channel 0 sums to more than 0 over real steps."""
    steps = 20
    lengths = torch.randint(5, steps + 1, (n,), generator=generator)
    mask = torch.arange(steps) < lengths.unsqueeze(1)
    x = torch.randn(n, steps, 2, generator=generator)
    y = (x[..., 0] * mask).sum(1).gt(0).long()
    x = torch.where(mask.unsqueeze(-1), x, 10 * torch.randn(n, steps, 2, generator=generator))  # loud padding
    return x, mask, y


def test_lstm_learns_a_variable_length_sequence_task():
    g = torch.Generator().manual_seed(0)
    x, mask, y = _sum_sign_task(2048, g)
    x_val, mask_val, y_val = _sum_sign_task(512, g)
    torch.manual_seed(0)
    model = create_backbone("lstm", input_shape=(20, 2), hidden_size=32)
    head = nn.Linear(model.num_features, 2)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=1e-2)
    start = time.perf_counter()
    for _ in range(200):
        idx = torch.randint(0, len(y), (64,), generator=g)
        loss = F.cross_entropy(head(model.forward_features(x[idx], mask[idx])), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (head(model.forward_features(x_val, mask_val)).argmax(1) == y_val).float().mean().item()
    assert accuracy >= 0.9, f"accuracy {accuracy:.3f} after 200 steps ({time.perf_counter() - start:.1f}s)"
