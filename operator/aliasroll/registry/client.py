"""Blocking calls to one MLflow registry, on the MLflow client library, with errors mapped once.

The registry store is built per call and endpoint (tracking URI + credentials) rather than through
the MLFLOW_TRACKING_* environment variables, so resources that name different registries or
different Secrets never share credentials, and nothing of an endpoint (credentials included) outlives
the calls made for it. MLflow's store decides what to ask and how to read the answer; its HTTP is the
operator's (`transport.BoundedHttp`): a total deadline per call, a byte budget read as the answer
streams in, no retries inside a call (the poller retries with its own backoff), no redirects, and
only destinations the egress allow-list accepts (`aliasroll.egress`).

What a remote says never reaches a condition: messages are the operator's own words (an HTTP
status, MLflow's error code when it is one of MLflow's, "not an MLflow server", ...), never the body.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import requests
from mlflow.entities.model_registry import ModelVersionTag
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_TIMEOUT
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import ENDPOINT_NOT_FOUND, ErrorCode
from mlflow.store.model_registry.rest_store import RestStore
from mlflow.tracking.request_header.registry import resolve_request_headers
from mlflow.utils.proto_json_utils import parse_dict
from mlflow.utils.rest_utils import MlflowHostCreds, verify_rest_response
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, ReadTimeoutError

from aliasroll.egress import Destinations
from aliasroll.errors import (
    DestinationRefused,
    ModelNotFound,
    RegistryAnswerTooLarge,
    RegistryAuthFailed,
    RegistryError,
    RegistryUnavailable,
)
from aliasroll.outbound import DestinationRefusedError, more_than, no_answer_within, not_called
from aliasroll.registry.transport import AnswerTooLarge, BoundedHttp, DeadlinePassed, OperatorBusy
from aliasroll.registry.types import DEFAULT_MAX_ANSWER_BYTES, READY, Credentials, Endpoint, VersionInfo

# MLflow refuses max_results above 1000 for search_registered_models.
SEARCH_PAGE_SIZE = 1000
_AUTH_CODES = {"UNAUTHENTICATED", "PERMISSION_DENIED", "CUSTOMER_UNAUTHORIZED"}
_NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}
_MLFLOW_CODES = frozenset(ErrorCode.keys())


def configure_http(*, timeout_seconds: float) -> None:
    """Sets the timeout of every MLflow request of this process, and no retries inside a call.

    MLflow reads both from the environment at each request and has no per-call setting; the operator
    owns its process, so it sets them once at start. It is also the deadline of a RegistryClient
    built without one of its own.
    """
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(timeout_seconds)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"


class RegistryClient:
    """Thread-safe blocking client; the async poller runs its calls in worker threads.

    `timeout_seconds` is each call's whole deadline (connect, TLS, headers and body), by default
    MLFLOW_HTTP_REQUEST_TIMEOUT (configure_http); `max_answer_bytes` the most an answer may hold;
    `destinations` the egress allow-list (None: no check, for tests and tools that pick their URLs).
    """

    def __init__(
        self,
        *,
        timeout_seconds: float | None = None,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
        destinations: Destinations | None = None,
    ) -> None:
        self._timeout = timeout_seconds
        self.destinations = destinations
        self._http = BoundedHttp(max_answer_bytes=max_answer_bytes, destinations=destinations)
        self._headers: dict[str, str] | None = None

    @property
    def max_answer_bytes(self) -> int:
        return self._http.max_answer_bytes

    def timeout(self) -> float:
        if self._timeout is not None:
            return self._timeout
        return float(MLFLOW_HTTP_REQUEST_TIMEOUT.get())

    def refusal(self, endpoint: Endpoint) -> DestinationRefused | None:
        """Why the endpoint is not called (its URL is not an allowed destination), or None."""
        if "?" in endpoint.tracking_uri or "#" in endpoint.tracking_uri:
            # The spec refuses these too: MLflow's API path would land in the query or fragment.
            return _refused(endpoint, "a trackingUri has no query (?) or fragment (#)")
        if self.destinations is None:
            return None
        reason = self.destinations.check(endpoint.tracking_uri)
        return None if reason is None else _refused(endpoint, reason)

    def close(self) -> None:
        self._http.close()

    def model_aliases(self, endpoint: Endpoint, model: str) -> dict[str, str]:
        """All aliases of one registered model, in one call: {alias: version}."""
        registered = self._call(
            endpoint,
            "get_registered_model",
            lambda store: store.get_registered_model(model),
            subject=f"registered model {model!r}",
        )
        return normalize_aliases(registered.aliases)

    def all_model_aliases(self, endpoint: Endpoint) -> dict[str, dict[str, str]]:
        """Aliases of every registered model, 1,000 models a call: cheaper than one call per model
        once a poll needs more than a few dozen models of the same registry."""
        found: dict[str, dict[str, str]] = {}
        for page in self._search_pages(endpoint):
            for registered in page:
                found[registered.name] = normalize_aliases(registered.aliases)
        return found

    def version(self, endpoint: Endpoint, model: str, version: str) -> VersionInfo | None:
        """Details of one version, or None when the registry has no such version."""
        try:
            found = self._call(
                endpoint,
                "get_model_version",
                lambda store: store.get_model_version(model, version),
                subject=f"version {version} of {model!r}",
            )
        except ModelNotFound:
            return None
        return VersionInfo(
            model=model,
            version=str(found.version),
            status=str(found.status or READY),
            run_id=found.run_id or None,
            source=found.source or None,
            tags=tuple(sorted((str(k), str(v)) for k, v in (found.tags or {}).items())),
        )

    # Writes: the alias moves of a canary policy, and the operator's tags on model versions.

    def set_alias(self, endpoint: Endpoint, model: str, alias: str, version: str) -> None:
        with _writing(endpoint, model, f"move @{alias} to version {version}"):
            self._call(
                endpoint,
                "set_registered_model_alias",
                lambda store: store.set_registered_model_alias(model, alias, version),
                subject=f"alias @{alias} of {model!r}",
            )

    def change_alias(
        self, endpoint: Endpoint, model: str, alias: str, expect: str, to: str | None
    ) -> dict[str, str]:
        """Moves `alias` to `to` (removes it when None), only if it still names `expect` when read
        just before: MLflow has no conditional write, so this narrows the window in which a human's
        move could be overwritten to one round trip. Returns the aliases as read before the change
        (the alias named something else when it differs from `expect`: nothing was changed)."""
        aliases = self.model_aliases(endpoint, model)
        if aliases.get(alias) != expect:
            return aliases
        if to is None:
            self.delete_alias(endpoint, model, alias)
        else:
            self.set_alias(endpoint, model, alias, to)
        return aliases

    def delete_alias(self, endpoint: Endpoint, model: str, alias: str) -> None:
        """Removes an alias; one that is already gone is not an error."""
        try:
            with _writing(endpoint, model, f"remove @{alias}"):
                self._call(
                    endpoint,
                    "delete_registered_model_alias",
                    lambda store: store.delete_registered_model_alias(model, alias),
                    subject=f"alias @{alias} of {model!r}",
                )
        except ModelNotFound:
            return

    def set_version_tags(self, endpoint: Endpoint, model: str, version: str, tags: Mapping[str, str]) -> None:
        with _writing(endpoint, model, f"tag version {version}"):
            for key, value in tags.items():
                tag = ModelVersionTag(key, value)
                self._call(
                    endpoint,
                    "set_model_version_tag",
                    partial(_set_tag, model=model, version=version, tag=tag),
                    subject=f"tag {key!r} of version {version} of {model!r}",
                )

    def _search_pages(self, endpoint: Endpoint) -> Iterator[Any]:
        token: str | None = None
        while True:
            page = self._call(
                endpoint,
                "search_registered_models",
                partial(_search_page, page_token=token),
                subject="registered models",
            )
            yield page
            token = page.token
            if not token:
                return

    def _store(self, endpoint: Endpoint) -> RestStore:
        return _BoundedStore(endpoint, self)

    def _call(
        self, endpoint: Endpoint, method: str, call: Callable[[RestStore], Any], *, subject: str
    ) -> Any:
        if (refused := self.refusal(endpoint)) is not None:
            raise refused
        try:
            return call(self._store(endpoint))
        except MlflowException as error:
            raise map_registry_error(error, endpoint=endpoint, subject=subject) from None
        except DeadlinePassed:
            raise RegistryUnavailable(
                f"the registry at {endpoint.tracking_uri} {no_answer_within(self.timeout())} "
                "(ALIASROLL_REGISTRY_TIMEOUT)"
            ) from None
        except OperatorBusy:
            raise RegistryUnavailable(
                f"the registry at {endpoint.tracking_uri} was not read: the operator holds as much of "
                "its answers, or of all registries' answers, as it may at once; retried"
            ) from None
        except AnswerTooLarge:
            raise RegistryAnswerTooLarge(
                f"the registry at {endpoint.tracking_uri} {more_than(self.max_answer_bytes)} for {subject} "
                "(ALIASROLL_REGISTRY_MAX_ANSWER_BYTES)"
            ) from None
        except DestinationRefusedError as error:
            raise _refused(endpoint, error.reason) from None
        except requests.RequestException as error:
            raise RegistryUnavailable(
                f"the registry at {endpoint.tracking_uri} did not answer: {_connection_problem(error)}"
            ) from None

    def _request(
        self,
        endpoint: Endpoint,
        path: str,
        method: str,
        json_body: str | None,
        extra_headers: Mapping[str, str] | None,
    ) -> requests.Response:
        """One HTTP call as MLflow's client makes it (same headers, authentication and body)."""
        if self._headers is None:
            self._headers = dict(resolve_request_headers())  # fixed for the process; not cheap
        headers = {**self._headers, **(extra_headers or {})}
        creds = endpoint.credentials or Credentials()
        if creds.username and creds.password:
            headers["Authorization"] = _basic(creds.username, creds.password)
        elif creds.token:
            headers["Authorization"] = f"Bearer {creds.token}"
        body = json.loads(json_body) if json_body is not None else None
        response = self._http.request(
            method,
            f"{endpoint.tracking_uri.rstrip('/')}{path}",
            timeout=self.timeout(),
            headers=headers,
            params=body if method == "GET" else None,
            json=None if method == "GET" else body,
            insecure_tls=creds.insecure_tls,
        )
        if 300 <= response.status_code < 400:
            raise RegistryError(
                f"the registry at {endpoint.tracking_uri} answered with a redirect (HTTP "
                f"{response.status_code}), which the operator does not follow: set "
                "spec.registry.trackingUri to the server's own URL (https:// if it redirects there)"
            )
        return response


