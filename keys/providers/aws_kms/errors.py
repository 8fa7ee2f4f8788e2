"""AWS and botocore errors onto base.py's, in AWS terms, with a hint at the fix.

The provider's exceptions keep the AWS error code (`aws_code`) for the checks
to advise on; no message repeats a secret or a request parameter.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.exceptions import (
    HTTPClientError as BotoHTTPClientError,
)

from keys.providers.base import (
    KeyAccessDenied,
    KeyMaterialInvalid,
    KeyProviderError,
    KeyUnavailable,
)

ACCESS_DENIED = {"AccessDeniedException", "AccessDenied"}
_REVOKED = {"DisabledException", "KMSInvalidStateException", "NotFoundException"}
_INVALID = {
    "IncorrectKeyException",
    "InvalidCiphertextException",
    "InvalidKeyUsageException",
    "InvalidArnException",
}
_TRANSIENT = {
    "KeyUnavailableException",
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "KMSInternalException",
    "DependencyTimeoutException",
    "InternalFailure",
    "InternalError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
}
# AWS refusing the vendor's own credentials: an operator problem, not the customer's.
_VENDOR_CREDENTIALS = {
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
}
EXPIRED = {"ExpiredToken", "ExpiredTokenException", "RequestExpired"}

_HINTS = {
    "DisabledException": "the key is disabled; enable it in the AWS KMS console",
    "NotFoundException": "the key or alias does not exist (deleted, or a wrong ARN)",
    "KeyUnavailableException": "the key's key store is unavailable; try again later",
    "ThrottlingException": "AWS KMS is throttling requests; they are retried later",
    "LimitExceededException": "a KMS request quota was exceeded; requests are retried later",
    "KMSInternalException": "an internal AWS KMS error; requests are retried later",
    "DependencyTimeoutException": "AWS KMS timed out internally; requests are retried later",
    "IncorrectKeyException": "the wrapped key was encrypted under another KMS key",
    "InvalidCiphertextException": (
        "the encryption context differs from the one used when wrapping, "
        "or the wrapped key was altered"
    ),
    "InvalidKeyUsageException": "the key cannot be used to encrypt and decrypt",
}


def aws_message(error: ClientError) -> tuple[str, str, int]:
    info = error.response.get("Error", {})
    code = str(info.get("Code", "") or "UnknownError")
    message = " ".join(str(info.get("Message", "") or "").split())
    if len(message) > 300:
        message = message[:300] + "..."
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, message, status


class _AwsCode(KeyProviderError):
    """The AWS error code behind a provider error ("" when there was no AWS answer)."""

    aws_code: str = ""

    def __init__(self, message: str, aws_code: str = "") -> None:
        super().__init__(message)
        self.aws_code = aws_code


class AwsKeyUnavailable(_AwsCode, KeyUnavailable):
    pass


class AwsKeyAccessDenied(_AwsCode, KeyAccessDenied):
    pass


class AwsKeyMaterialInvalid(_AwsCode, KeyMaterialInvalid):
    pass


def aws_code(error: BaseException) -> str:
    return error.aws_code if isinstance(error, _AwsCode) else ""


def aws_error(
    error: ClientError | BotoCoreError,
    service: str,
    operation: str,
    target: str,
    *,
    endpoint: str,
    principal: str,
    with_external_id: bool,
    connect_timeout: float,
    read_timeout: float,
) -> KeyProviderError:
    """One AWS or botocore error as base.py's exception, in AWS terms, without secrets."""
    name = "AWS STS" if service == "sts" else "AWS KMS"
    if isinstance(error, ClientError):
        code, message, status = aws_message(error)
        said = f"{name} {operation} on {target} failed with {code}"
        if message:
            said += f" ({message})"
        if code in ACCESS_DENIED:
            if service == "sts":
                hint = (
                    "the role's trust policy must allow the vendor's AWS principal to call "
                    "sts:AssumeRole"
                    + (" with the configured external id" if with_external_id else "")
                )
            else:
                hint = f"the key policy must allow kms:{operation} for {principal}"
            return AwsKeyAccessDenied(f"{said}: {hint}", code)
        if code in _REVOKED:
            hint = _HINTS.get(code, "the key is not usable in its current state")
            return AwsKeyAccessDenied(f"{said}: {hint}", code)
        if code in _INVALID:
            return AwsKeyMaterialInvalid(f"{said}: {_HINTS[code]}", code)
        if code in _TRANSIENT or status >= 500:
            hint = _HINTS.get(code, "a transient AWS error; requests are retried later")
            return AwsKeyUnavailable(f"{said}: {hint}", code)
        if code in _VENDOR_CREDENTIALS:
            return AwsKeyUnavailable(
                f"{said}: AWS rejected the vendor's own AWS credentials; "
                "the operator must fix them",
                code,
            )
        return AwsKeyUnavailable(f"{said}: unexpected AWS error (HTTP {status})", code)
    if isinstance(error, ConnectTimeoutError):
        text = (
            f"could not connect to {name} at {endpoint} within the connect timeout "
            f"of {connect_timeout:g} s ({operation})"
        )
    elif isinstance(error, ReadTimeoutError):
        text = (
            f"{name} at {endpoint} did not answer {operation} within the read timeout "
            f"of {read_timeout:g} s"
        )
    elif isinstance(error, EndpointConnectionError):
        reason = str(error.kwargs.get("error", "")).rsplit(": ", 1)[-1] or "unreachable"
        text = f"could not connect to {name} at {endpoint} ({operation}): {reason}"
    elif isinstance(error, ConnectionClosedError):
        text = f"{name} at {endpoint} closed the connection during {operation}"
    elif isinstance(error, BotoConnectionError | BotoHTTPClientError):
        text = f"connection to {name} at {endpoint} failed during {operation}"
    elif isinstance(error, NoCredentialsError | PartialCredentialsError):
        text = (
            f"no usable vendor AWS credentials for {name} {operation}: "
            "the operator must configure them"
        )
    elif isinstance(error, ParamValidationError):
        # botocore's message may quote the parameters: never repeat it.
        return KeyMaterialInvalid(f"{name} {operation} refused the request parameters")
    else:
        text = f"{name} {operation} failed: {type(error).__name__}"
    return KeyUnavailable(text)
