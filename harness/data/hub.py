"""Hub access that fails fast offline: one check of the route to the hub instead of minutes of retries."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("rope_harness")


def use_cache_if_hub_unreachable() -> None:
    """No route to the hub: read the local hub cache only, as HF_HUB_OFFLINE=1 would, instead of ~25 s of
    retries and a screen of warnings before the same one-line error (or the same cached files)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
    except OSError:
        log.info("%s is unreachable: using the local hub cache only", constants.ENDPOINT)
        constants.HF_HUB_OFFLINE = True
        datasets_config = sys.modules.get("datasets.config")  # datasets keeps its own copy of the flag
        if datasets_config is not None and hasattr(datasets_config, "HF_HUB_OFFLINE"):
            datasets_config.HF_HUB_OFFLINE = True
