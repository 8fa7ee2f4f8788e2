"""The OpenAPI 3.1 description of /api/v1/, served at /api/v1/openapi.json.

Hand-written: the API is small, and a document kept beside the code reads
better than one derived from it. The error codes come from `api.errors`, so
a code added there is documented here; the record vocabulary is passed in;
tests check that every route is.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from api.errors import ERROR_CODES
from api.models import Scope
from audit.export import COLUMNS
from audit.models import ActorKind, Outcome

# The record kinds with their fields, and the fields lookups may use: the data
# apps own them and the shell passes them in (console.views.openapi_json).
FieldsByKind = Mapping[str, Sequence[str]]


def _error(*codes: str) -> dict[str, Any]:
    described = "; ".join(f"`{c}`: {ERROR_CODES[c][1]}" for c in codes)
    return {
        "description": described,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _retry(*codes: str) -> dict[str, Any]:
    response = _error(*codes)
    response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    return response


def _responses(ok: dict[str, Any], *, write: bool, extra: dict[str, Any] | None = None) -> Any:
    responses: dict[str, Any] = {
        **ok,
        "401": _error("unauthorized"),
        "403": _error("forbidden", "key_revoked"),
        "405": _error("method_not_allowed"),
        "503": _retry("paused", "migrating", "key_unavailable")
        if write
        else _retry("key_unavailable"),
    }
    responses.update(extra or {})
    return dict(sorted(responses.items()))


def _security(scope: str) -> list[dict[str, list[str]]]:
    return [{"bearer": [scope]}]


RECORD_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
# What a client can do next with what it was given: OpenAPI links, which also
# let a fuzzer chain create, read, look up and delete.
RECORD_LINKS = {
    "GetRecord": {"operationId": "getRecord", "parameters": {"id": "$response.body#/id"}},
    "DeleteRecord": {"operationId": "deleteRecord", "parameters": {"id": "$response.body#/id"}},
    "ListRecordsOfKind": {
        "operationId": "listRecords",
        "parameters": {"kind": "$response.body#/kind"},
    },
    "LookUpByName": {
        "operationId": "listRecords",
        "parameters": {"field": "name", "value": "$response.body#/fields/name"},
    },
}
OBJECT_LINKS = {
    name: {"operationId": operation, "parameters": {"key": "$request.path.key"}}
    for name, operation in (
        ("GetObject", "getObject"),
        ("HeadObject", "headObject"),
        ("DeleteObject", "deleteObject"),
    )
}
OBJECT_KEY = {
    "name": "key",
    "in": "path",
    "required": True,
    "description": "Object key: 1 to 1024 bytes of UTF-8; `/` allowed.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 1024},
}
OBJECT_HEADERS = {
    "ETag": {
        "description": "Quoted hex SHA-256 of the plaintext.",
        "schema": {"type": "string"},
    },
    "X-Content-SHA256": {
        "description": "Hex SHA-256 of the plaintext (as stored at PUT).",
        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
    "Content-Length": {"schema": {"type": "integer"}},
}


AUDIT_EVENTS = {
    "get": {
        "operationId": "listAuditEvents",
        "summary": "The tenant's audit events in chain order, for a SIEM to pull.",
        "description": "Events oldest first (by `seq`), each with its `hash` and "
        "`prev_hash`: an event's `prev_hash` is the previous event's `hash` (64 zeros "
        "for the first), so a client can check that it holds the chain without a gap. "
        "Keep the last `next` and poll with it as `after`: it resumes exactly after the "
        "last event returned (on an empty page it is the cursor sent), so no event is "
        "missed or repeated. Fewer events than `limit` means the client has caught up. "
        "Reads are not themselves audited (polling would grow the trail forever); "
        "creating a token with `audit:read` is. The trail stays readable when the "
        "tenant's key is revoked.",
        "security": _security(Scope.AUDIT_READ),
        "parameters": [
            {
                "name": "after",
                "in": "query",
                "description": "Opaque: the `next` of a previous response, unchanged. "
                "Omit it to read from the start of the trail.",
                "schema": {"type": "string"},
            },
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
            },
        ],
        "responses": {
            "200": {
                "description": "A page of events.",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/AuditEventPage"}}
                },
            },
            "400": _error("invalid_cursor", "invalid_field"),
            "401": _error("unauthorized"),
            "403": _error("forbidden"),
            "405": _error("method_not_allowed"),
        },
    }
}
AUDIT_EVENT = {
    "type": "object",
    "description": "One audit event, as the console's CSV and JSON Lines exports give it.",
    # The export's columns: the API and the exports give the same members.
    "required": list(COLUMNS),
    "properties": {
        "seq": {"type": "integer", "minimum": 1, "description": "Position in the chain."},
        "time": {"type": "string", "format": "date-time"},
        "actor_kind": {"type": "string", "enum": sorted(ActorKind.values)},
        "actor_id": {"type": "string"},
        "actor_display": {"type": "string"},
        "action": {"type": "string", "examples": ["api_token.create"]},
        "target": {"type": "string"},
        "outcome": {"type": "string", "enum": sorted(Outcome.values)},
        "reason": {"type": "string"},
        "ip": {"type": ["string", "null"]},
        "user_agent": {"type": "string"},
        "request_id": {"type": "string"},
        "details": {"type": "object"},
        "prev_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "hash": {
            "type": "string",
            "pattern": "^[0-9a-f]{64}$",
            "description": "SHA-256 over the canonical event and `prev_hash`.",
        },
    },
}


def _paths(fields_by_kind: FieldsByKind, indexed_fields: Collection[str]) -> dict[str, Any]:
    record_ref = {"$ref": "#/components/schemas/Record"}
    return {
        "/audit/events": AUDIT_EVENTS,
        "/records": {
            "post": {
                "operationId": "createRecord",
                "summary": "Create a record; its fields are encrypted and indexed.",
                "security": _security(Scope.RECORDS_WRITE),
                "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/NewRecord"}}
                    },
                },
                "responses": _responses(
                    {
                        "201": {
                            "description": "Created (or, with a replayed Idempotency-Key, "
                            "the first result again, with `Idempotent-Replayed: true`).",
                            "headers": {
                                "Location": {"schema": {"type": "string"}},
                                "Idempotent-Replayed": {"schema": {"type": "string"}},
                            },
                            "content": {"application/json": {"schema": record_ref}},
                            "links": RECORD_LINKS,
                        }
                    },
                    write=True,
                    extra={
                        "400": _error(
                            "invalid_json",
                            "invalid_field",
                            "unknown_kind",
                            "invalid_idempotency_key",
                        ),
                        "409": _error("conflict", "idempotency_key_reused"),
                        "413": _error("too_large"),
                    },
                ),
            },
            "get": {
                "operationId": "listRecords",
                "summary": "List records oldest first, or look them up by a field's exact value.",
                "description": "With `field` and `value`, returns the records whose field "
                "equals the value after normalisation (emails lowercased, SIDs and serials "
                "uppercased, names NFKC-casefolded with spaces collapsed), found through a "
                "blind index (HMAC-SHA-256 under a per-tenant key); no plaintext is stored "
                "or compared.",
                "security": _security(Scope.RECORDS_READ),
                "parameters": [
                    {
                        "name": "kind",
                        "in": "query",
                        "schema": {"type": "string", "enum": sorted(fields_by_kind)},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "description": "Opaque: the `next_cursor` of the previous page.",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "field",
                        "in": "query",
                        "schema": {"type": "string", "enum": sorted(indexed_fields)},
                    },
                    {"name": "value", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": _responses(
                    {
                        "200": {
                            "description": "A page of records.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/RecordPage"}
                                }
                            },
                        }
                    },
                    write=False,
                    extra={"400": _error("invalid_field", "unknown_kind", "invalid_cursor")},
                ),
            },
        },
        "/records/batch": {
            "post": {
                "operationId": "createRecords",
                "summary": "Create up to 500 records at once: all of them or none.",
                "description": "Each record is checked like a single create; an error names "
                "the offending one in `field` (e.g. `records[3].fields.email`). One transaction "
                "and one bulk insert, so a batch costs far less than its records one by one.",
                "security": _security(Scope.RECORDS_WRITE),
                "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["records"],
                                "additionalProperties": False,
                                "properties": {
                                    "records": {
                                        "type": "array",
                                        "minItems": 1,
                                        "maxItems": 500,
                                        "items": {"$ref": "#/components/schemas/NewRecord"},
                                    }
                                },
                            }
                        }
                    },
                },
                "responses": _responses(
                    {
                        "201": {
                            "description": "Created, in the order sent (or, with a replayed "
                            "Idempotency-Key, the first result again).",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "records": {"type": "array", "items": record_ref}
                                        },
                                    }
                                }
                            },
                        }
                    },
                    write=True,
                    extra={
                        "400": _error(
                            "invalid_json",
                            "invalid_field",
                            "unknown_kind",
                            "invalid_idempotency_key",
                        ),
                        "409": _error("conflict", "idempotency_key_reused"),
                        "413": _error("too_large"),
                    },
                ),
            },
        },
        "/records/{id}": {
            "parameters": [RECORD_ID],
            "get": {
                "operationId": "getRecord",
                "summary": "Read one record with its decrypted fields.",
                "security": _security(Scope.RECORDS_READ),
                "responses": _responses(
                    {
                        "200": {
                            "description": "The record.",
                            "content": {"application/json": {"schema": record_ref}},
                            "links": {"DeleteRecord": RECORD_LINKS["DeleteRecord"]},
                        }
                    },
                    write=False,
                    extra={"404": _error("not_found")},
                ),
            },
            "delete": {
                "operationId": "deleteRecord",
                "summary": "Delete a record and its lookup entries.",
                "security": _security(Scope.RECORDS_WRITE),
                "responses": _responses(
                    {"204": {"description": "Deleted."}},
                    write=True,
                    extra={"400": _error("invalid_field"), "404": _error("not_found")},
                ),
            },
        },
        "/objects/{key}": {
            "parameters": [OBJECT_KEY],
            "put": {
                "operationId": "putObject",
                "summary": "Store a blob (streamed, encrypted in authenticated segments).",
                "security": _security(Scope.OBJECTS_WRITE),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/octet-stream": {
                            "schema": {
                                "type": "string",
                                "contentMediaType": "application/octet-stream",
                            }
                        }
                    },
                },
                "responses": _responses(
                    {
                        status: {
                            "description": description,
                            "headers": OBJECT_HEADERS,
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Object"}
                                }
                            },
                            "links": OBJECT_LINKS,
                        }
                        for status, description in (
                            ("200", "Replaced an existing object."),
                            ("201", "Stored a new object."),
                        )
                    },
                    write=True,
                    extra={"400": _error("invalid_field"), "413": _error("too_large")},
                ),
            },
            "get": {
                "operationId": "getObject",
                "summary": "Read a blob (streamed, decrypted and verified segment by segment).",
                "security": _security(Scope.OBJECTS_READ),
                "responses": _responses(
                    {
                        "200": {
                            "description": "The plaintext.",
                            "headers": OBJECT_HEADERS,
                            "content": {"application/octet-stream": {}},
                        },
                        "304": {
                            "description": "Not modified (`If-None-Match` names the ETag).",
                            "headers": OBJECT_HEADERS,
                        },
                    },
                    write=False,
                    extra={"404": _error("not_found")},
                ),
            },
            "head": {
                "operationId": "headObject",
                "summary": "The blob's size and checksums, without the body.",
                "security": _security(Scope.OBJECTS_READ),
                "responses": _responses(
                    {"200": {"description": "Metadata only.", "headers": OBJECT_HEADERS}},
                    write=False,
                    extra={"404": {"description": "No such object (HEAD has no body)."}},
                ),
            },
            "delete": {
                "operationId": "deleteObject",
                "summary": "Delete a blob.",
                "security": _security(Scope.OBJECTS_WRITE),
                "responses": _responses(
                    {"204": {"description": "Deleted."}},
                    write=True,
                    extra={"400": _error("invalid_field"), "404": _error("not_found")},
                ),
            },
        },
    }


def _components(fields_by_kind: FieldsByKind) -> dict[str, Any]:
    field_names = sorted({f for fields in fields_by_kind.values() for f in fields})
    return {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A tenant API token `kw_<prefix>_<secret>`, made by an owner on "
                "the console's Data page, with scopes "
                + ", ".join(f"`{s}`" for s in Scope.values)
                + ".",
            }
        },
        "headers": {
            "RetryAfter": {
                "description": "Seconds to wait before retrying (with the same Idempotency-Key).",
                "schema": {"type": "integer"},
            }
        },
        "parameters": {
            "IdempotencyKey": {
                "name": "Idempotency-Key",
                "in": "header",
                "description": "Any unique string (a UUID) per logical create. A retry with the "
                "same key and body returns the first result and never stores twice; with "
                "another body it is a 409 `idempotency_key_reused`. Keys expire after 24 hours.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string", "enum": sorted(ERROR_CODES)},
                            "message": {"type": "string"},
                            "field": {
                                "type": "string",
                                "description": "The offending member, parameter or header "
                                "(`fields.email`, `limit`, `Idempotency-Key`).",
                            },
                        },
                    }
                },
                "x-error-codes": {
                    code: {"status": status, "description": text}
                    for code, (status, text) in sorted(ERROR_CODES.items())
                },
            },
            "NewRecord": {
                "type": "object",
                "additionalProperties": False,
                "required": ["kind", "external_id"],
                "properties": {
                    "kind": {"type": "string", "enum": sorted(fields_by_kind)},
                    "external_id": {"type": "string", "minLength": 1, "maxLength": 255},
                    "fields": {
                        "type": "object",
                        "description": "Personal fields; allowed names per kind: "
                        + "; ".join(f"{k}: {', '.join(v)}" for k, v in fields_by_kind.items()),
                        "propertyNames": {"enum": field_names},
                        "additionalProperties": {"type": "string"},
                    },
                },
            },
            "Record": {
                "type": "object",
                "required": ["id", "kind", "external_id", "fields", "created"],
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "kind": {"type": "string", "enum": sorted(fields_by_kind)},
                    "external_id": {"type": "string"},
                    "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                    "created": {"type": "string", "format": "date-time"},
                },
            },
            "RecordPage": {
                "type": "object",
                "required": ["data", "next_cursor"],
                "properties": {
                    "data": {"type": "array", "items": {"$ref": "#/components/schemas/Record"}},
                    "next_cursor": {"type": ["string", "null"]},
                },
            },
            "AuditEvent": AUDIT_EVENT,
            "AuditEventPage": {
                "type": "object",
                "required": ["events", "next"],
                "properties": {
                    "events": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/AuditEvent"},
                    },
                    "next": {
                        "type": ["string", "null"],
                        "description": "Pass it as `after` to resume; null only for an "
                        "empty trail read from its start.",
                    },
                },
            },
            "Object": {
                "type": "object",
                "properties": {
                    "key": {"type": "string"},
                    "size": {"type": "integer"},
                    "sha256": {"type": "string"},
                    "created": {"type": "string", "format": "date-time"},
                },
            },
        },
    }


def openapi_document(
    *, fields_by_kind: FieldsByKind, indexed_fields: Collection[str]
) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Keyward tenant data API",
            "version": "1",
            "description": "Store and read a tenant's protected records and objects, and "
            "pull its audit trail. Every record and object is encrypted under the tenant's "
            "data keys (customer-managed when the tenant brought its key). Errors are "
            '`{"error": {"code", "message", "field"?}}`; the codes are listed under `Error`.',
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": _paths(fields_by_kind, indexed_fields),
        "components": _components(fields_by_kind),
    }
