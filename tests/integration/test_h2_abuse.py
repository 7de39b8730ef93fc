"""HTTP/2 abuse against the worker (from an untrusted peer) and the gateway's
front: rapid reset (CVE-2023-44487), CONTINUATION floods, SETTINGS/PING
floods and empty DATA frames end with GOAWAY and a closed connection, and
never harm other clients; and the limits a client is told in SETTINGS."""

import socket
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from h2frames import (CONTINUATION, DATA, ENHANCE_YOUR_CALM, END_HEADERS, GET_BLOCK, GOAWAY,
                      HEADERS, PING, POST_BLOCK, RST_STREAM, SETTINGS, connect, frame,
                      read_frames, read_until_closed, send_quietly)
from h3env import BASIC_CONFIG, Gateway, Worker, curl_json


@pytest.fixture(scope="module")
def targets():
    # Loopback is trusted by default; here it is not, like a random client.
    w = Worker("probe:app", args=["--forwarded-allow-ips", "10.9.9.9"])
    backend = Worker("probe:app")
    g = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{backend.port}", response_timeout="10s")
    yield {"worker": w.port, "gateway": g.plain_port}
    for p in (g, backend, w):
        p.stop()


def still_serving(port):
    return curl_json("--http2-prior-knowledge", f"http://127.0.0.1:{port}/pid")["pid"] > 0


@pytest.mark.parametrize("side", ["worker", "gateway"])
def test_rapid_reset_flood_gets_goaway(targets, side):
    s = connect(targets[side])
    burst = b""
    for i in range(3000):
        sid = 2 * i + 1
        burst += frame(HEADERS, END_HEADERS, sid, GET_BLOCK) + frame(RST_STREAM, 0, sid, b"\0\0\0\x08")
    send_quietly(s, burst)
    code = read_until_closed(s)
    assert code is not None and code != 0, code
    s.close()
    assert still_serving(targets[side])


@pytest.mark.parametrize("side", ["worker", "gateway"])
def test_continuation_flood_gets_goaway(targets, side):
    s = connect(targets[side])
    data = frame(HEADERS, 0, 1, GET_BLOCK[:2])
    data += b"".join(frame(CONTINUATION, 0, 1, b"") for _ in range(200))
    send_quietly(s, data)
    code = read_until_closed(s)
    assert code is not None and code != 0
    s.close()
    assert still_serving(targets[side])


@pytest.mark.parametrize("side", ["worker", "gateway"])
@pytest.mark.parametrize("kind", ["settings", "ping", "empty-data"])
def test_control_frame_floods_get_enhance_your_calm(targets, side, kind):
    s = connect(targets[side])
    if kind == "settings":
        flood = b"".join(frame(SETTINGS, 0, 0) for _ in range(3000))
    elif kind == "ping":
        flood = b"".join(frame(PING, 0, 0, i.to_bytes(8, "big")) for i in range(3000))
    else:
        flood = frame(HEADERS, END_HEADERS, 1, POST_BLOCK)
        flood += b"".join(frame(DATA, 0, 1, b"") for _ in range(3000))
    send_quietly(s, flood)
    code = read_until_closed(s)
    assert code == ENHANCE_YOUR_CALM, code
    s.close()
    assert still_serving(targets[side])


def test_http2_limits_reach_the_client_in_settings():
    """limits.h2_max_concurrent_streams and http2.stream_window /
    connection_window are what a client learns from the gateway's SETTINGS
    and its first WINDOW_UPDATE (Python's h2 as the client)."""
    w = Worker("probe:app")
    cfg = BASIC_CONFIG.replace("log:\n", "limits:\n  h2_max_concurrent_streams: 7\n"
                               "http2:\n  stream_window: 128k\n  connection_window: 4m\nlog:\n")
    g = Gateway(cfg, servers=f"127.0.0.1:{w.port}", response_timeout="5s")
    try:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        with socket.create_connection(("127.0.0.1", g.plain_port), timeout=10) as s:
            s.sendall(conn.data_to_send())
            settings = conn_window = None
            while settings is None or conn_window is None:  # bounded by the socket timeout
                data = s.recv(65536)
                assert data, "the gateway closed the connection"
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RemoteSettingsChanged):
                        settings = {k: v.new_value for k, v in ev.changed_settings.items()}
                    elif isinstance(ev, h2.events.WindowUpdated) and ev.stream_id == 0:
                        conn_window = conn.outbound_flow_control_window
                s.sendall(conn.data_to_send())
        assert settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 7, settings
        assert settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == 128 * 1024, settings
        assert conn_window == 4 * 1024 * 1024, conn_window
    finally:
        g.stop()
        w.stop()


def test_a_header_block_that_never_ends_gets_408_after_client_header():
    """A HEADERS frame without END_HEADERS, and no CONTINUATION: the stream
    held its place for good (no timer runs while a stream is open). After
    timeouts.client_header it gets 408 and a reset, as nginx's
    client_header_timeout bounds an HTTP/2 stream's head. The connection
    then ends with GOAWAY: it could carry nothing but that block's
    CONTINUATION frames."""
    w = Worker("probe:app")
    cfg = BASIC_CONFIG.replace("  connect: 2s\n", "  connect: 2s\n  client_header: 1s\n")
    g = Gateway(cfg, servers=f"127.0.0.1:{w.port}", response_timeout="5s")
    try:
        with connect(g.plain_port) as s:
            s.sendall(frame(HEADERS, 0, 1, GET_BLOCK))  # END_STREAM, not END_HEADERS
            started = time.monotonic()
            every, closed = read_frames(s)
            frames = [f for f in every if f[2] == 1]
        assert frames and frames[0][0] == HEADERS and b"408" in frames[0][3], frames
        assert any(f[0] == DATA and b"timeouts.client_header" in f[3] for f in frames), frames
        assert frames[-1][0] == RST_STREAM, frames
        assert time.monotonic() - started >= 1  # not before its time
        assert every[-1][0] == GOAWAY and every[-1][3][4:8] == bytes(4), every  # NO_ERROR
        assert closed, every
    finally:
        g.stop()
        w.stop()

