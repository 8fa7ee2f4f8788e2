from __future__ import annotations

# The API client fixtures (and through them LocalStack as AWS KMS) of the API tests.
from tests.api.conftest import api, api_for, aws_env, byok, fake_aws  # noqa: F401
