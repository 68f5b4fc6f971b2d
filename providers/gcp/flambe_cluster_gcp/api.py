"""Talking to the Compute Engine API: clients, credentials, retries, errors.

Every client of the provider is built by :func:`connect`, which is the one
place that decides where requests go and with which credentials:

* the endpoint is the ``api_endpoint`` option, else the environment variable
  ``FLAMBE_GCP_API_ENDPOINT``, else the client library's default
  (``https://compute.googleapis.com``);
* credentials are Application Default Credentials (``google.auth.default()``:
  ``gcloud auth application-default login``, ``GOOGLE_APPLICATION_CREDENTIALS``
  or the metadata server on a GCP machine), with the ``cloud-platform`` scope;
  none found raises :class:`CredentialsMissing` naming the command to run;
* a plain-HTTP endpoint (``http://...``) is a test double (the fake in the
  test suite) and gets anonymous credentials — real tokens never travel over
  plain HTTP.  An ``https://`` override (a private endpoint) uses ADC.

:meth:`Compute.call` runs one API request with a per-request timeout and
retries transient failures (HTTP 429, 500, 502, 503, 504, rate-limit 403s,
connection errors, a lost response) with backoff; callers that retry a
create pass a request id so a retried request never does the work twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from attrs import define, field
from flambe_cluster import ClusterError
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.cloud import compute_v1

logger = logging.getLogger(__name__)

ENDPOINT_ENV = "FLAMBE_GCP_API_ENDPOINT"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
#: The only scope an instance's service account gets: its idle watchdog deletes the instance through the Compute API.
WATCHDOG_SCOPES = ("https://www.googleapis.com/auth/compute",)
#: Seconds one HTTP request may take (``zoneOperations.wait`` gets more: the API holds it up to 2 minutes).
CALL_TIMEOUT = 30.0
WAIT_CALL_TIMEOUT = 150.0
#: How long transient failures of one request are retried.
RETRY_FOR = 60.0
NO_CREDENTIALS = (
    "no Google Cloud credentials found (Application Default Credentials). Run "
    "`gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service-account "
    "key file, then try again"
)
_RATE_LIMIT_REASONS = {"rateLimitExceeded", "userRateLimitExceeded"}

T = TypeVar("T")


class GCPError(ClusterError):
    """A Compute Engine request or wait failed; the message names the step, the instances and what to do."""


class CredentialsMissing(GCPError):
    """No Application Default Credentials were found."""


def endpoint_for(options: Any) -> str | None:
    """The API endpoint override in effect (option, then environment), or None for Google's."""
    return options.api_endpoint or (os.environ.get(ENDPOINT_ENV) or "").strip().rstrip("/") or None


def is_test_endpoint(endpoint: str | None) -> bool:
    """Whether ``endpoint`` is a plain-HTTP test double (anonymous credentials, local metadata server)."""
    return endpoint is not None and endpoint.startswith("http://")


def _credentials(endpoint: str | None) -> tuple[Any, str | None]:
    if is_test_endpoint(endpoint):
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials(), None
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return google.auth.default(scopes=list(SCOPES))
    except DefaultCredentialsError as exc:
        raise CredentialsMissing(f"{NO_CREDENTIALS} ({exc})") from None


