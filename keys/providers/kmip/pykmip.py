"""PyKMIP, imported once and quietly; the other modules take its names from here."""

from __future__ import annotations

import warnings

# `import kmip` loads SQLAlchemy models declared the pre-2.0 way, which warns once.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kmip.core import enums
    from kmip.core.enums import KMIPVersion
    from kmip.pie.client import ProxyKmipClient
    from kmip.pie.exceptions import KmipOperationFailure
    from kmip.services.kmip_client import KMIPProxy
    from kmip.services.kmip_protocol import KMIPProtocol, RequestLengthMismatch

__all__ = [
    "KMIPProtocol",
    "KMIPProxy",
    "KMIPVersion",
    "KmipOperationFailure",
    "ProxyKmipClient",
    "RequestLengthMismatch",
    "enums",
]
