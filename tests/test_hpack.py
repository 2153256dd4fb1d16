"""The HPACK codec (`_connection/hpack.py`) against the ``hpack`` library, RFC 7541 and h2.

* hpack's Encoder (dynamic table, indexing, size changes, never-indexed fields, with and without
  Huffman) -> our Decoder, with hpack's Decoder beside it as the reference: the same header
  lists of the same types, the same dynamic table, block after block.
* our Encoder -> hpack's Decoder (and ours): the header lists come back, never-indexed fields
  stay never-indexed, the table size updates keep hpack's decoder within its limit.
* A fixed corpus (nginx's and Hypercorn's responses, browser-like requests, long values that
  force eviction, non-ASCII octets, empty values) and a seeded random one (bounded).
* RFC 7541 Appendix C: C.1.2's integer, C.2's four representations, C.3-C.6's request and
  response sequences with their dynamic tables, and C.4/C.6's Huffman strings from our Encoder.
* Malformed blocks raise the same hpack exception class hpack raises, case by case and over
  seeded mutations of valid blocks.
* The memos: a hit gives what the miss gave, they stay bounded, never-indexed values stay out.
* `install` into h2: client and server ``H2Connection`` exchanging real frames in memory.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
import hpack.huffman
import hpack.huffman_constants
import pytest
from hpack import HeaderTuple, NeverIndexedHeaderTuple

from httpx_resilience._connection import hpack as codec
from httpx_resilience._connection.hpack import MEMO_ENTRIES, Decoder, Encoder, install
from tests.support.hpack_samples import HTTPX_REQUEST, NGINX_FIRST, NGINX_HEADERS

Header = tuple[bytes, bytes]

HYPERCORN_HEADERS = [
    (b":status", b"200"),
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", b"2"),
    (b"date", b"Mon, 30 Nov 2026 11:56:48 GMT"),
    (b"server", b"hypercorn-h2"),
]
BROWSER_REQUEST = [
    (b":method", b"GET"),
    (b":authority", b"www.example.com"),
    (b":scheme", b"https"),
    (b":path", b"/index.html?q=caf%C3%A9&page=2"),
    (b"sec-ch-ua", b'"Chromium";v="131", "Not_A Brand";v="24"'),
    (b"sec-ch-ua-mobile", b"?0"),
    (b"upgrade-insecure-requests", b"1"),
    (
        b"user-agent",
        b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        b"Chrome/131.0.0.0 Safari/537.36",
    ),
    (
        b"accept",
        b"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    ),
    (b"sec-fetch-site", b"none"),
    (b"sec-fetch-mode", b"navigate"),
    (b"accept-encoding", b"gzip, deflate, br, zstd"),
    (b"accept-language", b"en-US,en;q=0.9,de;q=0.8"),
    (b"priority", b"u=0, i"),
    # Last: h2 on the receiving side moves the (combined) cookie field to the end.
    (b"cookie", b"session=0123456789abcdef0123456789abcdef; theme=dark"),
]
ODD_HEADERS = [
    (b"x-empty", b""),
    (b"", b"an empty name"),
    (b"x-octets", bytes(range(256))),
    (b"x-utf8", "café ☕ 東京".encode()),
    (b"x-latin1", b"caf\xe9"),
    (b"x-high", b"\xff" * 40),
    (b"accept-charset", b""),  # exactly a static entry
    (b":status", b"204"),
]
LONG_HEADERS = [
    (b"x-long-1", b"a" * 3000),  # with the next one, more than a 4096-octet table holds
    (b"x-long-2", b"b" * 3000),
    (b"x-too-long", b"c" * 5000),  # larger than the table: it empties the table
    (b"set-cookie", b"id=" + b"z" * 200 + b"; Path=/; Secure; HttpOnly"),
]
CORPUS = [
    NGINX_HEADERS,
    HYPERCORN_HEADERS,
    HTTPX_REQUEST,
    BROWSER_REQUEST,
    ODD_HEADERS,
    LONG_HEADERS,
    NGINX_HEADERS,
    BROWSER_REQUEST,
]


def _plain(headers: Iterable[tuple[Any, Any]]) -> list[Header]:
    return [(bytes(name), bytes(value)) for name, value in headers]


def _kinds(headers: Iterable[object]) -> list[type]:
    return [type(header) for header in headers]


def _error(decoder: Any, block: bytes) -> type[BaseException] | None:
    try:
        decoder.decode(block, raw=True)
    except Exception as exc:
        return type(exc)
    return None


def _their_table(decoder: hpack.Decoder) -> list[Header]:
    return list(decoder.header_table.dynamic_entries)


class _Pair:
    """hpack's Decoder (the reference) and ours, fed the same blocks."""

    def __init__(self, table_size: int = 4096) -> None:
        self.theirs = hpack.Decoder()
        self.ours = Decoder()
        for decoder in (self.theirs, self.ours):
            decoder.max_allowed_table_size = table_size
            decoder.header_table_size = table_size

    def decode(self, block: bytes) -> list[HeaderTuple]:
        expected = list(self.theirs.decode(block, raw=True))
        got = self.ours.decode(block, raw=True)
        assert got == expected
        assert _kinds(got) == _kinds(expected)
        assert list(self.ours.table) == _their_table(self.theirs)
        assert self.ours.table_size == sum(32 + len(n) + len(v) for n, v in self.ours.table)
        assert self.ours.header_table_size == self.theirs.header_table_size
        return got

    def allow(self, size: int) -> None:
        self.theirs.max_allowed_table_size = size
        self.ours.max_allowed_table_size = size


# --- hpack's Encoder -> our Decoder ----------------------------------------------------------


