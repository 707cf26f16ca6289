"""One outbound call of the canary analysis, bounded in time and in bytes.

The endpoints the analysis calls are chosen by a tenant: the serving pods run the image the
resource names, and `analysis.prometheus.address` is any URL. Each may drip a byte a second, stream
without end, send a body of many megabytes or never answer. So every call has

- a total deadline: connecting, the answer's head and its body together, not a timeout per read
  (which a drip resets forever);
- a byte budget, counted as the body streams in: reading stops at the budget and the connection is
  closed; a body is never read whole before it is measured (a `Content-Length` above the budget is
  refused before any of it is read). The answer must not be compressed (`Accept-Encoding: identity`
  is asked for): the budget counts the bytes that are kept.

A client may check the egress allow-list when it connects (aliasroll.outbound.GuardedTransport):
a destination it refuses fails the call with the allow-list's reason (`CallFailed.refused`).

Failures are said in the operator's own words (`CallFailed`, in the phrases aliasroll.outbound has
for every outbound call), never with text from the remote's answer, which would put what a tenant's
server says into status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx2

from aliasroll.outbound import DestinationRefusedError, more_than, no_answer_within, not_called

IDENTITY = {"Accept-Encoding": "identity"}


class CallFailed(Exception):
    """Why an endpoint's answer is not used: one of a few fixed phrases (str(error)), completing
    "<the endpoint> ...". `read` is how many bytes of the body were read before the call ended;
    `refused` the allow-list's reason when the destination was refused (nothing was sent)."""

    def __init__(self, phrase: str, *, read: int = 0, refused: str | None = None) -> None:
        super().__init__(phrase)
        self.read = read
        self.refused = refused


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes  # what was read, unless `keep` took it (empty then, and when the body was not read)
    read: int  # bytes of the body read


async def call(
    client: httpx2.AsyncClient,
    method: str,
    url: str,
    *,
    deadline: float,
    limit: int,
    data: Mapping[str, str] | None = None,
    read_body: Callable[[int], bool] = lambda status: True,
    keep: Callable[[bytes], None] | None = None,
) -> Answer:
    """`method url`, answered within `deadline` seconds with at most `limit` bytes of body.

    `read_body(status)` says whether the body of an answer with that status is wanted (the rest are
    closed unread); `keep` takes each piece of the body as it arrives (it may raise to stop reading),
    else the body is returned. Raises CallFailed."""
    read = 0
    try:
        async with asyncio.timeout(deadline):
            # The client's own timeouts bound each phase too (a pool wait, a connect): never longer.
            async with client.stream(method, url, data=data, headers=IDENTITY, timeout=deadline) as answer:
                encoding = answer.headers.get("content-encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise CallFailed("answered with a compressed body")
                if not read_body(answer.status_code):
                    return Answer(status=answer.status_code, body=b"", read=0)
                length = answer.headers.get("content-length", "")
                if length.isdigit() and int(length) > limit:
                    raise CallFailed(more_than(limit))
                pieces: list[bytes] = []
                # aiter_bytes, not aiter_raw: the same bytes (no encoding is accepted), and it also
                # serves an answer a test transport has already read.
                async for piece in answer.aiter_bytes():
                    read += len(piece)
                    if read > limit:
                        raise CallFailed(more_than(limit), read=read)
                    if keep is None:
                        pieces.append(piece)
                    else:
                        keep(piece)
                return Answer(status=answer.status_code, body=b"".join(pieces), read=read)
    except CallFailed as failed:
        failed.read = max(failed.read, read)
        raise
    except DestinationRefusedError as refused:
        raise CallFailed(not_called(refused.reason), refused=refused.reason) from None
    except (TimeoutError, httpx2.TimeoutException):
        raise CallFailed(no_answer_within(deadline), read=read) from None
    except httpx2.ConnectError:
        raise CallFailed("could not be connected to", read=read) from None
    except (httpx2.RemoteProtocolError, httpx2.ReadError):
        raise CallFailed("broke off its answer", read=read) from None
    except httpx2.HTTPError:
        raise CallFailed("could not be reached", read=read) from None