def error_reasons(exc: BaseException) -> set[str]:
    """The ``reason`` fields of an API error's details (``notFound``, ``resourceNotReady``, ...)."""
    reasons = set()
    for error in getattr(exc, "errors", None) or ():
        if isinstance(error, dict) and error.get("reason"):
            reasons.add(error["reason"])
    return reasons


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same request (with the same request id) may succeed."""
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    if isinstance(exc, (gexc.TooManyRequests, gexc.InternalServerError, gexc.BadGateway,
                        gexc.ServiceUnavailable, gexc.GatewayTimeout, gexc.DeadlineExceeded)):
        return True
    return isinstance(exc, gexc.Forbidden) and bool(error_reasons(exc) & _RATE_LIMIT_REASONS)


def describe(exc: BaseException) -> str:
    """A short description of an API failure for messages."""
    if isinstance(exc, gexc.GoogleAPICallError):
        message = exc.message or str(exc)
        # the REST transport prefixes the method and URL; users need the API's sentence
        if ": " in message and message.split(" ", 1)[0] in ("GET", "POST", "DELETE", "PATCH", "PUT"):
            message = message.split(": ", 1)[1]
        return f"HTTP {exc.code}: {message.rstrip('.')}"
    if isinstance(exc, requests.RequestException):
        return f"connection failed: {exc}"
    return str(exc)


@define
class Compute:
    """Clients of one project and zone, sharing credentials and an endpoint.

    Thread-safe: clients are created on first use under a lock.
    """

    project: str
    zone: str
    endpoint: str | None
    credentials: Any = field(repr=False)
    _clients: dict = field(factory=dict, repr=False)
    _lock: threading.Lock = field(factory=threading.Lock, repr=False)

    @property
    def region(self) -> str:
        return self.zone.rsplit("-", 1)[0]

    def client(self, name: str) -> Any:
        """The ``compute_v1`` client class ``name`` (``"InstancesClient"``, ...), built once."""
        with self._lock:
            if name not in self._clients:
                options = ClientOptions(api_endpoint=self.endpoint) if self.endpoint else None
                self._clients[name] = getattr(compute_v1, name)(
                    credentials=self.credentials, client_options=options, transport="rest"
                )
            return self._clients[name]

    @property
    def instances(self) -> compute_v1.InstancesClient:
        return self.client("InstancesClient")

    @property
    def operations(self) -> compute_v1.ZoneOperationsClient:
        return self.client("ZoneOperationsClient")

    def call(self, what: str, function: Callable[..., T], *args: Any,
             retry_if: Callable[[BaseException], bool] | None = None,
             retry_for: float = RETRY_FOR, timeout: float = CALL_TIMEOUT, **kwargs: Any) -> T:
        """``function(*args, timeout=..., **kwargs)``, retrying transient failures for ``retry_for`` seconds.

        ``what`` describes the request for logs.  ``retry_if`` names more
        errors worth retrying (``resourceNotReady`` for a delete).  The last
        error is raised as it came (callers turn it into a message).
        """
        deadline = time.monotonic() + retry_for
        delay = 0.2
        while True:
            try:
                return function(*args, timeout=timeout, **kwargs)
            except Exception as exc:
                retryable = is_transient(exc) or (retry_if is not None and retry_if(exc))
                if not retryable or time.monotonic() + delay > deadline:
                    raise
                logger.info("%s failed (%s); retrying in %.1f s", what, describe(exc), delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


_cache: dict[tuple, Compute] = {}
_cache_lock = threading.Lock()


def connect(options: Any, *, project: str | None = None, zone: str | None = None) -> Compute:
    """The :class:`Compute` for the options' (or the given) project and zone and the endpoint (one per process and key).

    Raises :class:`CredentialsMissing` without ADC, and :class:`GCPError`
    when no project is given and ADC names none.
    """
    endpoint = endpoint_for(options)
    project, zone = project or options.project, zone or options.zone
    key = (endpoint, project, zone)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    credentials, default_project = _credentials(endpoint)
    project = project or default_project
    if not project:
        raise GCPError(
            "no project: set `project:` in the cluster file (Application Default Credentials name none; "
            "`gcloud config set project PROJECT` sets one for gcloud)"
        )
    compute = Compute(project=project, zone=zone, endpoint=endpoint, credentials=credentials)
    with _cache_lock:
        return _cache.setdefault(key, compute)


def forget_connections() -> None:
    """Drop the cached clients (tests that restart their fake at the same address)."""
    with _cache_lock:
        _cache.clear()


__all__ = ["Compute", "CredentialsMissing", "GCPError", "connect", "describe", "endpoint_for", "is_test_endpoint"]
