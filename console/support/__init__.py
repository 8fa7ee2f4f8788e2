"""The vendor's support console: every tenant's key metadata, and the few actions support may take.

Here, in the shell, because a row needs what records and objects hold (their
counts) beside what keys and tenants know. Support never sees key material,
record fields, object contents or token secrets, and never changes a key.
"""