@pytest.mark.parametrize("huffman", [True, False])
def test_hpacks_encoder_to_our_decoder_over_the_corpus(huffman: bool) -> None:
    encoder = hpack.Encoder()
    pair = _Pair()
    for headers in CORPUS:
        decoded = pair.decode(encoder.encode(headers, huffman=huffman))
        assert _plain(decoded) == headers
    # The same lists again: now mostly indexed fields from the dynamic table.
    for headers in CORPUS:
        assert _plain(pair.decode(encoder.encode(headers, huffman=huffman))) == headers


def test_hpacks_never_indexed_fields_come_back_never_indexed() -> None:
    encoder = hpack.Encoder()
    pair = _Pair()
    sent: list[Any] = [
        (b":method", b"GET"),
        NeverIndexedHeaderTuple(b"authorization", b"Bearer secret-token"),
        NeverIndexedHeaderTuple(b"x-api-key", b"k3y"),
        (b"cookie", b"a=b", True),  # hpack's (name, value, sensitive) triple
        HeaderTuple(b"x-plain", b"plain"),
    ]
    for _ in range(3):
        decoded = pair.decode(encoder.encode(sent))
        assert _kinds(decoded) == [
            HeaderTuple,
            NeverIndexedHeaderTuple,
            NeverIndexedHeaderTuple,
            NeverIndexedHeaderTuple,
            HeaderTuple,
        ]
        assert _plain(decoded)[1] == (b"authorization", b"Bearer secret-token")


def test_hpacks_table_size_changes_reach_our_decoder() -> None:
    encoder = hpack.Encoder()
    pair = _Pair()
    for size in [4096, 256, 0, 100, 4096, 1000, 1000, 64]:
        # As h2 does it: the new SETTINGS_HEADER_TABLE_SIZE is acknowledged, the decoders
        # accept up to it, the peer's encoder signals its new size in its next block.
        pair.allow(size)
        encoder.header_table_size = size
        for headers in (NGINX_HEADERS, BROWSER_REQUEST, LONG_HEADERS):
            assert _plain(pair.decode(encoder.encode(headers))) == headers
        assert pair.ours.header_table_size == size
        assert pair.ours.table_size <= size


def test_seeded_random_blocks_from_hpacks_encoder() -> None:
    rng = random.Random(7541)
    encoder = hpack.Encoder()
    pair = _Pair()
    for block_number in range(2000):
        if rng.random() < 0.02:
            size = rng.choice([0, 64, 256, 1024, 4096])
            pair.allow(max(size, pair.ours.header_table_size))
            encoder.header_table_size = size
        headers = _random_headers(rng)
        decoded = pair.decode(encoder.encode(headers, huffman=rng.random() < 0.8))
        assert _plain(decoded) == _plain(h[:2] for h in headers), block_number
        if rng.random() < 0.02:  # shrink the limit after the encoder shrank its table
            pair.allow(pair.ours.header_table_size)


#: Names and values the random blocks draw from, so that fields repeat as they do in traffic.
_NAMES = [name for name, _ in hpack.table.HeaderTable.STATIC_TABLE] + [
    b"x-request-id",
    b"x-custom",
    b"etag",
    b"x-" + b"n" * 60,
]
_VALUES = [b"", b"0", b"200", b"gzip", b"text/html; charset=utf-8", b"no-cache", b"\xff\x00\x80"]


def _random_headers(rng: random.Random) -> list[Any]:
    headers: list[Any] = []
    for _ in range(rng.randrange(0, 16)):
        if rng.random() < 0.3:
            name, value = rng.choice(hpack.table.HeaderTable.STATIC_TABLE)
        else:
            name = rng.choice(_NAMES)
            roll = rng.random()
            if roll < 0.6:
                value = rng.choice(_VALUES)
            elif roll < 0.97:
                value = rng.randbytes(rng.randrange(0, 64))
            else:
                value = rng.randbytes(rng.randrange(1000, 5000))
        roll = rng.random()
        if roll < 0.1:
            headers.append(NeverIndexedHeaderTuple(name, value))
        elif roll < 0.15:
            headers.append((name, value, True))
        else:
            headers.append((name, value))
    return headers


def _integer(value: int, bits: int, flags: int) -> bytes:
    """RFC 7541 §5.1, written here rather than taken from the module under test."""
    full = (1 << bits) - 1
    if value < full:
        return bytes((flags | value,))
    out = bytearray((flags | full,))
    value -= full
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes((*out, value))


def _string(value: bytes, huffman: bool) -> bytes:
    if huffman:
        coded = _HUFFMAN.encode(value)
        return _integer(len(coded), 7, 0x80) + coded
    return _integer(len(value), 7, 0) + value


_HUFFMAN = hpack.huffman.HuffmanEncoder(
    hpack.huffman_constants.REQUEST_CODES, hpack.huffman_constants.REQUEST_CODES_LENGTH
)
_MEMO_NAMES = [b"server", b"x-a", b"content-type", b"set-cookie", b"x-" + b"n" * 40]
_MEMO_VALUES = [b"", b"1", b"nginx", b"v" * 40, b"w" * 200, b"\xff\x00"]


def _memo_field(rng: random.Random) -> bytes:
    """One field of any representation; most of them leave the block pure (static names,
    literal names, with incremental indexing among them), some read the dynamic table."""
    roll = rng.random()
    if roll < 0.15:
        return _integer(rng.randint(1, 61), 7, 0x80)
    if roll < 0.22:
        return _integer(62 + rng.randrange(4), 7, 0x80)  # may be outside the table
    flags = rng.choice([0x40, 0x40, 0x00, 0x10])
    bits = 6 if flags == 0x40 else 4
    huffman = rng.random() < 0.5
    value = _string(rng.choice(_MEMO_VALUES), huffman)
    if rng.random() < 0.5:
        index = rng.randint(1, 61) if rng.random() < 0.9 else 62 + rng.randrange(3)
        return _integer(index, bits, flags) + value
    return bytes((flags,)) + _string(rng.choice(_MEMO_NAMES), huffman) + value


