"""The memory benchmark's baseline: a bare streaming upload and download beside the product.

PUT reads the request body in 1 MiB pieces into a file, GET answers with a
FileResponse of that file: what a plain Django view that never holds a body
whole costs in memory on the same gunicorn worker. No authentication, no
encryption, no database: served only by `bench.memory_settings`, which is
refused in production mode, and used only by bench/bench_memory.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from console import urls

READ_SIZE = 1024 * 1024


def _file(name: str) -> Path:
    root = Path(os.environ["BENCH_MEMORY_BARE_ROOT"])
    return root / Path(name).name


@csrf_exempt
def bare_object(request: HttpRequest, name: str) -> HttpResponse | FileResponse:
    target = _file(name)
    if request.method == "PUT":
        size = 0
        with target.open("wb") as out:
            while chunk := request.read(READ_SIZE):
                out.write(chunk)
                size += len(chunk)
        return JsonResponse({"size": size}, status=201)
    return FileResponse(target.open("rb"), content_type="application/octet-stream")


urlpatterns: list[Any] = [
    path("bench/bare-object/<str:name>", bare_object),
    *urls.urlpatterns,
]
