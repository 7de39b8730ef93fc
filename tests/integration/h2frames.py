"""Raw HTTP/2 frames, for the abuse tests no polite client library will send."""

import socket
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
ENHANCE_YOUR_CALM = 0xB


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


# An HPACK block for GET / with indexed static entries: :method GET (2),
# :scheme http (6), :path / (4), :authority (1) literal "x".
GET_BLOCK = bytes([0x82, 0x86, 0x84, 0x41, 0x01, ord("x")])
POST_BLOCK = bytes([0x83, 0x86, 0x84, 0x41, 0x01, ord("x")])


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(PREFACE + frame(SETTINGS, 0, 0))
    return s


def read_until_closed(s, limit_s=10):
    """Reads frames until the peer closes; returns the GOAWAY error code or None."""
    deadline = time.monotonic() + limit_s
    buf, goaway = b"", None
    s.settimeout(1)
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            if buf[3] == GOAWAY:
                goaway = int.from_bytes(buf[9 + 4:9 + 8], "big")
            buf = buf[9 + length:]
    return goaway


def send_quietly(s, data):
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def read_frames(s, done=lambda frames: False, limit_s=10):
    """(type, flags, stream, payload) of each frame read until done(frames),
    the peer closes or limit_s passes; and whether the peer closed."""
    s.settimeout(0.2)
    buf, frames = b"", []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and not done(frames):
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            return frames, True
        buf += chunk
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            n = int.from_bytes(buf[:3], "big")
            frames.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9:9 + n]))
            buf = buf[9 + n:]
    return frames, False
