"""The layer's h2 connection subclass (`_GracefulH2Connection`) against h2's own, without
sockets: where it departs from h2 to save work per request, h2's decisions must not change.

* ``open_outbound_streams`` skips h2's walk of every stream while the streams h2 holds could
  not reach the server's limit: for any sequence of streams opened, ended and reset, opening a
  stream is refused exactly when stock h2 refuses it, and the closed streams are still dropped.
* ``_receive_frame`` is h2's own method without its trace log of ``repr(frame)``: its body is
  compared with the installed h2's, so an h2 release that changes the method fails here.
"""

from __future__ import annotations

import ast
import inspect
import textwrap

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hypothesis import given, settings
from hypothesis import strategies as st

from httpx_resilience._connection.http2 import _CULL_AT, H2_CONFIG, _GracefulH2Connection

_REQUEST = [
    (b":method", b"GET"),
    (b":authority", b"example"),
    (b":scheme", b"https"),
    (b":path", b"/"),
]
_RESPONSE = [(b":status", b"200")]


def _pair(
    client: h2.connection.H2Connection, limit: int
) -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    """``client`` connected to an h2 server whose SETTINGS allow ``limit`` streams."""
    server = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=False, validate_inbound_headers=False)
    )
    server.local_settings = h2.settings.Settings(
        client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limit}
    )
    client.initiate_connection()
    server.initiate_connection()
    _exchange(client, server)
    return client, server


def _exchange(client: h2.connection.H2Connection, server: h2.connection.H2Connection) -> None:
    """Deliver what each side has queued to the other until neither has anything to say."""
    for _ in range(10):
        to_server, to_client = client.data_to_send(), server.data_to_send()
        if not to_server and not to_client:
            return
        if to_server:
            server.receive_data(to_server)
        if to_client:
            client.receive_data(to_client)
    raise AssertionError("the two sides kept talking")


# An operation: ("open",), or ("end"/"reset", k) on the k-th stream still open (mod their count).
_OPS = st.lists(
    st.one_of(
        st.just(("open", 0)),
        st.tuples(st.sampled_from(["end", "reset", "client_reset"]), st.integers(0, 1000)),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(limit=st.integers(1, 12), ops=_OPS)
def test_opening_a_stream_is_refused_exactly_when_h2_refuses_it(
    limit: int, ops: list[tuple[str, int]]
) -> None:
    ours = _pair(_GracefulH2Connection(config=H2_CONFIG), limit)
    stock = _pair(h2.connection.H2Connection(config=h2.config.H2Configuration()), limit)
    open_ids: list[int] = []  # the same ids on both sides: they open streams in step
    for op, k in ops:
        if op == "open":
            outcomes: list[int | None] = []
            for client, _ in (ours, stock):
                stream_id = client.get_next_available_stream_id()
                try:
                    client.send_headers(stream_id, _REQUEST, end_stream=True)
                except h2.exceptions.TooManyStreamsError:
                    outcomes.append(None)
                else:
                    outcomes.append(stream_id)
            assert outcomes[0] == outcomes[1]
            if outcomes[0] is not None:
                open_ids.append(outcomes[0])
        elif open_ids:
            stream_id = open_ids.pop(k % len(open_ids))
            for client, server in (ours, stock):
                if op == "end":
                    server.send_headers(stream_id, _RESPONSE, end_stream=True)
                elif op == "reset":
                    server.reset_stream(stream_id)
                else:
                    client.reset_stream(stream_id)
        for client, server in (ours, stock):
            _exchange(client, server)
        # The count is exact whenever it decides, and never below the true one.
        true_count = h2.connection.H2Connection.open_outbound_streams.fget(stock[0])  # type: ignore[attr-defined]
        assert true_count == len(open_ids)
        assert ours[0].open_outbound_streams >= true_count


def _one_after_another(limit: int, streams: int) -> tuple[h2.connection.H2Connection, int]:
    """Open and end ``streams`` streams one after another on a client whose server allows
    ``limit``: the client, and the most streams h2 held at once."""
    client, server = _pair(_GracefulH2Connection(config=H2_CONFIG), limit)
    most = 0
    for _ in range(streams):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, _REQUEST, end_stream=True)
        most = max(most, len(client.streams))
        _exchange(client, server)
        server.send_headers(stream_id, _RESPONSE, end_stream=True)
        _exchange(client, server)
    return client, most


def test_closed_streams_are_still_dropped() -> None:
    """Thousands of streams opened and ended one after another: h2 never holds more than
    ``_CULL_AT`` of them, and refuses nothing below the server's limit."""
    client, most = _one_after_another(limit=100, streams=2_000)
    assert most <= _CULL_AT
    assert client.open_outbound_streams == 0


def test_the_limit_holds_with_closed_streams_held() -> None:
    """Streams that ended are still held by h2 (not yet dropped) when the server's limit is
    reached: the count then walks them, so a stream that fits is opened and one that does not
    is refused."""
    client, server = _pair(_GracefulH2Connection(config=H2_CONFIG), 3)
    first = []
    for _ in range(3):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, _REQUEST, end_stream=True)
        first.append(stream_id)
    _exchange(client, server)
    for stream_id in first[:2]:
        server.send_headers(stream_id, _RESPONSE, end_stream=True)
    _exchange(client, server)
    assert len(client.streams) == 3  # two of them closed, not yet dropped
    for _ in range(2):  # room for two
        client.send_headers(client.get_next_available_stream_id(), _REQUEST, end_stream=True)
    try:
        client.send_headers(client.get_next_available_stream_id(), _REQUEST, end_stream=True)
    except h2.exceptions.TooManyStreamsError:
        pass
    else:
        raise AssertionError("a fourth stream was opened beyond the server's limit of 3")


