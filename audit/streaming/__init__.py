"""Streaming a tenant's audit trail to its SIEM: syslog over TLS or a signed HTTPS webhook.

Not part of audit's core (models, chain, record): it sends events out, and
it learns how to seal a secret and how to check an address from the layer
that knows (see `hooks`).
"""
