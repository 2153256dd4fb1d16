"""HPACK (RFC 7541) for our HTTP/2 connections: an `Encoder` and a `Decoder` that h2 uses in
place of the ``hpack`` library's, cheap on the headers real traffic repeats.

**Why.** At concurrency 50 against nginx, HPACK was a large share of the client's CPU per
request. nginx sends every response header as a Huffman-coded literal (after a table size update
to 0, so nothing is ever indexed), so ``hpack.Decoder`` Huffman-decodes the same strings in pure
Python for every response; ``hpack.Encoder`` searches its tables and logs a ``logging.debug``
call per header. Measured on this project's machine (2 cores, Python 3.11, hpack 4.2), one run
of ``benchmarks/hpack_codec.py``: decoding nginx's 8 response headers took 46.4 µs per block
with ``hpack.Decoder`` and 4.5 µs with this one (10x); encoding the 7 headers of a typical httpx
request 8.0 µs with ``hpack.Encoder`` and 0.75 µs with this one (11x). What the memos cannot
serve costs less too: a request with a new ``:path`` each time 19.5 -> 3.7 µs; a response with
a new date, length and etag each time 34 -> 15 µs (Huffman decoding of the new strings). End to
end, ``benchmarks/throughput.py --http 2 --concurrency 50`` against nginx (one run each, with
`install` in ``http2.py``): the connection layer's client CPU per request went from 395 to
329 µs (2,516 -> 3,022 req/s).

**Decoder.** Full RFC 7541: indexed fields (static and dynamic table), the three kinds of
literal, dynamic table size updates (only at the start of a block, never above
``max_allowed_table_size``), eviction by the RFC's accounting (name + value + 32 octets), the
header list limit (``max_header_list_size``), integers of at most five continuation octets and
Huffman strings with the padding rules. It raises ``hpack``'s own exception classes, in the
same cases as ``hpack.Decoder``, so h2's handling (``DenialOfServiceError`` for an oversized
list, ``ProtocolError`` for the rest) is unchanged; it returns `hpack.HeaderTuple`, and
`hpack.NeverIndexedHeaderTuple` for a never-indexed field, as ``hpack`` does. The speed comes
from a memo per decoder, in two parts: a literal field's octets to the field, when its name is
literal or from the static table (then the octets alone decide the field), and a Huffman
string's octets to its decoded octets (literal names, and values named from the dynamic table).
A repeated header then costs a dictionary lookup; on a miss Huffman strings are decoded by
``hpack``'s own ``decode_huffman``. The memo is bounded (`MEMO_ENTRIES` entries and `MEMO_BYTES`
octets; it is emptied when either would be exceeded, and nothing longer than `MEMO_STRING` on
the wire is kept), and the values of never-indexed fields (what the server marks sensitive) are
never looked up in it nor kept. A third memo keeps whole blocks that do not read the dynamic
table, update its size or hold a never-indexed field (their octets alone decide their fields,
and nginx sends every response head so), with the fields they add to the dynamic table: a
repeated head costs one lookup, and its additions are made again (`MEMO_BLOCKS` blocks of at
most `MEMO_BLOCK_BYTES` octets).

**Encoder.** No dynamic table at all: a field is an index into the static table when the static
table has its exact (name, value), else a literal *without indexing* (with the static table's
name index when there is one), each string Huffman-coded when that is shorter. Every field's
encoding is then independent of what was sent before, so it is memoized per (name, value), with
the same bounds; nothing can go out of step with the server's decoder, and no compression
context exists for an attacker to probe (RFC 7541 §7.1). The cost is the octets a dynamic table
would have saved: the typical httpx request above is 47 octets each time, where ``hpack`` sends
45 once and then 7. The first block,
and the first block after every change of `Encoder.header_table_size` (h2 sets it from the
server's SETTINGS_HEADER_TABLE_SIZE), starts with a dynamic table size update to 0 (§4.2,
§6.3): 0 is within any limit, and the server's decoder can drop its table. Fields given as
`hpack.NeverIndexedHeaderTuple` (h2 marks ``authorization``, ``proxy-authorization`` and short
``cookie`` values so) are sent as *never indexed* literals and never memoized.

`install` puts both into an ``h2.connection.H2Connection``. This file is part of the I/O-free
codec layer: it must not import httpx, anyio or asyncio.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import hpack
from hpack import (
    HeaderTuple,
    HPACKDecodingError,
    InvalidTableIndex,
    InvalidTableSizeError,
    NeverIndexedHeaderTuple,
    OversizedHeaderListError,
)
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

if TYPE_CHECKING:
    import h2.connection

__all__ = ["MEMO_BYTES", "MEMO_ENTRIES", "MEMO_STRING", "Decoder", "Encoder", "install"]

#: Most entries a memo (one per decoder, one per encoder) holds before it is emptied.
MEMO_ENTRIES = 1024
#: Most octets (keys and values) a memo holds before it is emptied.
MEMO_BYTES = 256 * 1024
#: A string longer than this many octets as sent (decoder), or a field whose name and value
#: together are (encoder), is never memoized.
MEMO_STRING = 4096
#: The decoder's block memo (whole header blocks that do not read the dynamic table, update its
#: size or hold a never-indexed field): at most this many blocks, of at most `MEMO_BLOCK_BYTES`
#: octets each; emptied when full.
MEMO_BLOCKS = 32
MEMO_BLOCK_BYTES = 1024

#: RFC 7540 §6.5.2: the initial SETTINGS_HEADER_TABLE_SIZE, and so the initial table size.
DEFAULT_TABLE_SIZE = 4096
#: What ``hpack.Decoder`` and h2 allow by default (64 KiB of RFC 7541 §4.1 accounting).
DEFAULT_MAX_HEADER_LIST_SIZE = 2**16
#: An integer may take at most this many octets after its prefix (``hpack`` allows five: 2**35).
_MAX_CONTINUATION = 5

#: The static table (RFC 7541 Appendix A), 1-based: ``_STATIC[0]`` is a placeholder.
_STATIC: tuple[HeaderTuple, ...] = (
    HeaderTuple(b"", b""),
    *(HeaderTuple(name, value) for name, value in HeaderTable.STATIC_TABLE),
)
_STATIC_LENGTH = len(HeaderTable.STATIC_TABLE)  # 61
_STATIC_NAMES: tuple[bytes, ...] = tuple(header[0] for header in _STATIC)
#: (name, value) -> its static index; name -> the first static index with that name.
_STATIC_FIELDS: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME_INDEX: dict[bytes, int] = {}
for _index in range(_STATIC_LENGTH, 0, -1):  # backwards: the lowest index wins
    _STATIC_FIELDS[_STATIC[_index]] = _index
    _STATIC_NAME_INDEX[_STATIC[_index][0]] = _index
del _index

#: Each octet's Huffman code (RFC 7541 Appendix B) as binary digits ("1111111000" for "!").
_HUFFMAN_DIGITS: tuple[str, ...] = tuple(
    format(code, f"0{length}b")
    for code, length in zip(REQUEST_CODES[:256], REQUEST_CODES_LENGTH[:256], strict=True)
)


def _entry_size(header: tuple[bytes, bytes]) -> int:
    """RFC 7541 §4.1: a field's size is its name and value in octets plus 32."""
    return len(header[0]) + len(header[1]) + 32