def _memo_block(rng: random.Random) -> bytes:
    head = b""
    if rng.random() < 0.08:  # a dynamic table size update first
        head = _integer(rng.choice([0, 60, 100, 300, 4096]), 5, 0x20)
    return head + b"".join(_memo_field(rng) for _ in range(rng.randrange(6)))


def _outcome(decoder: Any, block: bytes) -> tuple[Any, ...]:
    try:
        headers = decoder.decode(block, raw=True)
    except Exception as exc:
        return ("error", type(exc))
    return ("ok", list(headers), _kinds(headers))


def test_seeded_repeated_blocks_from_the_block_memo_decode_as_hpack_does() -> None:
    """Blocks drawn again and again from a few (so that the block memo serves most of them),
    with fields that add to the dynamic table (static and literal names), read it, evict (small
    tables, a field larger than the table), size updates, and header list and table size
    limits changed between blocks: each decodes, or fails, as hpack's Decoder does, and leaves
    the same dynamic table. A failure ends the sequence (it is a connection error)."""
    hits = 0
    for seed in range(300):
        rng = random.Random(seed)
        ours, theirs = Decoder(), hpack.Decoder()
        size = rng.choice([100, 300, 4096])
        ours.header_table_size = theirs.header_table_size = size
        blocks = [_memo_block(rng) for _ in range(6)]
        for step in range(150):
            roll = rng.random()
            if roll < 0.03:
                limit = rng.choice([100, 300, 2**16])
                ours.max_header_list_size = theirs.max_header_list_size = limit
            elif roll < 0.06:
                allowed = rng.choice([0, 100, 300, 4096])
                ours.max_allowed_table_size = theirs.max_allowed_table_size = allowed
            block = rng.choice(blocks)
            hits += block in ours._blocks
            expected = _outcome(theirs, block)
            assert _outcome(ours, block) == expected, (seed, step, block.hex())
            if expected[0] == "error":
                break
            assert ours.table == tuple(theirs.header_table.dynamic_entries), (seed, step)
            assert ours.header_table_size == theirs.header_table_size
    assert hits > 1_000  # the memo served many of them


# --- our Encoder -> hpack's Decoder -----------------------------------------------------------


def test_our_encoder_to_hpacks_decoder_over_the_corpus() -> None:
    encoder = Encoder()
    theirs = hpack.Decoder()
    ours = Decoder()
    for round_ in range(2):  # the second round comes from the memo
        for headers in CORPUS:
            block = encoder.encode(headers)
            assert _plain(theirs.decode(block, raw=True)) == headers, round_
            assert ours.decode(block, raw=True) == headers
            # No dynamic table: hpack's decoder holds nothing, ours neither.
            assert _their_table(theirs) == []
            assert ours.table == ()


def test_seeded_random_blocks_from_our_encoder() -> None:
    rng = random.Random(7540)
    encoder = Encoder()
    theirs = hpack.Decoder()
    ours = Decoder()
    for block_number in range(2000):
        if rng.random() < 0.02:  # the server's SETTINGS_HEADER_TABLE_SIZE changes
            size = rng.choice([0, 64, 256, 4096, 65536])
            encoder.header_table_size = size
            theirs.max_allowed_table_size = ours.max_allowed_table_size = size
        headers = _random_headers(rng)
        block = encoder.encode(headers)
        expected = _plain(h[:2] for h in headers)
        sensitive = [
            isinstance(h, NeverIndexedHeaderTuple) or (len(h) == 3 and h[2]) for h in headers
        ]
        for decoded in (theirs.decode(block, raw=True), ours.decode(block, raw=True)):
            assert _plain(decoded) == expected, block_number
            assert [type(h) is NeverIndexedHeaderTuple for h in decoded] == sensitive
        assert _their_table(theirs) == []
        assert encoder.memo_size <= MEMO_ENTRIES


def test_our_encoder_signals_table_size_zero_first_and_after_every_change() -> None:
    encoder = Encoder()
    assert encoder.header_table_size == 4096
    first = encoder.encode(HTTPX_REQUEST)
    assert first[:1] == b"\x20"  # a dynamic table size update to 0, then the fields
    assert encoder.encode(HTTPX_REQUEST) == first[1:]
    encoder.header_table_size = 4096  # no change: nothing to signal
    assert encoder.encode(HTTPX_REQUEST) == first[1:]
    theirs = hpack.Decoder()
    theirs.decode(first, raw=True)
    for size in [0, 100, 65536]:
        # hpack's decoder, told the new limit as h2 tells it, accepts our blocks.
        theirs.max_allowed_table_size = size
        encoder.header_table_size = size
        assert encoder.header_table_size == size
        block = encoder.encode(HTTPX_REQUEST)
        assert block == first
        assert _plain(theirs.decode(block, raw=True)) == HTTPX_REQUEST
        assert theirs.header_table_size == 0


def test_our_encoder_sends_never_indexed_fields_never_indexed_and_forgets_them() -> None:
    encoder = Encoder()
    theirs = hpack.Decoder()
    plain = (b"authorization", b"Bearer same-value")
    theirs.decode(encoder.encode([plain]), raw=True)
    remembered = encoder.memo_size
    sent: list[Any] = [
        NeverIndexedHeaderTuple(*plain),  # equal to the memoized plain tuple, still sensitive
        NeverIndexedHeaderTuple(b"cookie", b"sid=1"),
        NeverIndexedHeaderTuple(b"x-secret", b"hunter2"),
        (b"proxy-authorization", b"Basic Zm9vOmJhcg==", True),
        HeaderTuple(b"x-fine", b"1"),
    ]
    block = encoder.encode(sent)
    decoded = theirs.decode(block, raw=True)
    assert _plain(decoded) == _plain(h[:2] for h in sent)
    assert _kinds(decoded) == [NeverIndexedHeaderTuple] * 4 + [HeaderTuple]
    assert b"Bearer" not in block  # Huffman-coded, as the rest
    assert encoder.memo_size == remembered + 1  # only x-fine
    assert NeverIndexedHeaderTuple(*plain) in [
        type(h)(*h) for h in Decoder().decode(block, raw=True)
    ]