class _BoundedStore(RestStore):
    """MLflow's REST store, asking and reading as MLflow does, over the client's bounded HTTP."""

    def __init__(self, endpoint: Endpoint, client: RegistryClient) -> None:
        creds = endpoint.credentials or Credentials()
        host = MlflowHostCreds(
            endpoint.tracking_uri,
            username=creds.username,
            password=creds.password,
            token=creds.token,
            ignore_tls_verification=creds.insecure_tls,
        )
        super().__init__(lambda: host)
        self._endpoint = endpoint
        self._client = client

    def _call_endpoint(
        self, api: Any, json_body: str | None, call_all_endpoints: bool = False, extra_headers: Any = None
    ) -> Any:
        # Instead of RestStore's, which sends through MLflow's own session (per-read timeouts, whole
        # answers, redirects followed): the same request, answered through the bounded HTTP.
        if call_all_endpoints:
            endpoints = self._get_all_endpoints_from_method(api)
        else:
            endpoints = [self._get_endpoint_from_method(api)]
        for index, (path, method) in enumerate(endpoints):
            try:
                return self._call_one(api, path, method, json_body, extra_headers)
            except RestException as error:
                if error.error_code != ErrorCode.Name(ENDPOINT_NOT_FOUND) or index == len(endpoints) - 1:
                    raise
        raise AssertionError("unreachable: the last endpoint's error is raised")

    def _call_one(self, api: Any, path: str, method: str, json_body: str | None, extra_headers: Any) -> Any:
        response_proto = self._get_response_from_method(api)
        response = self._client._request(self._endpoint, path, method, json_body, extra_headers)
        try:
            response = verify_rest_response(response, path)
        except RestException as error:
            # MLflow derives the status from the error code it read; the one that came is truer
            # (map_registry_error).
            error.http_status = response.status_code  # type: ignore[attr-defined]
            raise
        if response.status_code == 204:
            return response_proto
        try:
            parse_dict(js_dict=json.loads(response.text), message=response_proto)
        except Exception:  # a JSON object whose fields are not MLflow's types
            unreadable = _not_mlflow(self._endpoint, "an answer that MLflow's client cannot read")
            raise RegistryError(unreadable) from None
        return response_proto


