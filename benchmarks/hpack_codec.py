"""HPACK cost per header block: the ``hpack`` library's Encoder/Decoder (what h2 uses by
default) against ``httpx_resilience._connection.hpack``, in one run:

    python benchmarks/hpack_codec.py [--number 20000] [--repeat 7]

Decoding: the header block a real nginx 1.22 sends for a static file over HTTP/2 (8 headers,
Huffman-coded literals; captured from ``tests/support/nginx.py``'s ``NginxFiles``). Encoding:
the 7 headers our HTTP/2 connection sends for a GET from ``httpx.AsyncClient``. Then what the
memos cannot serve: the same request with a new ``:path`` each time, and a response like nginx's
with a new date, length and etag each time (4,096 of each, cycled: more than a memo holds). Each
figure is the best of ``--repeat`` timeit runs of ``--number`` blocks, in microseconds per block.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

import hpack

from httpx_resilience._connection import hpack as ours

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.hpack_samples import HTTPX_REQUEST as REQUEST
from tests.support.hpack_samples import NGINX_BLOCK


def best(work: Callable[[], object], number: int, repeat: int) -> float:
    """Microseconds per call, best of ``repeat`` runs."""
    return min(timeit.repeat(work, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    theirs_decoder = hpack.Decoder()
    our_decoder = ours.Decoder()
    assert our_decoder.decode(NGINX_BLOCK, raw=True) == theirs_decoder.decode(NGINX_BLOCK, raw=True)
    theirs_encoder = hpack.Encoder()
    our_encoder = ours.Encoder()
    assert hpack.Decoder().decode(our_encoder.encode(REQUEST), raw=True) == REQUEST
    paths = itertools.cycle(
        [[*REQUEST[:3], (b":path", b"/items/%d?page=2" % i), *REQUEST[4:]] for i in range(4096)]
    )
    fresh_encoder = ours.Encoder()
    fresh_encoder.encode([])
    responses = [
        fresh_encoder.encode(
            [
                (b":status", b"200"),
                (b"server", b"nginx/1.22.1"),
                (
                    b"date",
                    b"Mon, 30 Nov 2026 %02d:%02d:%02d GMT" % (i // 3600, i // 60 % 60, i % 60),
                ),
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % (100 + i)),
                (b"etag", b'"6b0d6480-%x"' % (100 + i)),
                (b"accept-ranges", b"bytes"),
            ]
        )
        for i in range(4096)
    ]
    theirs_blocks = itertools.cycle(responses)
    our_blocks = itertools.cycle(responses)
    theirs_new_path = hpack.Encoder()
    our_new_path = ours.Encoder()
    theirs_new_fields = hpack.Decoder()
    our_new_fields = ours.Decoder()
    rows: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        (
            "decode nginx response (8 headers)",
            lambda: theirs_decoder.decode(NGINX_BLOCK, raw=True),
            lambda: our_decoder.decode(NGINX_BLOCK, raw=True),
        ),
        (
            "encode httpx request (7 headers)",
            lambda: theirs_encoder.encode(REQUEST),
            lambda: our_encoder.encode(REQUEST),
        ),
        (
            "encode, a new :path each time",
            lambda: theirs_new_path.encode(next(paths)),
            lambda: our_new_path.encode(next(paths)),
        ),
        (
            "decode, new date/length/etag each time",
            lambda: theirs_new_fields.decode(next(theirs_blocks), raw=True),
            lambda: our_new_fields.decode(next(our_blocks), raw=True),
        ),
    ]
    print(f"Python {platform.python_version()}, hpack {hpack.__version__}; µs per block")
    print(f"{'':40} {'hpack':>8} {'ours':>8} {'speed-up':>9}")
    for label, theirs, mine in rows:
        before = best(theirs, args.number, args.repeat)
        after = best(mine, args.number, args.repeat)
        print(f"{label:40} {before:8.2f} {after:8.2f} {before / after:8.1f}x")


if __name__ == "__main__":
    main()