def test_our_encoder_takes_text_and_triples_as_hpack_does() -> None:
    encoder = Encoder()
    theirs = hpack.Decoder()
    decoded = theirs.decode(
        encoder.encode([(":method", "GET"), ("x-text", "café"), (b"x-bytes", "mixed", False)]),
        raw=True,
    )
    assert decoded == [(b":method", b"GET"), (b"x-text", "café".encode()), (b"x-bytes", b"mixed")]


def test_our_encoders_fields_are_as_short_as_the_static_table_and_huffman_allow() -> None:
    encoder = Encoder()
    encoder.encode([])  # the size update
    assert encoder.encode([(b":method", b"GET")]) == b"\x82"  # static index 2
    assert encoder.encode([(b":status", b"404")]) == b"\x8d"  # static index 13
    # Static name (1, :authority) without indexing, Huffman value (RFC 7541 C.4.1's string).
    assert encoder.encode([(b":authority", b"www.example.com")]) == bytes.fromhex(
        "018cf1e3c2e5f23a6ba0ab90f4ff"
    )
    # A name past index 14 takes a continuation octet: www-authenticate is 61 (15 + 46).
    assert encoder.encode([(b"www-authenticate", b"no-cache")]) == bytes.fromhex(
        "0f2e86a8eb10649cbf"
    )
    # A literal name, both strings Huffman-coded (C.4.3's strings).
    assert encoder.encode([(b"custom-key", b"custom-value")]) == bytes.fromhex(
        "008825a849e95ba97d7f8925a849e95bb8e8b4bf"
    )
    # Where Huffman is not shorter the octets go as they are: "\xff" takes 26 bits coded.
    assert encoder.encode([(b"x", b"\xff\xff")]) == bytes.fromhex("0001") + b"x" + b"\x02\xff\xff"


# --- RFC 7541 Appendix C ----------------------------------------------------------------------


def test_rfc7541_c1_2_integer_with_a_5_bit_prefix() -> None:
    decoder = Decoder()
    decoder.max_allowed_table_size = 4096
    decoder.decode(bytes.fromhex("3f9a0a"), raw=True)  # size update, 1337 = 31 + 26 + 10 * 128
    assert decoder.header_table_size == 1337


@pytest.mark.parametrize(
    ("block", "headers", "kind", "table"),
    [
        (
            "400a637573746f6d2d6b65790d637573746f6d2d686561646572",
            [(b"custom-key", b"custom-header")],
            HeaderTuple,
            [(b"custom-key", b"custom-header")],
        ),
        ("040c2f73616d706c652f70617468", [(b":path", b"/sample/path")], HeaderTuple, []),
        (
            "100870617373776f726406736563726574",
            [(b"password", b"secret")],
            NeverIndexedHeaderTuple,
            [],
        ),
        ("82", [(b":method", b"GET")], HeaderTuple, []),
    ],
    ids=["C.2.1", "C.2.2", "C.2.3", "C.2.4"],
)
def test_rfc7541_c2_field_representations(
    block: str, headers: list[Header], kind: type, table: list[Header]
) -> None:
    pair = _Pair()
    decoded = pair.decode(bytes.fromhex(block))
    assert decoded == headers
    assert _kinds(decoded) == [kind]
    assert list(pair.ours.table) == table


