"""A tiny TCP server and client for nodesync's namespace tests.

serve HOST PORT [PORT...]   accept on each port, answer "ok\n", forever
connect SRC DST PORT SECS   exit 0 if a connection from SRC gets "ok", else 1
"""
import socket
import sys
import threading


def serve(host, ports):
    def loop(port):
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(64)
        while True:
            conn, _ = s.accept()
            try:
                conn.sendall(b"ok\n")
            finally:
                conn.close()

    threads = [threading.Thread(target=loop, args=(int(p),), daemon=True) for p in ports]
    for t in threads:
        t.start()
    print("ready", flush=True)
    for t in threads:
        t.join()


def connect(src, dst, port, secs):
    try:
        with socket.create_connection((dst, int(port)), timeout=float(secs), source_address=(src, 0)) as c:
            return 0 if c.recv(3) == b"ok\n" else 1
    except OSError:
        return 1


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(connect(*sys.argv[2:6]))
