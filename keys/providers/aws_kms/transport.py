"""boto3 sessions and clients: timeouts, botocore's bounded retries, STS AssumeRole."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import boto3.session
from botocore.config import Config

from keys.providers.aws_kms.config import VendorCredentials


@dataclass(frozen=True)
class AssumedCredentials:
    """Temporary credentials from STS AssumeRole."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    role_session_name: str


def botocore_config(*, connect_timeout: float, read_timeout: float, max_attempts: int) -> Config:
    return Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": max_attempts},
    )


# One boto3 session per vendor identity in a process, shared by every
# tenant's provider. Making a session loads botocore's service models again
# (about 0.1 to 0.5 s of CPU each): with a session per provider, a fresh
# worker's first health round over 2,000 keys spent most of its time there.
# A session is not safe to use from two threads at once, so clients are made
# from it under the lock; the clients themselves are thread-safe.
_SESSIONS: dict[VendorCredentials | None, boto3.session.Session] = {}
_SESSIONS_LOCK = threading.Lock()


def vendor_session(
    session_factory: Callable[[], boto3.session.Session] | None,
    vendor_credentials: VendorCredentials | None,
) -> boto3.session.Session:
    """A session with the vendor's own identity: the factory's, the credentials', or boto3's."""
    if session_factory is not None:
        return session_factory()
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(vendor_credentials)
        if session is None:
            if vendor_credentials is not None:
                creds = vendor_credentials
                session = boto3.session.Session(
                    aws_access_key_id=creds.access_key_id,
                    aws_secret_access_key=creds.secret_access_key,
                    aws_session_token=creds.session_token,
                )
            else:
                session = boto3.session.Session()
            _SESSIONS[vendor_credentials] = session
        return session


def make_client(
    session: boto3.session.Session,
    service: str,
    region: str,
    *,
    endpoint_url: str | None,
    config: Config,
    credentials: AssumedCredentials | None,
) -> Any:
    """A client for `service` in `region`, signing with `credentials` when given."""
    extra: dict[str, Any] = {}
    if credentials is not None:
        extra = {
            "aws_access_key_id": credentials.access_key_id,
            "aws_secret_access_key": credentials.secret_access_key,
            "aws_session_token": credentials.session_token,
        }
    make_client: Any = session.client
    with _SESSIONS_LOCK:
        return make_client(
            service,
            region_name=region,
            endpoint_url=endpoint_url,
            config=config,
            **extra,
        )


def endpoint_for(service: str, region: str, *, partition: str, endpoint_url: str | None) -> str:
    """Where requests to `service` in `region` go (for messages)."""
    if endpoint_url:
        return endpoint_url
    suffix = "amazonaws.com.cn" if partition == "aws-cn" else "amazonaws.com"
    return f"https://{service}.{region}.{suffix}"


def assume_role(
    sts: Any,
    *,
    role_arn: str,
    session_name: str,
    duration_seconds: int,
    external_id: str | None,
) -> AssumedCredentials:
    """STS AssumeRole; botocore's errors are left to the caller to map."""
    params: dict[str, Any] = {
        "RoleArn": role_arn,
        "RoleSessionName": session_name,
        "DurationSeconds": duration_seconds,
    }
    if external_id is not None:
        params["ExternalId"] = external_id
    response = sts.assume_role(**params)
    raw = response["Credentials"]
    expiration = raw["Expiration"]
    if expiration.tzinfo is None:
        expiration = expiration.replace(tzinfo=UTC)
    return AssumedCredentials(
        access_key_id=raw["AccessKeyId"],
        secret_access_key=raw["SecretAccessKey"],
        session_token=raw["SessionToken"],
        expiration=expiration,
        role_session_name=session_name,
    )