_C3 = [
    "828684410f7777772e6578616d706c652e636f6d",
    "828684be58086e6f2d6361636865",
    "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
]
_C4 = [
    "828684418cf1e3c2e5f23a6ba0ab90f4ff",
    "828684be5886a8eb10649cbf",
    "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
]
_REQUESTS = [
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")],
    [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html")],
]
_REQUEST_EXTRA = [
    [(b":authority", b"www.example.com")],
    [(b":authority", b"www.example.com"), (b"cache-control", b"no-cache")],
    [(b":authority", b"www.example.com"), (b"custom-key", b"custom-value")],
]
_REQUEST_TABLES = [
    ([(b":authority", b"www.example.com")], 57),
    ([(b"cache-control", b"no-cache"), (b":authority", b"www.example.com")], 110),
    (
        [
            (b"custom-key", b"custom-value"),
            (b"cache-control", b"no-cache"),
            (b":authority", b"www.example.com"),
        ],
        164,
    ),
]


@pytest.mark.parametrize("blocks", [_C3, _C4], ids=["C.3", "C.4"])
def test_rfc7541_c3_c4_requests(blocks: list[str]) -> None:
    pair = _Pair()
    for block, start, extra, (table, size) in zip(
        blocks, _REQUESTS, _REQUEST_EXTRA, _REQUEST_TABLES, strict=True
    ):
        assert pair.decode(bytes.fromhex(block)) == start + extra
        assert list(pair.ours.table) == table
        assert pair.ours.table_size == size


_C5 = [
    "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d"
    "546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
    "4803333037c1c0bf",
    "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f"
    "6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b"
    "2076657273696f6e3d31",
]
_C6 = [
    "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c7"
    "8f0b97c8e9ae82ae43d3",
    "4883640effc1c0bf",
    "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335"
    "dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
]
_DATE_1 = (b"date", b"Mon, 21 Oct 2013 20:13:21 GMT")
_DATE_2 = (b"date", b"Mon, 21 Oct 2013 20:13:22 GMT")
_LOCATION = (b"location", b"https://www.example.com")
_PRIVATE = (b"cache-control", b"private")
_COOKIE = (b"set-cookie", b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")
_RESPONSES = [
    [(b":status", b"302"), _PRIVATE, _DATE_1, _LOCATION],
    [(b":status", b"307"), _PRIVATE, _DATE_1, _LOCATION],
    [
        (b":status", b"200"),
        _PRIVATE,
        _DATE_2,
        _LOCATION,
        (b"content-encoding", b"gzip"),
        _COOKIE,
    ],
]
_RESPONSE_TABLES = [
    ([_LOCATION, _DATE_1, _PRIVATE, (b":status", b"302")], 222),
    ([(b":status", b"307"), _LOCATION, _DATE_1, _PRIVATE], 222),
    ([_COOKIE, (b"content-encoding", b"gzip"), _DATE_2], 215),
]


@pytest.mark.parametrize("blocks", [_C5, _C6], ids=["C.5", "C.6"])
def test_rfc7541_c5_c6_responses_with_eviction(blocks: list[str]) -> None:
    # SETTINGS_HEADER_TABLE_SIZE is 256 octets, so entries are evicted.
    pair = _Pair(table_size=256)
    for block, headers, (table, size) in zip(blocks, _RESPONSES, _RESPONSE_TABLES, strict=True):
        assert pair.decode(bytes.fromhex(block)) == headers
        assert list(pair.ours.table) == table
        assert pair.ours.table_size == size


def test_rfc_blocks_are_what_hpacks_encoder_makes() -> None:
    # A check on the transcription above: hpack's indexing encoder writes the same octets.
    for blocks, huffman in ((_C3, False), (_C4, True)):
        encoder = hpack.Encoder()
        for block, start, extra in zip(blocks, _REQUESTS, _REQUEST_EXTRA, strict=True):
            assert encoder.encode(start + extra, huffman=huffman).hex() == block
    for blocks, huffman in ((_C5, False), (_C6, True)):
        encoder = hpack.Encoder()
        encoder.header_table_size = 256
        for number, (block, headers) in enumerate(zip(blocks, _RESPONSES, strict=True)):
            encoded = encoder.encode(headers, huffman=huffman)
            # The first block carries hpack's size update (3f e1 01: 256), the RFC's none.
            assert (encoded[3:] if number == 0 else encoded).hex() == block


# --- nginx, byte for byte ---------------------------------------------------------------------


def test_nginx_blocks_and_their_memo_hits() -> None:
    pair = _Pair()
    assert pair.decode(NGINX_FIRST) == NGINX_HEADERS
    assert pair.ours.header_table_size == 0  # nginx empties the table, then indexes nothing
    remembered = pair.ours.memo_size
    assert remembered > 0
    for _ in range(3):  # the same block again: every literal from the memo, the same result
        assert pair.decode(NGINX_FIRST[1:]) == NGINX_HEADERS
        assert pair.ours.memo_size == remembered
    assert _kinds(pair.ours.decode(NGINX_FIRST[1:], raw=True)) == [HeaderTuple] * 8


def test_text_headers_when_not_raw() -> None:
    block = hpack.Encoder().encode([(b"x-utf8", "café".encode())])
    ours: Any = Decoder().decode(block)  # HeaderTuple of str, whatever its annotation says
    theirs: Any = hpack.Decoder().decode(block)
    assert ours == theirs == [("x-utf8", "café")]
    bad = hpack.Encoder().encode([(b"x-latin1", b"caf\xe9")])
    assert _error(_TextDecoder(Decoder()), bad) is hpack.HPACKDecodingError
    assert _error(_TextDecoder(hpack.Decoder()), bad) is hpack.HPACKDecodingError


class _TextDecoder:
    def __init__(self, decoder: Any) -> None:
        self.decoder = decoder

    def decode(self, block: bytes, raw: bool) -> Any:
        return self.decoder.decode(block, raw=False)


# --- malformed blocks -------------------------------------------------------------------------


def _fresh(max_header_list_size: int = 2**16, allowed: int = 4096) -> tuple[Any, Any]:
    theirs = hpack.Decoder(max_header_list_size=max_header_list_size)
    ours = Decoder(max_header_list_size=max_header_list_size)
    for decoder in (theirs, ours):
        decoder.max_allowed_table_size = allowed
    return theirs, ours


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("80", hpack.InvalidTableIndex),  # index 0
        ("be", hpack.InvalidTableIndex),  # 62, the dynamic table is empty
        ("7e0161", hpack.InvalidTableIndex),  # literal with incremental indexing, name 62
        ("0f2f0161", hpack.InvalidTableIndex),  # literal without indexing, name 15 + 47 = 62
        ("1f2f0161", hpack.InvalidTableIndex),  # never indexed, name 62
        ("ff8080808001", hpack.InvalidTableIndex),  # five continuation octets: allowed, absurd
        ("ff808080808001", hpack.HPACKDecodingError),  # six: too long an integer
        ("ff", hpack.HPACKDecodingError),  # truncated integer
        ("ff80", hpack.HPACKDecodingError),  # truncated after a continuation octet
        ("04", hpack.HPACKDecodingError),  # no value
        ("040561", hpack.HPACKDecodingError),  # value shorter than its length
        ("00", hpack.HPACKDecodingError),  # no name
        ("000161", hpack.HPACKDecodingError),  # name, no value
        ("0003616263", hpack.HPACKDecodingError),  # name shorter than its length
        ("047f", hpack.HPACKDecodingError),  # value length truncated
        ("0481", hpack.HPACKDecodingError),  # Huffman value shorter than its length
        ("048118", hpack.HPACKDecodingError),  # Huffman padding not all ones
        ("04821fff", hpack.HPACKDecodingError),  # padding longer than 7 bits
        ("0484ffffffff", hpack.HPACKDecodingError),  # EOS inside the string
        ("0081180161", hpack.HPACKDecodingError),  # bad Huffman in a literal name
        ("1481180161", hpack.HPACKDecodingError),  # bad Huffman in a never-indexed value
        ("8220", hpack.HPACKDecodingError),  # size update after a field
        ("3fe21f", hpack.InvalidTableSizeError),  # size update to 4097 > 4096 allowed
        ("3f", hpack.HPACKDecodingError),  # truncated size update
    ],
)
def test_malformed_blocks_raise_what_hpack_raises(
    block: str, expected: type[BaseException]
) -> None:
    theirs, ours = _fresh()
    data = bytes.fromhex(block)
    assert _error(theirs, data) is expected
    assert _error(ours, data) is expected


