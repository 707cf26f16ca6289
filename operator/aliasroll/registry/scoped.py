"""The poller, scoped for pushes: a webhook names a registry (by the tracking URIs its settings list),
while the poller keys what it follows by endpoint, a tracking URI *and* a set of credentials (resources
reading one MLflow with different Secrets are different endpoints). This remembers which endpoints
follow which model, so a delivery signed by one registry reads the model on that registry's endpoints
only (`RegistryPoller.refresh(model, endpoint)` for each), never on another tenant's.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from aliasroll.registry.poller import ModelSnapshot, RegistryPoller, Wake
from aliasroll.registry.types import Endpoint
from aliasroll.webhooks import tracking_uri_key


class ScopedPoller(RegistryPoller):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._following: dict[Hashable, tuple[Endpoint, str]] = {}  # subscriber -> (endpoint, model)

    async def subscribe(
        self, *, subscriber: Hashable, endpoint: Endpoint, model: str, interval: float, wake: Wake
    ) -> ModelSnapshot:
        following = self._following.get(subscriber)
        if following is not None and following != (endpoint, model):
            # The poller would unsubscribe it from there itself; done here first, so the unsubscribe
            # below does not forget what it follows now.
            self.unsubscribe(subscriber)
        self._following[subscriber] = (endpoint, model)
        return await super().subscribe(
            subscriber=subscriber, endpoint=endpoint, model=model, interval=interval, wake=wake
        )

    def unsubscribe(self, subscriber: Hashable) -> None:
        self._following.pop(subscriber, None)
        super().unsubscribe(subscriber)

    def refresh_registry(self, model: str, *, tracking_uris: frozenset[str], moved_at: float | None) -> int:
        """Reads `model` again at once on every endpoint whose tracking URI is one of `tracking_uris`
        (as `tracking_uri_key` gives them); returns how many subscriptions were woken."""
        endpoints = {
            endpoint
            for endpoint, followed in self._following.values()
            if followed == model and tracking_uri_key(endpoint.tracking_uri) in tracking_uris
        }
        return sum(self.refresh(model, endpoint, moved_at=moved_at) for endpoint in endpoints)
