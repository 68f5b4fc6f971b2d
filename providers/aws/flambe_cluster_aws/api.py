"""boto3 clients and the translation of AWS failures into flambe-cluster errors.

Every client the provider uses comes from :func:`client`, which builds it the
way a user's own boto3 would: region from the options, credentials,
endpoints and retries from the standard places (environment variables such
as ``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_EC2``,
``AWS_MAX_ATTEMPTS``, ``AWS_RETRY_MODE``, and ``~/.aws/config``).  That is
also how the tests point the provider at a local moto server.

Every call runs inside :func:`step`, so a failure names the step, the
instances concerned, the AWS error code and what to do.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from flambe_cluster import ClusterError

__all__ = ["USER_AGENT", "AWSError", "client", "error_code", "has_credentials", "step"]

USER_AGENT = "flambe-cluster-aws"
#: Environment variables that change what a client talks to, as whom, or how it retries.
_CLIENT_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL_CLOUDWATCH", "AWS_ENDPOINT_URL_SSM",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN",
    "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
)

#: The AWS services the provider talks to.
Service = Literal["ec2", "cloudwatch", "ssm", "pricing"]

_clients: dict[tuple[str, str, tuple[str | None, ...]], Any] = {}
_clients_lock = threading.Lock()

ADVICE = {
    "InsufficientInstanceCapacity": (
        "EC2 has no capacity for this instance type in the subnet's availability zone right now; retry later, "
        "or choose another instance type or a subnet in another availability zone"
    ),
    "InstanceLimitExceeded": (
        "an account quota is reached; terminate unused instances or ask AWS for a higher quota (Service Quotas console)"
    ),
    "VcpuLimitExceeded": (
        "the account's vCPU quota is reached; terminate unused instances or ask AWS for a higher quota "
        "(Service Quotas console)"
    ),
    "RequestLimitExceeded": (
        "EC2 throttled this account's API requests beyond the retries; wait a minute and retry, "
        "or raise AWS_MAX_ATTEMPTS"
    ),
    "Throttling": (
        "AWS throttled this account's API requests beyond the retries; wait a minute and retry, "
        "or raise AWS_MAX_ATTEMPTS"
    ),
    "ThrottlingException": (
        "AWS throttled this account's API requests beyond the retries; wait a minute and retry, "
        "or raise AWS_MAX_ATTEMPTS"
    ),
    "UnauthorizedOperation": (
        "the credentials in use may not do this; grant the IAM permission, or use other credentials (AWS_PROFILE)"
    ),
    "AccessDenied": (
        "the credentials in use may not do this; grant the IAM permission, or use other credentials (AWS_PROFILE)"
    ),
    "AuthFailure": "AWS refused the credentials; check them (`aws sts get-caller-identity`) or set AWS_PROFILE",
    "Unsupported": (
        "this combination (instance type, tenancy, zone) is not supported here; choose another instance type or subnet"
    ),
}
DEFAULT_ADVICE = "retry; if it keeps failing, check the account in the AWS console"


class AWSError(ClusterError):
    """A call to AWS failed during one step of ``up``, ``down`` or a rollback.

    ``step`` names the step, ``code`` is the AWS error code (or the botocore
    exception's name) and ``instance_ids`` the instances concerned.
    """

    def __init__(self, step: str, code: str, detail: str, instance_ids: Iterable[str] = (),
                 advice: str | None = None) -> None:
        self.step = step
        self.code = code
        self.instance_ids = tuple(instance_ids)
        ids = f" ({', '.join(self.instance_ids)})" if self.instance_ids else ""
        what = advice or ADVICE.get(code, DEFAULT_ADVICE)
        super().__init__(f"AWS, {step}{ids}: {code}: {detail.rstrip('.')}. What to do: {what}.")


def client(service: Service, region: str) -> Any:
    """The boto3 client for ``service`` in ``region`` (one per configuration of the environment, thread-safe).

    Clients are cached: building one costs tens of milliseconds, and
    botocore clients are safe to share between threads.
    """
    key = (service, region, tuple(os.environ.get(name) for name in _CLIENT_ENV))
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            import boto3
            from botocore.config import Config

            found = boto3.session.Session().client(service, region_name=region,
                                                   config=Config(user_agent_extra=USER_AGENT))
            _clients[key] = found
        return found


def has_credentials() -> bool:
    """Whether boto3 finds credentials (environment, profile, instance role, ...) without calling AWS."""
    import boto3

    return boto3.session.Session().get_credentials() is not None


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` (``''`` for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


@contextlib.contextmanager
def step(what: str, instance_ids: Iterable[str] = (), advice: str | None = None) -> Iterator[None]:
    """Run AWS calls as one named step: any botocore failure becomes an :class:`AWSError` naming it."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise AWSError(what, error.get("Code", "Unknown"), error.get("Message", str(exc)), instance_ids,
                       advice) from exc
    except NoCredentialsError as exc:
        raise AWSError(what, "NoCredentials", str(exc), instance_ids,
                       "configure credentials (`aws configure`, AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                       "AWS_SECRET_ACCESS_KEY)") from exc
    except EndpointConnectionError as exc:
        raise AWSError(what, "EndpointConnectionError", str(exc), instance_ids,
                       "check the network, the region name, and AWS_ENDPOINT_URL if it is set") from exc
    except BotoCoreError as exc:
        raise AWSError(what, type(exc).__name__, str(exc), instance_ids, advice) from exc
