"""TCP servers and clients for nodesync's namespace tests.

serve HOST PORT [PORT...]      accept on each port, answer "ok\\n" and close
sshd PORT                      like serve, named "sshd" (/proc/self/comm), and
                               keeps each connection open (echoing) until the peer closes
session PORT                   named "session": for each connection, read one
                               line of JSON {"argv": [...], "env": {...}}, run it
                               as a child (so the connection is held by the
                               child's parent, as an SSH session is), answer
                               "<exit code>\\n<output>" and close
check SECS SRC>DST:PORT ...    try each connection in parallel; print one line
                               of 1/0 per item, in order
hold SRC DST PORT              open a connection to an sshd, print "held", keep
                               it until stdin closes, then print "alive" if it
                               still echoes
count SECS SRC DST PORT        connect from 3 threads at once, one connection
                               after another, for SECS seconds; print "clean
                               retried failed": connected at the first try,
                               connected only after the kernel sent a packet
                               again (one was dropped on the way), not at all
Addresses may be IPv6 (DST:PORT is then [DST]:PORT).
"""
import json
import socket
import struct
import subprocess
import sys
import threading
import time


def listener(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((host, int(port)))
    s.listen(128)
    return s


def forever(fn):
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def serve(host, ports):
    def loop(s):
        while True:
            conn, _ = s.accept()
            try:
                conn.sendall(b"ok\n")
            except OSError:
                pass
            finally:
                conn.close()

    threads = [forever(lambda s=listener(host, p): loop(s)) for p in ports]
    print("ready", flush=True)
    for t in threads:
        t.join()


def name_self(name):
    with open("/proc/self/comm", "w") as f:
        f.write(name)


def sshd(port):
    name_self("sshd")
    s = listener("::", port)

    def keep(conn):
        try:
            conn.sendall(b"ok\n")
            while True:
                data = conn.recv(64)
                if not data:
                    break
                conn.sendall(data)
        except OSError:
            pass
        conn.close()

    print("ready", flush=True)
    while True:
        conn, _ = s.accept()
        forever(lambda c=conn: keep(c))


def session(port):
    name_self("session")
    s = listener("::", port)

    def run(conn):
        try:
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                line += chunk
            req = json.loads(line)
            done = subprocess.run(req["argv"], env=req["env"], capture_output=True)
            conn.sendall(f"{done.returncode}\n".encode() + done.stdout + done.stderr)
        finally:
            conn.close()

    print("ready", flush=True)
    while True:
        conn, _ = s.accept()
        forever(lambda c=conn: run(c))


def split_target(text):
    src, rest = text.split(">")
    dst, port = rest.rsplit(":", 1)
    return src, dst.strip("[]"), int(port)


def try_connect(src, dst, port, secs):
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    try:
        with socket.socket(family) as c:
            c.settimeout(secs)
            c.bind((src, 0))
            c.connect((dst, port))
            return c.recv(3) == b"ok\n"
    except OSError:
        return False


def check(secs, items):
    results = [None] * len(items)

    def one(i, item):
        results[i] = try_connect(*split_target(item), secs)

    threads = [forever(lambda i=i, item=item: one(i, item)) for i, item in enumerate(items)]
    for t in threads:
        t.join()
    print("\n".join("1" if r else "0" for r in results), flush=True)


def hold(src, dst, port):
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    c = socket.socket(family)
    c.bind((src, 0))
    c.connect((dst, int(port)))
    assert c.recv(3) == b"ok\n"
    print("held", flush=True)
    sys.stdin.read()
    # Still alive? The connection must have survived every reload.
    c.settimeout(2)
    try:
        c.sendall(b"x")
        print("alive" if c.recv(1) == b"x" else "dead", flush=True)
    except OSError:
        print("dead", flush=True)


def attempt(src, dst, port):
    """One connection: "clean", "retried" or "failed". A dropped SYN (or
    any packet of ours) is sent again after a second, which TCP_INFO's
    tcpi_total_retrans counts: that tells a drop from a slow server
    without a timing."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    try:
        with socket.socket(family) as c:
            c.settimeout(1.5)
            c.bind((src, 0))
            c.connect((dst, port))
            if c.recv(3) != b"ok\n":
                return "failed"
            info = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
            total_retrans = struct.unpack_from("I", info, 100)[0]
            # Closed with a reset: thousands of connections leave no
            # TIME-WAIT sockets for the server's /proc/net/tcp to list.
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return "retried" if total_retrans else "clean"
    except OSError:
        return "failed"


def count(secs, src, dst, port):
    counts = {"clean": 0, "retried": 0, "failed": 0}
    lock = threading.Lock()
    end = time.monotonic() + float(secs)

    def worker():
        while time.monotonic() < end:
            outcome = attempt(src, dst, int(port))
            with lock:
                counts[outcome] += 1

    threads = [forever(worker) for _ in range(3)]
    for t in threads:
        t.join()
    print(f"{counts['clean']} {counts['retried']} {counts['failed']}", flush=True)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(args[0], args[1:])
    elif cmd == "sshd":
        sshd(args[0])
    elif cmd == "session":
        session(args[0])
    elif cmd == "check":
        check(float(args[0]), args[1:])
    elif cmd == "hold":
        hold(*args)
    elif cmd == "count":
        count(*args)
    else:
        sys.exit(f"unknown command {cmd}")