def _truncated(pos: int) -> str:
    # Never the block's octets in a message: they may hold credentials (Huffman is no secret).
    return f"Unable to decode HPACK integer representation at octet {pos}: truncated block"


def _integer(data: bytes, pos: int, value: int) -> tuple[int, int]:
    """The rest of an integer (RFC 7541 §5.1) whose prefix was full (``value``, the prefix's
    maximum): its value and the position after it, reading from ``pos``. Like ``hpack``, at
    most `_MAX_CONTINUATION` octets follow the prefix."""
    stop = pos + _MAX_CONTINUATION
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise HPACKDecodingError(_truncated(pos))
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        if pos >= stop:
            raise HPACKDecodingError(f"Variable integer representation is too long (octet {pos})")
        shift += 7


class Decoder:
    """An HPACK decoder for h2: what h2 uses of ``hpack.Decoder`` (`decode` with ``raw=True``,
    `header_table_size`, `max_header_list_size`, `max_allowed_table_size`), with a memo of
    Huffman strings. One per connection (it holds the connection's dynamic table)."""

    __slots__ = (
        "_blocks",
        "_entries",
        "_fields",
        "_memo",
        "_memo_bytes",
        "_table_max",
        "_table_size",
        "max_allowed_table_size",
        "max_header_list_size",
    )

    def __init__(self, max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE) -> None:
        #: The largest header list (RFC 7541 §4.1 accounting) a block may decode to:
        #: `hpack.OversizedHeaderListError` beyond it.
        self.max_header_list_size = max_header_list_size
        #: The largest table size the peer may choose: our acknowledged
        #: SETTINGS_HEADER_TABLE_SIZE (h2 sets it).
        self.max_allowed_table_size = DEFAULT_TABLE_SIZE
        self._table_max = DEFAULT_TABLE_SIZE
        self._table_size = 0
        #: The dynamic table, newest first.
        self._entries: deque[HeaderTuple] = deque()
        #: The memo, in two parts with one budget: a literal field's octets -> the field (for
        #: static and literal names, never for never-indexed fields), and a Huffman string's
        #: octets -> its decoded octets (names, and values named from the dynamic table).
        self._fields: dict[bytes, HeaderTuple] = {}
        self._memo: dict[bytes, bytes] = {}
        self._memo_bytes = 0
        #: A whole block's octets -> its fields and their RFC 7541 §4.1 size, for blocks whose
        #: fields are all static or literal without indexing, none never-indexed: the octets
        #: alone decide them (a server that indexes nothing, as nginx, repeats its blocks).
        self._blocks: dict[bytes, tuple[tuple[HeaderTuple, ...], int, tuple[HeaderTuple, ...]]] = {}

    @property
    def header_table_size(self) -> int:
        """The dynamic table's current maximum size, as the peer's last size update set it."""
        return self._table_max

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._table_max = value = int(value)
        self._evict(value)

    @property
    def table(self) -> tuple[tuple[bytes, bytes], ...]:
        """The dynamic table's entries, newest (index 62) first."""
        return tuple(self._entries)

    @property
    def table_size(self) -> int:
        """The dynamic table's size by RFC 7541 §4.1 accounting."""
        return self._table_size

    @property
    def memo_size(self) -> int:
        """How many fields and strings the memo holds now."""
        return len(self._fields) + len(self._memo)

    def _make_room(self, cost: int) -> None:
        """Empty the memo if one more entry of ``cost`` octets would overfill it."""
        if (
            len(self._fields) + len(self._memo) >= MEMO_ENTRIES
            or self._memo_bytes + cost > MEMO_BYTES
        ):
            self._fields.clear()
            self._memo.clear()
            self._memo_bytes = 0
        self._memo_bytes += cost

    def _evict(self, limit: int) -> None:
        entries = self._entries
        size = self._table_size
        while size > limit:
            size -= _entry_size(entries.pop())
        self._table_size = size

    def _add(self, header: HeaderTuple, size: int) -> None:
        """Insert ``header`` (of ``size``) into the dynamic table, evicting the oldest entries
        (§4.4)."""
        if size > self._table_max:
            self._entries.clear()
            self._table_size = 0
            return
        self._entries.appendleft(header)
        self._table_size += size
        if self._table_size > self._table_max:
            self._evict(self._table_max)

    def _huffman(self, raw: bytes, remember: bool) -> bytes:
        """Decode a Huffman string the memo does not hold (and keep it, unless told not to)."""
        decoded = decode_huffman(raw)
        if remember and len(raw) <= MEMO_STRING:
            self._make_room(len(raw) + len(decoded))
            self._memo[raw] = decoded
        return decoded

    def _string(self, data: bytes, pos: int, remember: bool) -> tuple[bytes, int]:
        """The string literal (RFC 7541 §5.2) at ``pos``, and the position after it."""
        if pos >= len(data):
            raise HPACKDecodingError(_truncated(pos))
        first = data[pos]
        length = first & 0x7F
        pos += 1
        if length == 0x7F:
            length, pos = _integer(data, pos, 0x7F)
        stop = pos + length
        if stop > len(data):
            raise HPACKDecodingError("Truncated header block")
        if not first & 0x80:
            return data[pos:stop], stop
        raw = data[pos:stop]
        if remember:
            decoded = self._memo.get(raw)
            if decoded is not None:
                return decoded, stop
        return self._huffman(raw, remember), stop

    def _skip(self, data: bytes, pos: int) -> int:
        """The position after the string literal at ``pos`` (not decoded)."""
        if pos >= len(data):
            raise HPACKDecodingError(_truncated(pos))
        length = data[pos] & 0x7F
        pos += 1
        if length == 0x7F:
            length, pos = _integer(data, pos, 0x7F)
        pos += length
        if pos > len(data):
            raise HPACKDecodingError("Truncated header block")
        return pos

    def _new_field(
        self, data: bytes, name_at: int, value_at: int, index: int, key: bytes
    ) -> HeaderTuple:
        """Decode a literal field with a static (``index``) or literal name (at ``name_at``)
        and its value (at ``value_at``) that the field memo does not hold; keep it there."""
        name = _STATIC_NAMES[index] if index else self._string(data, name_at, True)[0]
        value = self._string(data, value_at, False)[0]
        header: HeaderTuple = tuple.__new__(HeaderTuple, (name, value))
        if len(key) <= MEMO_STRING:
            self._make_room(len(key) + len(name) + len(value))
            self._fields[key] = header
        return header

    def _literal(self, data: bytes, pos: int, index: int, never: bool) -> tuple[HeaderTuple, int]:
        """Decode a literal field the field memo does not serve: never indexed (its value is
        neither looked up nor kept), or named from the dynamic table. The name is at
        ``index`` (0: a literal name at ``pos``)."""
        if not index:
            name, pos = self._string(data, pos, True)
        elif index <= _STATIC_LENGTH:
            name = _STATIC_NAMES[index]
        elif index - _STATIC_LENGTH <= len(self._entries):
            name = self._entries[index - _STATIC_LENGTH - 1][0]
        else:
            raise InvalidTableIndex(f"Invalid table index {index}")
        value, pos = self._string(data, pos, not never)
        kind = NeverIndexedHeaderTuple if never else HeaderTuple
        return tuple.__new__(kind, (name, value)), pos

    def decode(self, data: bytes, raw: bool = False) -> list[HeaderTuple]:
        """Decode one complete header block into its header list, in order: `hpack.HeaderTuple`
        of bytes (``raw=True``, as h2 asks) or of UTF-8 text, and
        `hpack.NeverIndexedHeaderTuple` for never-indexed fields.

        Raises what ``hpack.Decoder`` raises: `hpack.InvalidTableIndex` for an index outside
        both tables, `hpack.OversizedHeaderListError` past `max_header_list_size`,
        `hpack.InvalidTableSizeError` for a size update above `max_allowed_table_size` (or a
        table still above it at the end of the block), `hpack.HPACKDecodingError` for the rest
        (truncation, a size update after a field, bad Huffman, too long an integer).
        """
        if type(data) is not bytes:
            data = bytes(data)
        limit = self.max_header_list_size
        block = self._blocks.get(data)
        if block is not None:
            if block[1] > limit:
                raise OversizedHeaderListError(
                    f"A header list larger than {limit} has been received"
                )
            if self._table_max > self.max_allowed_table_size:
                raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
            for field in block[2]:  # what the block adds to the dynamic table, in order
                self._insert(field)
            headers = list(block[0])
            return headers if raw else self._text(headers)
        headers = []
        append = headers.append
        entries = self._entries
        fields = self._fields
        inflated = 0
        pos = 0
        end = len(data)
        # The block's octets alone decide its fields: no dynamic table read, no size update,
        # no never-indexed field (the block memo may keep it, with the fields it adds to the
        # dynamic table: they are added again on each hit).
        pure = True
        added: list[HeaderTuple] = []
        while pos < end:
            first = data[pos]
            pos += 1
            header: HeaderTuple
            if first & 0x80:  # indexed field (§6.1)
                index = first & 0x7F
                if index == 0x7F:
                    index, pos = _integer(data, pos, 0x7F)
                if 0 < index <= _STATIC_LENGTH:
                    header = _STATIC[index]
                elif index > _STATIC_LENGTH and index - _STATIC_LENGTH <= len(entries):
                    header = entries[index - _STATIC_LENGTH - 1]
                    pure = False
                else:
                    raise InvalidTableIndex(f"Invalid table index {index}")
            elif first & 0x40 or not first & 0x20:  # a literal (§6.2)
                start = pos - 1
                if first & 0x40:  # with incremental indexing
                    index = first & 0x3F
                    if index == 0x3F:
                        index, pos = _integer(data, pos, 0x3F)
                    never = False
                else:  # without indexing, or never indexed
                    index = first & 0x0F
                    if index == 0x0F:
                        index, pos = _integer(data, pos, 0x0F)
                    never = bool(first & 0x10)
                if never or index > _STATIC_LENGTH:
                    header, pos = self._literal(data, pos, index, never)
                    pure = False
                else:
                    # A static or a literal name: the field's octets alone decide the field,
                    # so the field memo answers for one seen before.
                    value_at = self._skip(data, pos) if not index else pos
                    if value_at >= end:
                        raise HPACKDecodingError(_truncated(value_at))
                    length = data[value_at] & 0x7F
                    stop = value_at + 1
                    if length == 0x7F:
                        length, stop = _integer(data, stop, 0x7F)
                    stop += length
                    if stop > end:
                        raise HPACKDecodingError("Truncated header block")
                    key = data[start:stop]
                    found = fields.get(key)
                    header = (
                        found
                        if found is not None
                        else self._new_field(data, pos, value_at, index, key)
                    )
                    pos = stop
                if first & 0x40:
                    self._insert(header)
                    added.append(header)
                append(header)
                inflated += len(header[0]) + len(header[1]) + 32
                if inflated > limit:
                    raise OversizedHeaderListError(
                        f"A header list larger than {limit} has been received"
                    )
                continue
            else:  # dynamic table size update (§6.3)
                if headers:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                size = first & 0x1F
                if size == 0x1F:
                    size, pos = _integer(data, pos, 0x1F)
                if size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                self.header_table_size = size
                pure = False
                continue
            append(header)
            inflated += len(header[0]) + len(header[1]) + 32
            if inflated > limit:
                raise OversizedHeaderListError(
                    f"A header list larger than {limit} has been received"
                )
        if self._table_max > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        if pure and end <= MEMO_BLOCK_BYTES:
            blocks = self._blocks
            if len(blocks) >= MEMO_BLOCKS:
                blocks.clear()
            blocks[data] = (tuple(headers), inflated, tuple(added))
        return headers if raw else self._text(headers)

    def _insert(self, header: HeaderTuple) -> None:
        """Add a field to the dynamic table (§4.4: a field larger than the table empties it)."""
        size = len(header[0]) + len(header[1]) + 32
        if size <= self._table_max:
            self._add(header, size)
        elif self._entries:
            self._entries.clear()
            self._table_size = 0

    @staticmethod
    def _text(headers: list[HeaderTuple]) -> list[HeaderTuple]:
        """The fields as UTF-8 text (``raw=False``)."""
        try:
            return [
                header.__class__(header[0].decode("utf-8"), header[1].decode("utf-8"))
                for header in headers
            ]
        except UnicodeDecodeError as exc:
            raise HPACKDecodingError("Unable to decode headers as UTF-8") from exc


