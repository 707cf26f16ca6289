"""Blocking calls to one MLflow registry, on the MLflow client library, with errors mapped once.

The registry store is built per endpoint (tracking URI + credentials) rather than through the
MLFLOW_TRACKING_* environment variables, so resources that name different registries or different
Secrets never share credentials. Timeouts and retries are the operator's (`configure_http`), not
MLflow's defaults: 120 s and 7 retries would stall a reconcile loop.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from mlflow.entities.model_registry import ModelVersionTag
from mlflow.exceptions import MlflowException, RestException
from mlflow.store.model_registry.rest_store import RestStore
from mlflow.utils.rest_utils import MlflowHostCreds

from aliasroll.errors import (
    ModelNotFound,
    RegistryAuthFailed,
    RegistryError,
    RegistryUnavailable,
)
from aliasroll.registry.types import READY, Credentials, Endpoint, VersionInfo

# MLflow refuses max_results above 1000 for search_registered_models.
SEARCH_PAGE_SIZE = 1000
_AUTH_CODES = {"UNAUTHENTICATED", "PERMISSION_DENIED", "CUSTOMER_UNAUTHORIZED"}
_NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}
_MESSAGE_LIMIT = 300


def configure_http(*, timeout_seconds: float) -> None:
    """Sets the timeout of every MLflow request of this process, and no retries inside a call.

    MLflow reads both from the environment at each request and has no per-call setting; the operator
    owns its process, so it sets them once at start. The poller retries with its own backoff.
    """
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(timeout_seconds)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"


class RegistryClient:
    """Thread-safe blocking client; the async poller runs its calls in worker threads."""

    def __init__(self) -> None:
        self._stores: dict[Endpoint, RestStore] = {}
        self._lock = threading.Lock()

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
        with self._lock:
            store = self._stores.get(endpoint)
            if store is None:
                creds = endpoint.credentials or Credentials()
                host = MlflowHostCreds(
                    endpoint.tracking_uri,
                    username=creds.username,
                    password=creds.password,
                    token=creds.token,
                    ignore_tls_verification=creds.insecure_tls,
                )
                store = RestStore(lambda: host)
                self._stores[endpoint] = store
            return store

    def _call(
        self, endpoint: Endpoint, method: str, call: Callable[[RestStore], Any], *, subject: str
    ) -> Any:
        try:
            return call(self._store(endpoint))
        except MlflowException as error:
            raise map_registry_error(error, endpoint=endpoint, subject=subject) from None


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
    """One place that decides what an MLflow error means to the operator."""
    code = str(error.error_code or "")
    detail = _short(error.message if isinstance(error, RestException) else str(error))
    if _HOST_REFUSED in str(error):
        # MLflow 3.5+ answers 403 to a Host header it does not know (its DNS-rebinding guard): not a
        # credentials problem, and the one setting to change is on the server.
        return RegistryError(
            f"the MLflow server at {endpoint.tracking_uri} refused the Host header "
            f"{urlsplit(endpoint.tracking_uri).netloc!r}: add it to the server's --allowed-hosts "
            "(MLFLOW_SERVER_ALLOWED_HOSTS)"
        )
    if isinstance(error, RestException):
        status = error.get_http_status_code()
        if code in _NOT_FOUND_CODES or status == 404:
            return ModelNotFound(f"the registry at {endpoint.tracking_uri} has no {subject}")
        if code in _AUTH_CODES or status in (401, 403):
            return RegistryAuthFailed(
                f"the registry at {endpoint.tracking_uri} refused the credentials for {subject} "
                f"(HTTP {status}); check spec.registry.credentialsSecretRef"
            )
        if status >= 500 or status == 429:
            return RegistryUnavailable(
                f"the registry at {endpoint.tracking_uri} failed (HTTP {status}): {detail}"
            )
        return RegistryError(
            f"the registry at {endpoint.tracking_uri} rejected the request for {subject}: {detail}"
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
        f"the registry at {endpoint.tracking_uri} did not answer: {_transport_problem(text) or detail}"
    )


#: MLflow's own text for a refused Host header (mlflow.server.security_utils.INVALID_HOST_MSG).
_HOST_REFUSED = "Invalid Host header"
_NON_JSON_STATUS = re.compile(r"failed with error code (\d+) != 200")
_NON_JSON_SUCCESS = "response body was not in a valid JSON format"
# What the connection failures of requests/urllib3 say, in the words a user would search for.
_TRANSPORT_PROBLEMS = (
    (
        ("NameResolutionError", "Name or service not known", "nodename nor servname"),
        "the host name does not resolve",
    ),
    (("Connection refused",), "connection refused"),
    (("ConnectTimeout", "ReadTimeout", "timed out"), "timed out (ALIASROLL_REGISTRY_TIMEOUT)"),
    (
        ("SSLError", "CERTIFICATE_VERIFY_FAILED"),
        "TLS verification failed (trust its CA, or set MLFLOW_TRACKING_INSECURE_TLS "
        "in the credentials Secret)",
    ),
)


def _transport_problem(text: str) -> str | None:
    for needles, problem in _TRANSPORT_PROBLEMS:
        if any(needle in text for needle in needles):
            return problem
    return None


def _not_mlflow(endpoint: Endpoint, what: str) -> str:
    return (
        f"{endpoint.tracking_uri} gave {what} on the MLflow REST API: is it an MLflow tracking server? "
        "check spec.registry.trackingUri (the server's base URL, without /api or #/ paths)"
    )


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"
