from __future__ import annotations

import uuid
from typing import Any

import pytest

from objects import locations
from objects.locations import current_location, dedicated_name, storage_for
from objects.migration import migration_run, migration_start
from objects.models import Direction, Location, MigrationState, StoredObject
from objects.services import object_open, object_put
from objects.storage import FilesystemStorage
from tenants.models import ServiceState
from tests.keys.conftest import VENDOR_ACCOUNT, aws_env, byok  # noqa: F401
from tests.objects.conftest import new_target_dek, set_state
from tests.support.aws import aws_endpoint, boto_client


def test_filesystem_locations(acme: Any, globex: Any, object_root: Any) -> None:
    shared = storage_for(acme.tenant, Location.SHARED)
    dedicated = storage_for(acme.tenant, Location.DEDICATED)
    assert isinstance(shared, FilesystemStorage) and isinstance(dedicated, FilesystemStorage)
    assert shared.root == object_root / "shared" / "tenants" / str(acme.tenant.pk)
    assert dedicated.root == object_root / "dedicated" / str(acme.tenant.pk)
    other = storage_for(globex.tenant, Location.SHARED)
    assert isinstance(other, FilesystemStorage) and other.root != shared.root
    assert current_location(acme.tenant) == Location.SHARED
    with pytest.raises(ValueError):
        storage_for(acme.tenant, "elsewhere")


@pytest.fixture
def s3(settings: Any, aws_env: None) -> str:  # noqa: F811
    settings.KEYWARD_OBJECT_STORE = "s3"
    settings.KEYWARD_OBJECT_S3_ENDPOINT_URL = aws_endpoint()
    settings.KEYWARD_OBJECT_S3_BUCKET = f"keyward-shared-{uuid.uuid4().hex[:8]}"
    settings.KEYWARD_OBJECT_S3_DEDICATED_PREFIX = f"kw-{uuid.uuid4().hex[:8]}"
    locations.forget()
    return str(settings.KEYWARD_OBJECT_S3_BUCKET)


@pytest.mark.django_db(transaction=True)
def test_a_byok_tenant_on_aws_kms_gets_a_bucket_encrypted_with_its_key(s3: str, byok: Any) -> None:  # noqa: F811
    tenant = byok["acme"].tenant
    assert current_location(tenant) == Location.DEDICATED
    obj = object_put(tenant=tenant, key="reports/q1.csv", chunks=[b"a,b\n1,2\n"])
    assert obj.location == Location.DEDICATED
    client = boto_client("s3", VENDOR_ACCOUNT)
    bucket = dedicated_name(tenant)
    rule = client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"][
        "Rules"
    ][0]["ApplyServerSideEncryptionByDefault"]
    assert rule == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": byok["key_arn"]}
    head = client.head_object(Bucket=bucket, Key=obj.blob)
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == byok["key_arn"]
    _obj, stream = object_open(tenant=tenant, key="reports/q1.csv")
    assert b"".join(stream) == b"a,b\n1,2\n"

    # Removing BYOK: the objects move back to the shared bucket under the tenant prefix.
    set_state(tenant, ServiceState.VENDOR_MANAGED)
    back_dek = new_target_dek(tenant)
    set_state(tenant, ServiceState.MIGRATING_BACK)
    migration = migration_start(tenant=tenant, direction=Direction.TO_SHARED,
                                target_dek_id=back_dek.pk)  # fmt: skip
    assert migration_run(str(migration.pk)) == MigrationState.DONE
    listed = client.list_objects_v2(Bucket=s3)["Contents"]
    assert [o["Key"] for o in listed] == [f"tenants/{tenant.pk}/{obj.blob}"]
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert StoredObject.objects.get(tenant=tenant).location == Location.SHARED
    _obj, stream = object_open(tenant=tenant, key="reports/q1.csv")
    assert b"".join(stream) == b"a,b\n1,2\n"