def _encode_integer(value: int, bits: int, flags: int) -> bytes:
    """``value`` with an N-bit prefix (RFC 7541 §5.1), ``flags`` in the first octet's high bits."""
    full = (1 << bits) - 1
    if value < full:
        return bytes((flags | value,))
    out = bytearray((flags | full,))
    value -= full
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_string(data: bytes) -> bytes:
    """A string literal (RFC 7541 §5.2), Huffman-coded when that is shorter: the codes as a
    string of binary digits, padded with ones (the EOS prefix), read as one integer."""
    bits = "".join(map(_HUFFMAN_DIGITS.__getitem__, data))
    coded = (len(bits) + 7) >> 3
    if coded < len(data):
        padded = int(bits + "1" * (-len(bits) & 7), 2)
        return _encode_integer(coded, 7, 0x80) + padded.to_bytes(coded, "big")
    return _encode_integer(len(data), 7, 0) + data


def _encode_field(name: bytes, value: bytes, sensitive: bool) -> bytes:
    """One field, without a dynamic table: a static index, else a literal without indexing
    (``sensitive``: never indexed), with the static name index when there is one."""
    if not sensitive:
        index = _STATIC_FIELDS.get((name, value))
        if index is not None:
            return bytes((0x80 | index,))
    flags = 0x10 if sensitive else 0x00
    name_index = _STATIC_NAME_INDEX.get(name)
    if name_index is not None:
        head = _encode_integer(name_index, 4, flags)
    else:
        head = bytes((flags,)) + _encode_string(name)
    return head + _encode_string(value)


