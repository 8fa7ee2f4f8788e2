"""Build the provider for a key source. The one place that maps kinds to classes."""

from __future__ import annotations

import threading
from pathlib import Path

from django.conf import settings

from keys.models import KeySource, SourceKind
from keys.providers.base import KeyProvider
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


def provider_for(source: KeySource) -> KeyProvider:
    if source.kind == SourceKind.LOCAL:
        return local_provider()
    raise NotImplementedError(f"no provider for {source.kind!r} yet")
