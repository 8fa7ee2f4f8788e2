"""The vendor root key of this process and the vendor-managed provider built on it.

Kept apart from the registry so the vault (which seals under the root key) and
the registry (which unseals customers' credentials) both sit above it.
"""

from __future__ import annotations

import threading
from pathlib import Path

from django.conf import settings

from keys.providers.local import LocalProvider, RootKeyFile

_root_lock = threading.Lock()
_root: RootKeyFile | None = None


def root_key_file() -> RootKeyFile:
    """The vendor root key file of this process, created on first use."""
    global _root
    path = Path(settings.KEYWARD_ROOT_KEY_FILE)
    with _root_lock:
        if _root is None or _root.path != path:
            root = RootKeyFile(path)
            root.ensure()
            _root = root
        return _root


def local_provider() -> LocalProvider:
    return LocalProvider(root_key_file())
