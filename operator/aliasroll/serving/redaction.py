"""Credentials out of what the server logs and of its termination message.

A pod may get registry credentials (spec.serving.credentialsSecretRef, through `envFrom`) and an
index URL with a token in it (UV_INDEX_URL, ...), and a model's own exception may quote them (a
connection string, a URL with a password). Before a text reaches the log or the termination message
(which the operator copies into the resource's status), every credential is replaced with `***`:
- the values of variables named like credentials (TOKEN, PASSWORD, SECRET, KEY, ...);
- the values of the index variables (UV_INDEX_URL, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, ...) that
  carry credentials, and the credentials of any URL in any variable (`https://user:pass@`, or a
  token alone, `https://TOKEN@`), wherever they show up;
- any URL's userinfo in the text itself, known or not.
Values of four characters or more are masked wherever they occur; shorter ones where they stand
alone (not inside a longer word), except the flag values (0, 1, true, off, ...) that say nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote

MASK = "***"

# Names MLflow and the cloud SDKs read credentials from (MLFLOW_TRACKING_TOKEN/_PASSWORD,
# AWS_SECRET_ACCESS_KEY, AZURE_STORAGE_CONNECTION_STRING, ...), and what users name their own.
_SECRET_NAME = re.compile(
    r"TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL|KEY|CONNECTION_STRING|AUTH", re.IGNORECASE
)
# The package index settings uv and pip read: a private index's URL often carries its token.
_INDEX_NAME = re.compile(r"^(UV|PIP)_\w*(INDEX|FIND_LINKS)", re.IGNORECASE)
# Shorter values could occur by chance inside words: masked only where they stand alone.
_MIN_SECRET_LENGTH = 4
# Values that are settings, not secrets, however a variable is named.
_FLAGS = frozenset({"0", "1", "true", "false", "yes", "no", "on", "off", "y", "n", "t", "f"})
# The userinfo of a URL: `user:password@` or `token@`, up to the first `/`.
_URL_USERINFO = re.compile(r"(?<=://)[^/\s@]+@")


def secret_values(env: Mapping[str, str]) -> tuple[str, ...]:
    """The values to mask, longest first (so a secret that contains another is masked whole)."""
    values: set[str] = set()
    for name, value in env.items():
        if not value:
            continue
        userinfo = _URL_USERINFO.findall(value)
        if _SECRET_NAME.search(name) or (_INDEX_NAME.search(name) and userinfo):
            values.add(value)
        for found in userinfo:
            user, has_password, password = found[:-1].partition(":")
            secret = password if has_password else user  # a token alone stands where the user would
            values.update({secret, unquote(secret)})
    kept = {value for value in values if value and value.lower() not in _FLAGS}
    return tuple(sorted(kept, key=lambda value: (-len(value), value)))


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if len(secret) >= _MIN_SECRET_LENGTH:
            text = text.replace(secret, MASK)
        else:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", MASK, text)
    return _URL_USERINFO.sub(MASK + "@", text)
