"""Hostile wrapped-key uploads through the console: refused on the form, nothing kept."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import importkit
from keys.models import ImportState, KekVersion, KeyImport, SourceKind
from keys.runtime import reset_for_tests
from tests.conftest import login
from tests.support.fuzz import examples, mutated

# Hostile input: a short run in `make test`, twenty times the examples in `make faults`.
pytestmark = pytest.mark.faults


@pytest.fixture(autouse=True)
def _fresh_envelope():
    reset_for_tests()
    yield
    reset_for_tests()


@pytest.fixture
def upload_page(acme: Any) -> dict[str, Any]:
    client = login(acme.owner, sudo=True)
    response = client.post(reverse("keys:import_parameters", args=["acme"]))
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(response.content)) as bundle:
        token = bundle.read("ImportToken.bin")
    return {"client": client, "token": token}


# A blob of the right size makes the server load the import's RSA-4096 key
# (about half a second), so few examples; most are refused on their size.
@settings(max_examples=examples(10))
@given(data=st.data())
def test_any_upload_is_refused_on_the_form_and_keeps_nothing(
    upload_page: dict[str, Any], data: st.DataObject
) -> None:
    good_token = upload_page["token"]
    wrapped = data.draw(
        st.one_of(
            st.binary(max_size=700),
            st.binary(min_size=importkit.WRAPPED_KEY_BYTES, max_size=importkit.WRAPPED_KEY_BYTES),
        ),
        label="wrapped key",
    )
    token = data.draw(st.one_of(st.just(good_token), mutated(good_token), st.binary(max_size=300)))
    expires = data.draw(
        st.one_of(
            st.just(""),
            st.text(max_size=30),
            st.datetimes().map(lambda moment: moment.isoformat(timespec="minutes")),
        ),
        label="expires_at",
    )
    response = upload_page["client"].post(
        reverse("keys:upload_key", args=["acme"]),
        {
            "wrapped_key": SimpleUploadedFile("CustomerEncryptionKey.bin", wrapped),
            "token": SimpleUploadedFile("ImportToken.bin", token),
            "expires_at": expires,
        },
    )
    assert response.status_code in (200, 400), response.status_code
    assert not KekVersion.objects.filter(source__kind=SourceKind.UPLOADED).exists()
    assert KeyImport.objects.get().state == ImportState.OPEN  # the token was not used up