def _body(function: object) -> str:
    """The statements of ``function`` but its docstring and h2's trace log calls, dumped."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]
    definition = tree.body[0]
    assert isinstance(definition, ast.FunctionDef)

    def kept(statement: ast.stmt) -> bool:
        if isinstance(statement, ast.Expr):
            value = statement.value
            if isinstance(value, ast.Constant):
                return False  # the docstring
            if (
                isinstance(value, ast.Call)
                and isinstance(value.func, ast.Attribute)
                and value.func.attr == "trace"
            ):
                return False
        return True

    return ast.dump(ast.Module([s for s in definition.body if kept(s)], type_ignores=[]))


def test_receive_frame_is_h2s_own_but_for_the_trace_log() -> None:
    theirs = inspect.getsource(h2.connection.H2Connection._receive_frame)
    assert "repr(frame)" in theirs  # what the override leaves out
    assert "'repr'" not in _body(_GracefulH2Connection._receive_frame)
    assert _body(_GracefulH2Connection._receive_frame) == _body(
        h2.connection.H2Connection._receive_frame
    )


def test_a_window_raised_by_settings_spares_a_stream_h2_would_have_dropped() -> None:
    """Stream 1's send window is opened to the most HTTP/2 allows (2**31 - 1) by the server's
    WINDOW_UPDATE, and the stream ends; stream 3 opens (stock h2 drops the closed stream 1
    there). A SETTINGS raising INITIAL_WINDOW_SIZE by one then grows every stream h2 holds:
    stock h2 holds only stream 3 and goes on; a subclass still holding the closed stream 1
    must not fail the connection with FLOW_CONTROL_ERROR over a closed stream's window."""
    outcomes = []
    for client in (
        h2.connection.H2Connection(config=h2.config.H2Configuration()),
        _GracefulH2Connection(config=H2_CONFIG),
    ):
        client, server = _pair(client, 100)
        client.send_headers(1, _REQUEST, end_stream=True)
        _exchange(client, server)
        server.increment_flow_control_window(2**31 - 1 - 65_535, stream_id=1)
        server.send_headers(1, _RESPONSE, end_stream=True)
        _exchange(client, server)
        client.send_headers(3, _REQUEST, end_stream=True)
        _exchange(client, server)
        server.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65_536})
        try:
            _exchange(client, server)
        except h2.exceptions.ProtocolError as exc:
            outcomes.append(repr(exc))
        else:
            outcomes.append("ok")
            assert client.streams[3].outbound_flow_control_window == 65_536
    assert outcomes == ["ok", "ok"]


def test_closed_streams_are_dropped_under_a_limit_above_the_cull_point() -> None:
    """A server allowing more streams than ``_CULL_AT`` (Envoy's default is 2**31 - 1): h2's
    count never reaches its limit, so only ``_CULL_AT`` bounds what h2 holds."""
    client, most = _one_after_another(limit=10 * _CULL_AT, streams=3 * _CULL_AT)
    assert most <= _CULL_AT
    assert h2.connection.H2Connection.open_outbound_streams.fget(client) == 0  # type: ignore[attr-defined]