def test_error_messages_do_not_carry_the_blocks_octets() -> None:
    # A block with a credential, cut short at every point and given a bad tail: whatever is
    # raised (h2 puts the message into its ProtocolError) never shows the block's octets.
    secret = NeverIndexedHeaderTuple(b"authorization", b"Bearer s3cr3t-t0ken")
    for huffman in (False, True):
        block = hpack.Encoder().encode([(b":method", b"GET"), secret], huffman=huffman)
        for cut in range(1, len(block) + 1):
            for tail in (b"", b"\xff", b"\xff\x80\x80\x80\x80\x80\x80", b"\x82\x20"):
                data = block[:cut] + tail
                try:
                    Decoder().decode(data, raw=True)
                except hpack.HPACKError as exc:
                    message = str(exc)
                    assert "s3cr3t" not in message
                    assert repr(block[1:])[2:-1] not in message
                    assert "\\x" not in message, message
                    assert "b'" not in message, message


def test_oversized_header_list_raises_what_hpack_raises() -> None:
    block = hpack.Encoder().encode([(b"x-a", b"a" * 40), (b"x-b", b"b" * 40)])
    # 32 + 3 + 40 = 75 per field: the first fits in 100, the second does not.
    for decoder in _fresh(max_header_list_size=100):
        with pytest.raises(hpack.OversizedHeaderListError):
            decoder.decode(block, raw=True)
    for decoder in _fresh(max_header_list_size=150):
        assert len(decoder.decode(block, raw=True)) == 2
    # Indexed fields count as well: 2,000 times :method GET from one octet each.
    for decoder in _fresh():
        with pytest.raises(hpack.OversizedHeaderListError):
            decoder.decode(b"\x82" * 2000, raw=True)


def test_a_table_left_above_a_lowered_limit_is_an_error_until_shrunk() -> None:
    for decoder in _fresh():
        decoder.decode(b"\x82", raw=True)
        decoder.max_allowed_table_size = 100
        with pytest.raises(hpack.InvalidTableSizeError):
            decoder.decode(b"\x82", raw=True)
        assert decoder.decode(bytes.fromhex("3f4582"), raw=True) == [(b":method", b"GET")]
        assert decoder.header_table_size == 100


def test_seeded_mutations_of_valid_blocks_raise_or_decode_as_hpack_does() -> None:
    rng = random.Random(2024)
    seeds = [bytes.fromhex(block) for block in _C3 + _C4 + _C5 + _C6] + [
        NGINX_FIRST,
        hpack.Encoder().encode(BROWSER_REQUEST),
        hpack.Encoder().encode([NeverIndexedHeaderTuple(b"authorization", b"secret")]),
        Encoder().encode(HTTPX_REQUEST),
    ]
    outcomes: set[str] = set()
    for _ in range(3000):
        block = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 4)):
            roll = rng.random()
            where = rng.randrange(len(block) + 1)
            if roll < 0.4 and block:
                block[min(where, len(block) - 1)] ^= 1 << rng.randrange(8)
            elif roll < 0.6:
                del block[where:]
            elif roll < 0.8:
                block[where:where] = rng.randbytes(rng.randrange(1, 4))
            else:
                block[where:where] = rng.choice(seeds)[: rng.randrange(1, 8)]
        # Both decoders start with the same table (C.3's), so dynamic indexes can resolve.
        theirs, ours = _fresh(max_header_list_size=rng.choice([200, 2**16]))
        for decoder in (theirs, ours):
            decoder.decode(bytes.fromhex(_C3[0]), raw=True)
        try:
            expected: Any = list(theirs.decode(bytes(block), raw=True))
        except Exception as exc:
            expected = type(exc)
        try:
            got: Any = ours.decode(bytes(block), raw=True)
        except Exception as exc:
            got = type(exc)
        assert got == expected, block.hex()
        if isinstance(expected, list):
            assert _kinds(got) == _kinds(expected)
            assert list(ours.table) == _their_table(theirs)
            outcomes.add("decoded")
        else:
            outcomes.add(expected.__name__)
    # The mutations reached the error paths, not only the happy one.
    assert {"decoded", "HPACKDecodingError", "InvalidTableIndex"} <= outcomes


# --- the memos --------------------------------------------------------------------------------


def test_decoder_memo_hits_match_misses_and_stay_bounded() -> None:
    encoder = Encoder()
    decoder = Decoder()
    reference = hpack.Decoder()
    first = [encoder.encode([(b"x-id", str(i).encode() * 3)]) for i in range(3 * MEMO_ENTRIES)]
    for block in first:
        assert decoder.decode(block, raw=True) == reference.decode(block, raw=True)
        assert 0 < decoder.memo_size <= MEMO_ENTRIES
    for block in first[-10:]:  # hits (the newest are still there) give the same fields
        assert decoder.decode(block, raw=True) == reference.decode(block, raw=True)


