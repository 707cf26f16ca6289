"""Credentials out of what the server logs.

A pod gets the registry credentials Secret through `envFrom`, and a model's own exception may quote
them (a connection string, a URL with a password). Before an exception's text reaches the log, the
values of the environment variables that look like credentials and the userinfo of URLs are
replaced with `***`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MASK = "***"

# Names MLflow and the cloud SDKs read credentials from (MLFLOW_TRACKING_TOKEN/_PASSWORD,
# AWS_SECRET_ACCESS_KEY, AZURE_STORAGE_CONNECTION_STRING, ...), and what users name their own.
_SECRET_NAME = re.compile(
    r"TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL|KEY|CONNECTION_STRING|AUTH", re.IGNORECASE
)
# Shorter values are too likely to occur by chance ("1", "true") to be masked everywhere.
_MIN_SECRET_LENGTH = 4
_URL_USERINFO = re.compile(r"(?<=://)[^/\s@:]+:[^/\s@]+@")


def secret_values(env: Mapping[str, str]) -> tuple[str, ...]:
    """The values to mask, longest first (so a secret that contains another is masked whole)."""
    values = {
        value for name, value in env.items() if _SECRET_NAME.search(name) and len(value) >= _MIN_SECRET_LENGTH
    }
    return tuple(sorted(values, key=len, reverse=True))


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return _URL_USERINFO.sub(MASK + "@", text)
