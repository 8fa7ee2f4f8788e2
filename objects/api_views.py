"""The objects API: PUT, GET, HEAD and DELETE of a tenant's blobs at /api/v1/objects/<key>.

Bodies stream both ways: a PUT is read from the request in 1 MiB pieces and
encrypted as it arrives; a GET decrypts segment by segment into a streaming
response. `ETag` is the quoted plaintext SHA-256, also sent bare as
`X-Content-SHA256`.
"""

from __future__ import annotations

from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from api.auth import api_endpoint, no_content
from api.errors import ApiError
from objects.models import StoredObject
from objects.services import (
    DEFAULT_CONTENT_TYPE,
    ObjectNotFound,
    ObjectTooLarge,
    max_object_bytes,
    object_delete,
    object_head,
    object_open,
    object_put,
)
from objects.storage import InvalidKey, ObjectMissing, StorageError, validate_key

READ_SIZE = 1024 * 1024


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "No such object.")


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"An object is at most {limit} bytes.")


def _storage_error() -> ApiError:
    return ApiError(
        503,
        "storage_unavailable",
        "The object storage cannot be reached; retry later.",
        headers={"Retry-After": "5"},
    )


def _headers(response: HttpResponseBase, obj: StoredObject) -> None:
    if obj.sha256:  # forgotten when the tenant's keys were crypto-shredded
        response["ETag"] = obj.etag
        response["X-Content-SHA256"] = obj.sha256
    response["Last-Modified"] = obj.updated.strftime("%a, %d %b %Y %H:%M:%S GMT")


def _body(request: HttpRequest) -> Iterator[bytes]:
    while True:
        chunk = request.read(READ_SIZE)
        if not chunk:
            return
        yield chunk


def _describe(obj: StoredObject) -> dict[str, object]:
    return {
        "key": obj.key,
        "size": obj.size,
        "sha256": obj.sha256,
        "content_type": obj.content_type,
        "updated": obj.updated.isoformat(),
    }


@api_endpoint("objects:write", methods=("PUT",))
def object_upload(request: HttpRequest, key: str) -> HttpResponse:
    tenant = request.tenant  # type: ignore[attr-defined]
    limit = max_object_bytes()
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.strip().isascii() and declared.strip().isdigit() and int(declared) > limit:
        raise _too_large(limit)
    content_type = request.META.get("CONTENT_TYPE") or DEFAULT_CONTENT_TYPE
    try:
        # Before the query below: PostgreSQL refuses a key with a NUL in it.
        validate_key(key)
        existed = StoredObject.objects.filter(tenant=tenant, key=key).exists()
        obj = object_put(tenant=tenant, key=key, chunks=_body(request), content_type=content_type)
    except InvalidKey as exc:
        raise ApiError(400, "invalid_field", str(exc), field="key") from None
    except ObjectTooLarge as exc:
        raise _too_large(exc.limit) from None
    except ValueError as exc:
        raise ApiError(400, "invalid_field", str(exc), field="content_type") from None
    except StorageError:
        raise _storage_error() from None
    response = JsonResponse(_describe(obj), status=200 if existed else 201)
    _headers(response, obj)
    return response


@api_endpoint("objects:read", methods=("GET",))
def object_download(request: HttpRequest, key: str) -> HttpResponseBase:
    tenant = request.tenant  # type: ignore[attr-defined]
    try:
        obj = object_head(tenant=tenant, key=key)
        match = request.META.get("HTTP_IF_NONE_MATCH", "")
        if match and obj.sha256 and match in (obj.etag, obj.sha256):
            response: HttpResponseBase = HttpResponse(status=304)
            _headers(response, obj)
            return response
        obj, stream = object_open(tenant=tenant, key=key)
    except ObjectNotFound:
        raise _not_found() from None
    except ObjectMissing:
        raise _storage_error() from None
    except StorageError:
        raise _storage_error() from None
    # A segment that fails to authenticate raises mid-stream: the server then
    # aborts the connection, so a client never takes a cut body as complete.
    response = StreamingHttpResponse(stream, content_type=obj.content_type)
    response["Content-Length"] = str(obj.size)
    _headers(response, obj)
    return response


@api_endpoint("objects:read", methods=("HEAD",))
def object_metadata(request: HttpRequest, key: str) -> HttpResponse:
    try:
        obj = object_head(tenant=request.tenant, key=key)  # type: ignore[attr-defined]
    except ObjectNotFound:
        raise _not_found() from None
    response = HttpResponse(content_type=obj.content_type)
    response["Content-Length"] = str(obj.size)
    _headers(response, obj)
    return response


@api_endpoint("objects:write", methods=("DELETE",))
def object_remove(request: HttpRequest, key: str) -> HttpResponse:
    try:
        object_delete(tenant=request.tenant, key=key)  # type: ignore[attr-defined]
    except ObjectNotFound:
        raise _not_found() from None
    except InvalidKey as exc:
        raise ApiError(400, "invalid_field", str(exc), field="key") from None
    except StorageError:
        raise _storage_error() from None
    return no_content()