def test_decoder_memo_is_bounded_in_octets() -> None:
    decoder = Decoder()
    encoder = hpack.Encoder()
    encoder.header_table_size = 0  # literals only
    for i in range(200):
        value = bytes([97 + i % 26]) * 4000 + str(i).encode()
        block = encoder.encode([(b"x-big", value)])
        assert decoder.decode(block, raw=True) == [(b"x-big", value)]
        held = sum(len(k) + len(v[0]) + len(v[1]) for k, v in decoder._fields.items())
        assert held <= codec.MEMO_BYTES
    # Longer than MEMO_STRING: decoded, never kept (only its name is).
    huge = encoder.encode([(b"x-huge", b"h" * 10_000)])
    assert decoder.decode(huge, raw=True) == [(b"x-huge", b"h" * 10_000)]
    assert b"x-huge" in decoder._memo.values()
    # Nor a literal name longer than MEMO_STRING on the wire (7,000 "n" take 5,250 octets).
    long_name = b"n" * 7000
    block = encoder.encode([(long_name, b"v")])
    assert decoder.decode(block, raw=True) == [(long_name, b"v")]
    kept = list(decoder._memo.values()) + [v for _, v in decoder._fields.values()]
    assert max(map(len, kept)) < 7000


def test_decoder_never_keeps_never_indexed_values() -> None:
    decoder = Decoder()
    encoder = hpack.Encoder()
    secrets = [NeverIndexedHeaderTuple(b"authorization", b"Bearer " + b"s" * i) for i in range(50)]
    for secret in secrets:
        decoded = decoder.decode(encoder.encode([secret]), raw=True)
        assert decoded == [secret]
        assert type(decoded[0]) is NeverIndexedHeaderTuple
    assert decoder.memo_size == 0
    kept = list(decoder._memo.values()) + [v for _, v in decoder._fields.values()]
    assert not any(b"Bearer" in value for value in kept)
    assert not decoder._blocks  # nor any block holding one


def test_decoder_block_memo_serves_only_blocks_their_octets_decide() -> None:
    """Whole blocks are remembered only when their octets alone decide their fields (static
    indexes and literals, nothing read from the dynamic table, no size update, nothing
    never-indexed): a remembered block that adds to the dynamic table adds again on every hit,
    one that refers to it follows the table, and a remembered block still obeys the header
    list limit."""
    decoder = Decoder()
    encoder = Encoder()
    decoder.decode(encoder.encode(NGINX_HEADERS), raw=True)  # with a table size update first
    assert not decoder._blocks
    pure = encoder.encode(NGINX_HEADERS)  # static indexes and literals without indexing
    first = decoder.decode(pure, raw=True)
    assert first == NGINX_HEADERS
    assert len(decoder._blocks) == 1
    for _ in range(3):
        again = decoder.decode(pure, raw=True)
        assert again == first
        assert again is not first  # a list of its own each time
    text: Any = decoder.decode(pure)  # HeaderTuple of str, whatever its annotation says
    assert text == [(n.decode(), v.decode()) for n, v in NGINX_HEADERS]

    decoder.max_header_list_size = 100
    with pytest.raises(hpack.OversizedHeaderListError):
        decoder.decode(pure, raw=True)

    table = Decoder()  # a table of 4,096 octets
    indexing = hpack.Encoder()
    adds = indexing.encode([(b"x-new", b"1")])  # literal with incremental indexing
    assert table.decode(adds, raw=True) == [(b"x-new", b"1")]
    assert adds in table._blocks  # remembered, with the field it adds
    assert table.decode(adds, raw=True) == [(b"x-new", b"1")]  # from the memo
    assert table.table == ((b"x-new", b"1"), (b"x-new", b"1"))  # added twice
    refers = bytes([0x80 | 62])  # the newest dynamic entry
    assert table.decode(refers, raw=True) == [(b"x-new", b"1")]
    other = indexing.encode([(b"x-other", b"2")])
    table.decode(other, raw=True)
    assert table.decode(refers, raw=True) == [(b"x-other", b"2")]
    assert refers not in table._blocks  # it reads the dynamic table
    # The same additions from the memo as without it, against hpack's decoder, over a
    # sequence that repeats blocks which add, evict (a small table) and refer.
    ours, theirs = Decoder(), hpack.Decoder()
    ours.header_table_size = theirs.header_table_size = 100
    sequence = [adds, other, refers, adds, refers, other, other, refers, adds, adds, refers]
    for block in sequence * 3:
        assert ours.decode(block, raw=True) == theirs.decode(block, raw=True)
        assert ours.table == tuple(theirs.header_table.dynamic_entries)


def test_encoder_memo_hits_match_misses_and_stay_bounded() -> None:
    encoder = Encoder()
    fresh = Encoder()
    fresh.encode([])
    encoder.encode([])
    for i in range(3 * MEMO_ENTRIES):
        field = (b"x-id", str(i).encode())
        block = encoder.encode([field])
        assert block == Encoder().encode([field])[1:]
        assert 0 < encoder.memo_size <= MEMO_ENTRIES
    assert encoder.encode(HTTPX_REQUEST) == encoder.encode(HTTPX_REQUEST)  # hit == miss
    assert encoder.encode(HTTPX_REQUEST) == fresh.encode(HTTPX_REQUEST)


# --- install into h2 --------------------------------------------------------------------------


def _exchange(a: h2.connection.H2Connection, b: h2.connection.H2Connection) -> list[Any]:
    """Deliver what each side has to send to the other until both are quiet."""
    events: list[Any] = []
    for _ in range(20):
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_a and not to_b:
            return events
        if to_b:
            events += b.receive_data(to_b)
        if to_a:
            events += a.receive_data(to_a)
    raise AssertionError("the connections did not go quiet")


def _h2_pair() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    install(client)
    client.initiate_connection()
    server.initiate_connection()
    _exchange(client, server)
    return client, server


def _request(client: h2.connection.H2Connection, headers: Sequence[Header]) -> int:
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, headers, end_stream=True)
    return stream_id