def _to_bytes(value: Any) -> bytes:
    """As ``hpack`` takes a name or value: bytes as they are, anything else as UTF-8 text."""
    if type(value) is bytes:
        return value
    if isinstance(value, bytes):
        return bytes(value)
    return str(value).encode("utf-8")


class Encoder:
    """An HPACK encoder for h2 without a dynamic table: what h2 uses of ``hpack.Encoder``
    (`encode`, `header_table_size`), with a memo of encoded fields."""

    __slots__ = ("_memo", "_memo_bytes", "_peer_table_size", "_signal")

    def __init__(self) -> None:
        self._peer_table_size = DEFAULT_TABLE_SIZE
        #: A dynamic table size update (to 0) starts the next block.
        self._signal = True
        #: (name, value) -> the field's encoding (never a never-indexed field).
        self._memo: dict[tuple[bytes, bytes], bytes] = {}
        self._memo_bytes = 0

    @property
    def header_table_size(self) -> int:
        """The largest dynamic table the peer's decoder allows (its SETTINGS_HEADER_TABLE_SIZE,
        set by h2). This encoder uses none; a change is answered with a size update to 0."""
        return self._peer_table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        value = int(value)
        if value != self._peer_table_size:
            self._signal = True
        self._peer_table_size = value

    @property
    def memo_size(self) -> int:
        """How many fields the memo holds now."""
        return len(self._memo)

    def _field(self, header: Any) -> bytes:
        """Encode (and memoize, unless sensitive) a field the memo does not hold."""
        if isinstance(header, HeaderTuple):
            sensitive = not header.indexable
        else:
            sensitive = len(header) > 2 and bool(header[2])
        name = _to_bytes(header[0])
        value = _to_bytes(header[1])
        field = _encode_field(name, value, sensitive)
        if not sensitive and len(name) + len(value) <= MEMO_STRING:
            cost = len(name) + len(value) + len(field)
            if len(self._memo) >= MEMO_ENTRIES or self._memo_bytes + cost > MEMO_BYTES:
                self._memo.clear()
                self._memo_bytes = 0
            self._memo[(name, value)] = field
            self._memo_bytes += cost
        return field

    def encode(
        self,
        headers: Iterable[
            HeaderTuple | tuple[bytes | str, bytes | str] | tuple[bytes | str, bytes | str, bool]
        ],
    ) -> bytes:
        """Encode a header list into one header block. Fields are (name, value) pairs of bytes
        (as h2 hands them) or text (UTF-8), `hpack.HeaderTuple` or
        `hpack.NeverIndexedHeaderTuple`, or ``(name, value, sensitive)`` triples as ``hpack``
        takes them; never-indexed and sensitive fields become never-indexed literals."""
        fields: list[bytes] = [b"\x20"] if self._signal else []
        append = fields.append
        memo_get = self._memo.get
        for header in headers:
            kind = type(header)
            field = None
            if kind is tuple or kind is HeaderTuple:
                try:
                    field = memo_get(header)  # type: ignore[arg-type]
                except TypeError:  # unhashable parts: the slow path converts them
                    field = None
            append(field if field is not None else self._field(header))
        self._signal = False
        return b"".join(fields)


