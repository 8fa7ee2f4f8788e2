"""Schemathesis against the served OpenAPI document, in-process through WSGI.

Every operation with generated requests and a real token of every scope, then
stateful sequences that follow the document's links (create a record, read it,
list, look it up, delete it; store an object, read it, delete it). The checks:
no 5xx, and status code, content type and body as the document says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.models import IdempotencyKey, Scope
from objects.models import StoredObject
from records.models import Record
from tests.api.conftest import issue
from tests.support.fuzz import examples

# Hostile input: a short run in `make test`, twenty times the examples in `make faults`.
pytestmark = pytest.mark.faults

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
CALLS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_calls() -> Iterator[None]:
    yield
    server_errors = CALLS["5xx"]
    print(f"\nschemathesis: {CALLS['calls']} calls, {server_errors} answered 5xx")


@pytest.fixture
def token(acme: Any) -> str:
    return issue(acme.tenant, [str(scope) for scope in Scope]).text


@pytest.fixture(autouse=True)
def _keep_the_test_connection(transactional_db: None) -> Iterator[None]:
    """Requests commit or roll back as in production (no test transaction around
    them: a refused create rolls back its own transaction, as it does there), and
    the connection stays open between them, as Django's test client keeps it."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


# The document is served without the database, so it loads when the tests are
# collected, as a client would fetch it.
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application())


def _counted(response: Any, case: Any = None) -> Any:
    CALLS["calls"] += 1
    if case is not None:
        CALLS[f"{case.method} {case.path} {response.status_code}"] += 1
    if response.status_code >= 500:
        CALLS["5xx"] += 1
    return response


@schema.parametrize()
@hypothesis.settings(
    max_examples=examples(6),
    # Schemathesis builds its own settings: the profile's choices, said again.
    suppress_health_check=list(hypothesis.HealthCheck),
    deadline=None,
    database=None,
)
def test_every_operation_conforms_to_the_document(case: Any, token: str) -> None:
    response = _counted(case.call(headers={"Authorization": f"Bearer {token}"}), case)
    case.validate_response(response, checks=CHECKS)


def test_stateful_sequences_follow_the_links(acme: Any, token: str) -> None:
    """Create, read, list, look up and delete records; store, read and delete objects."""
    links = {
        name
        for path in schema.raw_schema["paths"].values()
        for operation in path.values()
        if isinstance(operation, dict)
        for response in operation.get("responses", {}).values()
        for name in response.get("links", {})
    }
    assert {"GetRecord", "DeleteRecord", "LookUpByName", "GetObject", "DeleteObject"} <= links

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Each scenario starts from an empty tenant. Which links can be
            # followed depends on what the answers hold (a list with records in
            # it, a replayed Idempotency-Key): left over from the scenario before,
            # the same choices would lead elsewhere, and Hypothesis stops the run
            # as inconsistent data generation.
            Record.objects.filter(tenant=acme.tenant).delete()
            StoredObject.objects.filter(tenant=acme.tenant).delete()
            IdempotencyKey.objects.filter(tenant=acme.tenant).delete()

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": {"Authorization": f"Bearer {token}"}}

        def call(self, case: Any, **kwargs: Any) -> Any:
            return _counted(case.call(**kwargs), case)

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

    before = CALLS["calls"]
    Machine.run(
        settings=hypothesis.settings(
            max_examples=examples(8),
            stateful_step_count=6,
            # The same scenarios every run: the links-followed check below must
            # not depend on luck.
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
            deadline=None,
            database=None,
        )
    )
    assert CALLS["calls"] - before >= 10
    # The links were followed: records created were then read, and deleted.
    followed = {k.rsplit(" ", 1)[0] for k, n in CALLS.items() if k.endswith((" 200", " 204"))}
    assert {"GET /records/{id}", "DELETE /records/{id}"} <= followed