@contextlib.contextmanager
def _writing(endpoint: Endpoint, model: str, what: str) -> Iterator[None]:
    """A refused write says what to grant: credentials that read aliases may not write them."""
    try:
        yield
    except RegistryAuthFailed as error:
        raise RegistryAuthFailed(
            f"the registry at {endpoint.tracking_uri} did not let the operator {what} of {model!r}: "
            "its credentials may read but not write; give them EDIT permission on the model "
            f"(spec.registry.credentialsSecretRef) ({error.message})"
        ) from None


def _set_tag(store: RestStore, *, model: str, version: str, tag: ModelVersionTag) -> None:
    store.set_model_version_tag(model, version, tag)


def _search_page(store: RestStore, *, page_token: str | None) -> Any:
    return store.search_registered_models(max_results=SEARCH_PAGE_SIZE, page_token=page_token)


def normalize_aliases(aliases: Any) -> dict[str, str]:
    """Alias versions come back as strings over REST and ints from a SQL store: always strings."""
    if isinstance(aliases, dict):
        return {str(alias): str(version) for alias, version in aliases.items()}
    return {str(item.alias): str(item.version) for item in aliases or ()}


def map_registry_error(error: MlflowException, *, endpoint: Endpoint, subject: str) -> RegistryError:
    """One place that decides what an MLflow error means to the operator. The message never quotes
    the remote's text: a registry is any URL a tenant names, and conditions are readable by others."""
    code = str(error.error_code or "")
    # MLflow's error code is named when the registry sent one of MLflow's (a missing or unknown
    # one reads as INTERNAL_ERROR, which the registry never said).
    sent = error.json.get("error_code") if isinstance(error, RestException) else code
    named = f", {code}" if code in _MLFLOW_CODES and sent == code else ""
    if _HOST_REFUSED in str(error):
        # MLflow 3.5+ answers 403 to a Host header it does not know (its DNS-rebinding guard): not a
        # credentials problem, and the one setting to change is on the server.
        return RegistryError(
            f"the MLflow server at {endpoint.tracking_uri} refused the Host header "
            f"{urlsplit(endpoint.tracking_uri).netloc!r}: add it to the server's --allowed-hosts "
            "(MLFLOW_SERVER_ALLOWED_HOSTS)"
        )
    if isinstance(error, RestException):
        status = getattr(error, "http_status", None) or error.get_http_status_code()
        if code in _NOT_FOUND_CODES or status == 404:
            return ModelNotFound(f"the registry at {endpoint.tracking_uri} has no {subject}")
        if code in _AUTH_CODES or status in (401, 403):
            return RegistryAuthFailed(
                f"the registry at {endpoint.tracking_uri} refused the credentials for {subject} "
                f"(HTTP {status}); check spec.registry.credentialsSecretRef"
            )
        if status >= 500 or status == 429:
            return RegistryUnavailable(
                f"the registry at {endpoint.tracking_uri} failed (HTTP {status}{named})"
            )
        return RegistryError(
            f"the registry at {endpoint.tracking_uri} rejected the request for {subject} "
            f"(HTTP {status}{named})"
        )
    if code in _AUTH_CODES:
        return RegistryAuthFailed(
            f"the registry at {endpoint.tracking_uri} refused the credentials for {subject}; "
            "check spec.registry.credentialsSecretRef"
        )
    text = str(error)
    # MLflow raises a plain MlflowException when the answer is not its JSON error format: some
    # other server (a wrong trackingUri, an ingress error page) or no server at all.
    if (match := _NON_JSON_STATUS.search(text)) is not None:
        status = int(match.group(1))
        if status >= 500 or status == 429:
            return RegistryUnavailable(f"the registry at {endpoint.tracking_uri} failed (HTTP {status})")
        return RegistryError(_not_mlflow(endpoint, f"HTTP {status} with a non-MLflow answer"))
    if _NON_JSON_SUCCESS in text:
        return RegistryError(_not_mlflow(endpoint, "an answer that is not JSON"))
    return RegistryUnavailable(
        f"the registry at {endpoint.tracking_uri} did not answer: "
        f"{_transport_problem(text) or 'the connection failed'}"
    )


