"""Reads of keys, by concern: `sources` (key sources, versions, saved settings) and
`overview` (what the Keys pages show). Import from the module, not from here:
the registry reads `sources`, and `overview` builds on the registry."""
