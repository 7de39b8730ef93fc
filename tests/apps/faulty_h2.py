"""A deliberately faulty HTTP/2 (h2c) backend for gateway tests.

usage: faulty_h2.py PORT MODE
  close      accept, then close at once
  hang       speak HTTP/2, read requests, never answer
  reset-mid  answer with a head and some body, then RST_STREAM
  die-mid    answer with a head and some body, then drop the connection
  refuse     answer every stream with RST_STREAM REFUSED_STREAM
  fail       answer every stream with RST_STREAM INTERNAL_ERROR, as an
             HTTP/2 server whose app failed before its response
  big-head   answer /N with N fields of 1000 bytes (about N KB), /NxS with
             N fields of S bytes
Each request it takes is printed: "request /path".
"""
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events
import h2.errors


def serve(conn, mode):
    if mode == "close":
        conn.close()
        return
    h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    h2c.initiate_connection()
    conn.sendall(h2c.data_to_send())
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            for ev in h2c.receive_data(data):
                if not isinstance(ev, h2.events.RequestReceived):
                    continue
                sid = ev.stream_id
                print("request", dict(ev.headers)[b":path"].decode(), flush=True)
                if mode == "refuse":
                    h2c.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
                elif mode == "fail":
                    h2c.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
                elif mode == "big-head":
                    count, _, size = dict(ev.headers)[b":path"].decode().strip("/").partition("x")
                    fields = [(f"x-big-{i}", "v" * int(size or 1000)) for i in range(int(count))]
                    h2c.send_headers(sid, [(":status", "200"), *fields, ("content-length", "2")])
                    h2c.send_data(sid, b"ok", end_stream=True)
                elif mode in ("reset-mid", "die-mid"):
                    h2c.send_headers(sid, [(":status", "200"), ("content-length", "100000")])
                    h2c.send_data(sid, b"x" * 1000)
                    conn.sendall(h2c.data_to_send())
                    if mode == "die-mid":
                        conn.close()
                        return
                    h2c.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            conn.sendall(h2c.data_to_send())
    except OSError:
        pass
    finally:
        conn.close()


def main():
    port, mode = int(sys.argv[1]), sys.argv[2]
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(64)
    print("faulty backend ready", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, mode), daemon=True).start()


if __name__ == "__main__":
    main()