#: MLflow's own text for a refused Host header (mlflow.server.security_utils.INVALID_HOST_MSG).
_HOST_REFUSED = "Invalid Host header"
_NON_JSON_STATUS = re.compile(r"failed with error code (\d+) != 200")
_NON_JSON_SUCCESS = "response body was not in a valid JSON format"
_TIMED_OUT = "timed out (ALIASROLL_REGISTRY_TIMEOUT)"
_TLS_FAILED = (
    "TLS verification failed (trust its CA, or set MLFLOW_TRACKING_INSECURE_TLS in the credentials Secret)"
)
# What the connection failures of requests/urllib3 say, in the words a user would search for.
_TRANSPORT_PROBLEMS = (
    (
        ("NameResolutionError", "Name or service not known", "nodename nor servname"),
        "the host name does not resolve",
    ),
    (("Connection refused",), "connection refused"),
    (("ConnectTimeout", "ReadTimeout", "timed out"), _TIMED_OUT),
    (("SSLError", "CERTIFICATE_VERIFY_FAILED"), _TLS_FAILED),
)


def _transport_problem(text: str) -> str | None:
    for needles, problem in _TRANSPORT_PROBLEMS:
        if any(needle in text for needle in needles):
            return problem
    return None


def _connection_problem(error: BaseException) -> str:
    """What went wrong with a connection, from the exceptions' types (never their text)."""
    causes = list(_causes(error))

    def any_of(*kinds: type[BaseException]) -> bool:
        return any(isinstance(cause, kinds) for cause in causes)

    if any_of(NameResolutionError, socket.gaierror):
        return "the host name does not resolve"
    if any_of(ConnectionRefusedError):
        return "connection refused"
    if any_of(ssl.SSLError, requests.exceptions.SSLError):
        return _TLS_FAILED
    # urllib3's NewConnectionError is a ConnectTimeoutError too: only a real timeout counts here.
    if any_of(TimeoutError, ReadTimeoutError, requests.Timeout) or any(
        type(cause) is ConnectTimeoutError for cause in causes
    ):
        return _TIMED_OUT
    return "the connection failed"


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error and everything it wraps (requests -> urllib3 -> socket), each once."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for inner in (
            current.__cause__,
            current.__context__,
            getattr(current, "reason", None),
            *(arg for arg in current.args if isinstance(arg, BaseException)),
        ):
            if isinstance(inner, BaseException):
                pending.append(inner)


def _not_mlflow(endpoint: Endpoint, what: str) -> str:
    return (
        f"{endpoint.tracking_uri} gave {what} on the MLflow REST API: is it an MLflow tracking server? "
        "check spec.registry.trackingUri (the server's base URL, without /api or #/ paths)"
    )


def _refused(endpoint: Endpoint, reason: str) -> DestinationRefused:
    return DestinationRefused(f"the registry at {endpoint.tracking_uri} {not_called(reason)}")


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.standard_b64encode(f"{username}:{password}".encode()).decode()
