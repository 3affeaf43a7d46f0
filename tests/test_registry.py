"""The backbone registry: registration, look-up by name and pattern, and the errors a user sees."""

from __future__ import annotations

import pytest
from torch import nn

import zoo.backbones  # noqa: F401  (registers the built-ins before any test registers its own)
from zoo.errors import ConfigError
from zoo.registry import (
    _REGISTRY,
    check_backbone_kwargs,
    create_backbone,
    get_backbone_entry,
    list_backbones,
    register_backbone,
)


@pytest.fixture
def scratch_registry():
    """Lets a test register names; whatever it adds is removed afterwards, so nothing leaks."""
    before = set(_REGISTRY)
    try:
        yield
    finally:
        for name in set(_REGISTRY) - before:
            del _REGISTRY[name]


def _tiny(input_shape: tuple[int, ...] = (4,), width: int = 3) -> nn.Module:
    """A tiny test backbone."""
    return nn.Linear(input_shape[0], width)


def test_register_records_entry_and_first_doc_line(scratch_registry):
    register_backbone("zz_tiny", family="test", input_kind="vector")(_tiny)
    entry = get_backbone_entry("zz_tiny")
    assert (entry.name, entry.family, entry.input_kind, entry.description) == (
        "zz_tiny",
        "test",
        "vector",
        "A tiny test backbone.",
    )
    assert list(entry.parameters()) == ["input_shape", "width"]
    assert create_backbone("zz_tiny", width=5).out_features == 5


def test_register_defaults_to_function_name(scratch_registry):
    register_backbone(family="test", input_kind="vector")(_tiny)
    assert "_tiny" in list_backbones()


def test_duplicate_name_raises_and_keeps_original(scratch_registry):
    original = get_backbone_entry("mlp")
    with pytest.raises(ValueError, match="'mlp' is already registered by zoo.backbones.mlp"):
        register_backbone("mlp", family="test", input_kind="vector")(_tiny)
    assert get_backbone_entry("mlp") is original


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ConfigError, match=r"unknown backbone 'cnnn'\. Did you mean 'cnn'"):
        create_backbone("cnnn")


def test_unknown_name_without_close_match_gives_no_suggestion():
    with pytest.raises(ConfigError) as err:
        get_backbone_entry("qqq_zzz")
    assert "Did you mean" not in str(err.value)
    assert "zoo models" in str(err.value)


def test_list_backbones_filters_with_shell_pattern_and_sorts(scratch_registry):
    for name in ("cz_last", "ca_first"):
        register_backbone(name, family="test", input_kind="vector")(_tiny)
    assert list_backbones("c*") == ["ca_first", "cnn", "cz_last"]
    assert list_backbones("m?p") == ["mlp"]
    everything = list_backbones()
    assert everything == sorted(everything) and {"cnn", "mlp", "ca_first"} <= set(everything)


def test_list_backbones_without_match_is_empty():
    assert list_backbones("nothing_like_this*") == []


def test_misspelled_kwarg_names_key_and_suggests():
    with pytest.raises(ConfigError) as err:
        check_backbone_kwargs("mlp", {"hidden_sizes": (4,), "hiden_sizes": (8,)})
    message = str(err.value)
    assert "'hiden_sizes'" in message and "Did you mean 'hidden_sizes'?" in message
    assert "input_shape" not in message  # linked from the data, never the user's to set


def test_create_backbone_checks_kwargs_before_building():
    with pytest.raises(ConfigError, match=r"'mlp' does not take the argument 'hiden_sizes'.*'hidden_sizes'"):
        create_backbone("mlp", hiden_sizes=(8,))


def test_valid_kwargs_pass_through():
    model = create_backbone("mlp", input_shape=(3,), hidden_sizes=(7, 5))
    assert model.num_features == 5


def test_var_keyword_factory_accepts_any_kwarg(scratch_registry):
    @register_backbone("zz_open", family="test", input_kind="vector")
    def zz_open(**kwargs) -> nn.Module:
        return nn.Linear(2, kwargs["width"])

    check_backbone_kwargs("zz_open", {"anything": 1})
    assert create_backbone("zz_open", width=4, anything=1).out_features == 4


def test_pretrained_without_weights_raises():
    with pytest.raises(ConfigError, match="'mlp' has no pretrained weights"):
        create_backbone("mlp", pretrained=True)


def test_pretrained_is_passed_to_factories_that_take_it(scratch_registry):
    @register_backbone("zz_pretrained", family="test", input_kind="vector")
    def zz_pretrained(pretrained: bool = False) -> nn.Module:
        layer = nn.Linear(2, 2)
        layer.loaded = pretrained
        return layer

    assert create_backbone("zz_pretrained", pretrained=True).loaded is True
    assert create_backbone("zz_pretrained").loaded is False
