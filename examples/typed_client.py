"""A typed client for a JSON API: a small class with typed methods over one ``AsyncAPIClient``.

Dataclasses come out, a ``TypedDict`` goes in, and the wire format is checked in one place.
Retries, circuit breaking, HTTP/2 and mapped errors come from the facade underneath.

    python examples/typed_client.py BASE_URL

``BASE_URL`` must serve ``GET/DELETE /users/<id>`` and ``POST /users``, as this project's test
server does.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypedDict

import anyio

from httpx_resilience import (
    AsyncAPIClient,
    CircuitBreaker,
    ResourceNotFoundError,
    RetryConfig,
    api_key_auth,
)


# --8<-- [start:client]
@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str

    @classmethod
    def from_json(cls, data: Any) -> User:
        """Check the wire format once, here, rather than wherever a user is used."""
        if not isinstance(data, dict) or not isinstance(data.get("id"), int):
            raise ValueError(f"not a user: {data!r}")
        return cls(id=data["id"], name=str(data["name"]))


class NewUser(TypedDict):
    name: str


class UsersAPI:
    """The users service. Create one per process and share it: one connection pool,
    one retry budget and one circuit breaker for every caller."""

    def __init__(self, base_url: str, *, api_key: str) -> None:
        self._api = AsyncAPIClient(
            base_url,
            auth=api_key_auth(api_key),
            retry=RetryConfig(max_retries=2, total_timeout=10.0),
            circuit_breaker=CircuitBreaker(failure_threshold=5, name="users"),
        )

    async def get(self, user_id: int) -> User | None:
        try:
            return User.from_json(await self._api.get_json(f"/users/{user_id}"))
        except ResourceNotFoundError:
            return None

    async def create(self, user: NewUser, *, request_id: str) -> User:
        # The Idempotency-Key makes this POST safe to retry: the service deduplicates
        # on it.
        response = await self._api.post(
            "/users", json=user, headers={"Idempotency-Key": request_id}
        )
        return User.from_json(response.data)

    async def delete(self, user_id: int) -> None:
        await self._api.delete(f"/users/{user_id}")

    async def __aenter__(self) -> UsersAPI:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._api.close()


async def main(base_url: str) -> None:
    async with UsersAPI(base_url, api_key="k3y") as users:
        print(await users.get(7))
        print(await users.get(0))
        request_id = str(uuid.uuid4())  # one per order; the same for its retries
        print(await users.create({"name": "Grace Hopper"}, request_id=request_id))
        await users.delete(7)


# --8<-- [end:client]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    anyio.run(main, sys.argv[1])
