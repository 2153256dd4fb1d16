"""Per-host policies: one ``ResilientTransport`` per mount, one client.

An internal service gets patient retries; a partner API, reached over HTTPS (HTTP/2 when the
server offers it), gets one retry at most. httpx picks the mount whose URL pattern matches a
request most specifically, so no router is needed.

    python examples/mounts.py INTERNAL_URL PARTNER_URL [CA_FILE]

``CA_FILE`` is a PEM bundle to trust for the partner's certificate (the test suite passes its
throwaway CA). Each upstream must serve ``/flaky/<key>?fail=N``: N failures, then 200, as this
project's test server does.
"""

from __future__ import annotations

import ssl
import sys
import uuid

import anyio
import httpx

from httpx_resilience import ResilientTransport, RetryConfig, get_retry_history


async def main(internal: str, partner: str, ca_file: str | None) -> None:
    verify: ssl.SSLContext | bool = True
    if ca_file is not None:
        verify = ssl.create_default_context(cafile=ca_file)
    client = httpx.AsyncClient(
        mounts={
            internal: ResilientTransport(retry=RetryConfig(max_retries=5, base_delay=0.05)),
            partner: ResilientTransport(
                verify=verify, retry=RetryConfig(max_retries=1, base_delay=0.05)
            ),
            "all://": ResilientTransport(),  # everything else: the defaults
        }
    )
    key = uuid.uuid4().hex
    async with client:
        for name, base in (("internal", internal), ("partner", partner)):
            response = await client.get(f"{base}/flaky/{key}?fail=3")
            statuses = ", ".join(str(a.status) for a in get_retry_history(response))
            print(f"{name:8} -> {response.status_code} over {response.http_version}", end="; ")
            print(f"attempts: {statuses}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else None)