def test_install_serves_h2_requests_and_responses() -> None:
    client, server = _h2_pair()
    assert isinstance(client.encoder, Encoder)
    assert isinstance(client.decoder, Decoder)
    request = [*HTTPX_REQUEST, (b"authorization", b"Bearer t0ken")]
    for round_ in range(5):
        stream_id = _request(client, request)
        received = [
            e for e in _exchange(client, server) if isinstance(e, h2.events.RequestReceived)
        ]
        assert [_plain(e.headers) for e in received] == [request], round_
        # h2 marks authorization never-indexed; it reaches the server so.
        assert type(received[0].headers[-1]) is NeverIndexedHeaderTuple
        # The server's hpack encoder indexes; our decoder follows its table.
        response = [
            (b":status", b"200"),
            *HYPERCORN_HEADERS[1:],
            (b"x-round", str(round_).encode()),
        ]
        server.send_headers(stream_id, response, end_stream=True)
        answered = [
            e for e in _exchange(client, server) if isinstance(e, h2.events.ResponseReceived)
        ]
        assert [_plain(e.headers) for e in answered] == [response]
    assert client.decoder.table


def test_a_block_refused_half_way_leaves_nothing_out_of_step() -> None:
    # h2 feeds the encoder the headers it has validated so far and raises at a bad one: with
    # hpack's encoder the fields before it are in its table but not in the server's, and the
    # next request refers to them. Ours keeps no table: the next request decodes as sent.
    client, server = _h2_pair()
    refused = [*HTTPX_REQUEST, (b"x-fresh", b"never sent"), (b":bad", b"pseudo after regular")]
    with pytest.raises(h2.exceptions.ProtocolError):
        _request(client, refused)
    assert client.data_to_send() == b""
    request = [*HTTPX_REQUEST, (b"x-fresh", b"never sent")]
    _request(client, request)
    received = [e for e in _exchange(client, server) if isinstance(e, h2.events.RequestReceived)]
    assert [_plain(e.headers) for e in received] == [request]
    # And the encoder alone: a failure in the middle of a block keeps the size update due.
    encoder = Encoder()

    def failing() -> Iterable[Header]:
        yield (b":method", b"GET")
        raise ValueError("bad header")

    with pytest.raises(ValueError, match="bad header"):
        encoder.encode(failing())
    block = encoder.encode(HTTPX_REQUEST)
    assert block[:1] == b"\x20"
    assert _plain(hpack.Decoder().decode(block, raw=True)) == HTTPX_REQUEST


def test_install_follows_settings_both_ways() -> None:
    client, server = _h2_pair()
    # The server lowers its HEADER_TABLE_SIZE: h2 tells our encoder, which signals 0 again.
    server.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    _exchange(client, server)
    assert client.encoder.header_table_size == 0
    stream_id = _request(client, HTTPX_REQUEST)
    # The client lowers its own limits: h2 applies them to our decoder once acknowledged.
    client.update_settings(
        {
            h2.settings.SettingCodes.HEADER_TABLE_SIZE: 100,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 300,
        }
    )
    received = _exchange(client, server)
    assert any(isinstance(e, h2.events.RequestReceived) for e in received)
    assert server.decoder.header_table_size == 0
    assert client.decoder.max_allowed_table_size == 100
    assert client.decoder.max_header_list_size == 300
    server.send_headers(stream_id, HYPERCORN_HEADERS, end_stream=True)
    events = _exchange(client, server)
    assert [_plain(e.headers) for e in events if isinstance(e, h2.events.ResponseReceived)] == [
        HYPERCORN_HEADERS
    ]
    assert client.decoder.header_table_size <= 100
    # More than 300 octets of headers: h2 turns our OversizedHeaderListError into its
    # DenialOfServiceError, as it does hpack's.
    stream_id = _request(client, HTTPX_REQUEST)
    _exchange(client, server)
    server.send_headers(stream_id, [(b":status", b"200"), (b"x-big", b"x" * 400)])
    with pytest.raises(h2.exceptions.DenialOfServiceError) as caught:
        _exchange(client, server)
    assert isinstance(caught.value.__cause__, hpack.OversizedHeaderListError)


def test_install_keeps_what_hpacks_codec_already_had() -> None:
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    client.initiate_connection()
    server.initiate_connection()
    _exchange(client, server)
    # A first exchange with hpack's codecs: both dynamic tables fill.
    stream_id = _request(client, BROWSER_REQUEST)
    _exchange(client, server)
    server.send_headers(stream_id, HYPERCORN_HEADERS, end_stream=True)
    _exchange(client, server)
    before = list(client.decoder.header_table.dynamic_entries)
    assert before
    client.decoder.max_header_list_size = 12345
    install(client)
    install(client)  # twice: nothing changes
    assert client.decoder.table == tuple(before)  # type: ignore[attr-defined]
    assert client.decoder.max_header_list_size == 12345
    for _ in range(2):  # the server's encoder refers to its table; our decoder has it
        stream_id = _request(client, BROWSER_REQUEST)
        received = [
            e for e in _exchange(client, server) if isinstance(e, h2.events.RequestReceived)
        ]
        assert [_plain(e.headers) for e in received] == [BROWSER_REQUEST]
        server.send_headers(stream_id, HYPERCORN_HEADERS, end_stream=True)
        answered = [
            e for e in _exchange(client, server) if isinstance(e, h2.events.ResponseReceived)
        ]
        assert [_plain(e.headers) for e in answered] == [HYPERCORN_HEADERS]
    # Our size update emptied the server's copy of hpack's old table.
    assert list(server.decoder.header_table.dynamic_entries) == []


# --- the layer rule ---------------------------------------------------------------------------


def test_the_codec_imports_no_httpx_and_no_event_loop() -> None:
    path = Path(codec.__file__)
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            imported.add("." + (node.module or ""))
    assert "hpack" in imported  # the check sees the imports
    assert imported.isdisjoint({"httpx", "httpcore", "anyio", "asyncio", "trio", "sniffio"})
    assert not any(name.startswith(".") for name in imported)  # nothing else of ours