def install(connection: h2.connection.H2Connection) -> None:
    """Make ``connection`` use this module's `Encoder` and `Decoder` instead of ``hpack``'s,
    keeping what was already applied to them: the decoder's limits, its table size and dynamic
    table (so it may be called between any two header blocks), and the peer's table size the
    encoder was told. Calling it again changes nothing."""
    old_decoder: Any = connection.decoder
    if not isinstance(old_decoder, Decoder):
        decoder = Decoder(max_header_list_size=old_decoder.max_header_list_size)
        decoder.max_allowed_table_size = old_decoder.max_allowed_table_size
        decoder.header_table_size = old_decoder.header_table_size
        for name, value in reversed(old_decoder.header_table.dynamic_entries):
            decoder._add(HeaderTuple(name, value), len(name) + len(value) + 32)
        # h2 types the attribute as hpack's class; it uses only what `Decoder` provides.
        connection.decoder = cast("hpack.Decoder", decoder)
    old_encoder: Any = connection.encoder
    if not isinstance(old_encoder, Encoder):
        # Whatever hpack's encoder put in the peer's table is never referred to: the first
        # block's size update to 0 empties it.
        encoder = Encoder()
        encoder.header_table_size = old_encoder.header_table_size
        connection.encoder = cast("hpack.Encoder", encoder)
