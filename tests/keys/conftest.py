from __future__ import annotations

# The loopback AWS stand-in, for answers LocalStack cannot give.
from tests.keys.test_aws_kms_provider import fake_aws  # noqa: F401
