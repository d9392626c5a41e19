#!/usr/bin/env python3
"""b24-edge against nginx doing the same job, side by side in one run.

Both proxies terminate TLS with the same certificate, admit by the same
10 000-entry allow list (which holds 127.0.0.1, the "listed" client, and not
127.0.0.2-127.0.0.250, the "unlisted" ones), and proxy with keep-alive to
the same upstream (a third nginx answering a fixed body). Every scenario
runs against both in each round, in alternating order, so drift in the
machine's load hits both; the table shows medians over the rounds, the
spread (min-max), and edge/nginx ratios. See `run --help` for the options;
bench/edge-vs-nginx/README.md says what each scenario measures.

Started by bench/edge-vs-nginx/run, which installs the tools and builds the
binaries first.
"""

import argparse
import ipaddress
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# The scenarios `edge-loadgen pump` is a floor for (--floor). Not h2
# throughput: there the pump answers itself and does no proxying at all. Not
# idle h1: the pump keeps an upstream connection and two copy buffers per client.
FLOOR_SCENARIOS = ("h1", "newconn", "idle-h2")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def cpu_split(pids):
    """(utime, stime) of the processes (all their threads), in seconds."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


class Proxy:
    """One of the two proxies under test, restartable."""

    def __init__(self, name, port, command, env=None, log=None):
        self.name, self.port, self.command = name, port, command
        self.env, self.log = env, log
        self.process = None

    def start(self):
        log = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=log)
        wait_for_200(self.port, self.name)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self):
        self.stop()
        self.start()

    def pids(self):
        """The processes whose CPU and memory count: nginx's master and its
        workers, or the edge's one process."""
        pid = self.process.pid
        return [pid] + children_of(pid)


def wait_for_200(port, name):
    for _ in range(200):
        code = subprocess.run(
            ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", f"https://127.0.0.1:{port}/"],
            capture_output=True, text=True).stdout
        if code == "200":
            return
        time.sleep(0.1)
    raise SystemExit(f"{name} on port {port} answers {code or 'nothing'}, not 200")


def ms(text):
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    raise ValueError(text)


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="edge-vs-nginx."))
        self.upstream = None
        self.proxies = {}
        self.results = {}  # scenario -> metric -> proxy name -> [values per round]

    # ---- setup -------------------------------------------------------------
    def setup(self):
        w = self.work
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "30", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", w / "key.pem", "-out", w / "cert.pem"],
            check=True, capture_output=True)
        # The same 10 000 entries for both: 127.0.0.1, 8 999 single IPv4
        # addresses and 1 000 /24s, none overlapping and none covering the
        # flood's sources (127.0.0.2-127.0.0.250).
        entries = ["127.0.0.1"]
        entries += [str(ipaddress.IPv4Address(0x0B000000 + i * 7)) for i in range(8_999)]
        entries += [str(ipaddress.IPv4Network((0x0C000000 + (i << 8), 24))) for i in range(1_000)]
        (w / "app.json").write_text(json.dumps({"nodes": entries}))
        (w / "allow.conf").write_text("".join(f"allow {e};\n" for e in entries) + "deny all;\n")

        upstream_port, edge_port, nginx_port = free_port(), free_port(), free_port()
        temp_paths = lambda d: " ".join(
            f"{k}_temp_path {d};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        for d in ("upstream", "proxy"):
            (w / d).mkdir()
        (w / "upstream.conf").write_text(f"""
worker_processes 1;
pid {w}/upstream/nginx.pid;
error_log {w}/upstream/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  {temp_paths(w / "upstream")}
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{upstream_port};
    location / {{ return 200 "ok from upstream\\n"; }}
  }}
}}
""")
        # nginx as the peer would be set up for this job: TLS 1.2/1.3 with
        # h2, the allow list, keep-alive to the upstream, the forwarding
        # headers the edge sets. Timeouts stay at nginx's defaults.
        (w / "proxy.conf").write_text(f"""
worker_processes auto;
pid {w}/proxy/nginx.pid;
error_log {w}/proxy/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  {temp_paths(w / "proxy")}
  keepalive_requests 1000000;
  upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{nginx_port} ssl http2;
    ssl_certificate {w}/cert.pem;
    ssl_certificate_key {w}/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    client_max_body_size 10m;
    include {w}/allow.conf;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-Forwarded-Host $host;
      proxy_connect_timeout 5s;
      proxy_read_timeout 30s;
    }}
  }}
}}
""")
        # The edge at its defaults but for the list, the route and the per-address cap.
        (w / "edge.toml").write_text(f"""
[server]
listen = "127.0.0.1:{edge_port}"
tls_cert = "{w}/cert.pem"
tls_key = "{w}/key.pem"
# The 5 000 idle connections all come from the one listed address, and
# nginx has no per-address cap here either.
max_connections_per_address = 10000
[nodes]
source = "{w}/app.json"
# 127.0.0.1 and 1 000 adjacent /24s (which merge): both need the escape hatches.
allow_special = true
allow_broad = true
[[route]]
prefix = "/"
upstream = "http://127.0.0.1:{upstream_port}"
allow = ["nodes"]
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.upstream = subprocess.Popen(
            [nginx, "-p", w / "upstream", "-c", w / "upstream.conf", "-g", "daemon off;"])
        env = dict(os.environ, RUST_LOG=os.environ.get("BENCH_EDGE_LOG", "warn,rustls=error"))
        self.proxies["edge"] = Proxy(
            "edge", edge_port, [self.args.edge_bin, "--config", w / "edge.toml"],
            env=env, log=w / "edge.log")
        self.proxies["nginx"] = Proxy(
            "nginx", nginx_port, [nginx, "-p", w / "proxy", "-c", w / "proxy.conf", "-g", "daemon off;"])
        if self.args.floor:
            pump_port = free_port()
            self.proxies["pump"] = Proxy(
                "pump", pump_port,
                self.loadgen("pump", "--listen", f"127.0.0.1:{pump_port}",
                             "--upstream", f"127.0.0.1:{upstream_port}",
                             "--cert", w / "cert.pem", "--key", w / "key.pem"))
        for proxy in self.proxies.values():
            proxy.start()

    def cleanup(self):
        for proxy in self.proxies.values():
            proxy.stop()
        if self.upstream and self.upstream.poll() is None:
            self.upstream.terminate()
            self.upstream.wait()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    # ---- tools -------------------------------------------------------------
    def loadgen(self, *args):
        return [self.args.loadgen, *map(str, args)]

    def record(self, scenario, metric, proxy, value):
        self.results.setdefault(scenario, {}).setdefault(metric, {}).setdefault(proxy, []).append(value)

    def measured_cpu(self, proxy, run):
        """Runs `run()` and returns (its result, the proxy's CPU seconds in
        user space and in the kernel)."""
        pids = proxy.pids()
        user, system = cpu_split(pids)
        result = run()
        user_after, system_after = cpu_split(pids)
        return result, (user_after - user, system_after - system)

    def record_cpu(self, scenario, proxy, requests, cpu):
        """CPU µs per request, in all and split into user space (HTTP, TLS,
        the runtime) and the kernel (sockets)."""
        user, system = cpu
        per = 1e6 / max(requests, 1)
        self.record(scenario, "CPU µs/req", proxy.name, (user + system) * per)
        self.record(scenario, "CPU in user space µs/req", proxy.name, user * per)
        self.record(scenario, "CPU in the kernel µs/req", proxy.name, system * per)

    # ---- scenarios ---------------------------------------------------------
    def h1_keepalive(self, proxy):
        s, c = self.args.seconds, self.args.connections

        def run():
            return subprocess.run(
                ["wrk", "-t2", f"-c{c}", f"-d{s:g}s", "--latency", f"https://127.0.0.1:{proxy.port}/"],
                capture_output=True, text=True, check=True).stdout
        out, cpu = self.measured_cpu(proxy, run)
        rps = p99 = None
        requests = 0
        for line in out.splitlines():
            parts = line.split()
            if line.startswith("Requests/sec:"):
                rps = float(parts[1])
            elif parts[:1] == ["99%"]:
                p99 = ms(parts[1])
            elif "requests in" in line:
                requests = int(parts[0])
            elif "Non-2xx" in line:
                raise SystemExit(f"{proxy.name}: wrk saw non-2xx answers:\n{out}")
        self.record("h1 keep-alive", "req/s", proxy.name, rps)
        self.record("h1 keep-alive", "p99 ms", proxy.name, p99)
        self.record_cpu("h1 keep-alive", proxy, requests, cpu)

    def h2_keepalive(self, proxy):
        s = self.args.seconds
        log = self.work / f"h2load.{proxy.name}.log"

        def run():
            return subprocess.run(
                ["h2load", "-t2", f"-c{self.args.h2_connections}", f"-m{self.args.h2_streams}",
                 "-D", f"{s:g}", "--log-file", log, f"https://127.0.0.1:{proxy.port}/"],
                capture_output=True, text=True, check=True).stdout
        out, cpu = self.measured_cpu(proxy, run)
        rps, ok, total = None, 0, 0
        for line in out.splitlines():
            if line.startswith("finished in"):
                rps = float(line.split(",")[1].split()[0])
            elif line.startswith("requests:"):
                total = int(line.split()[1])
            elif line.startswith("status codes:"):
                ok = int(line.split()[2])
        if ok < total * 0.99:
            raise SystemExit(f"{proxy.name}: h2load saw failures:\n{out}")
        times = sorted(int(l.split("\t")[2]) for l in open(log) if l.count("\t") >= 2)
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))] / 1000 if times else None
        log.unlink()
        self.record("h2 keep-alive", "req/s", proxy.name, rps)
        self.record("h2 keep-alive", "p99 ms", proxy.name, p99)
        self.record_cpu("h2 keep-alive", proxy, ok, cpu)

    def client(self, proxy, proto, connections, seconds):
        return subprocess.Popen(
            self.loadgen("client", "--target", f"127.0.0.1:{proxy.port}", "--proto", proto,
                         "--connections", connections, "--duration", seconds),
            stdout=subprocess.PIPE, text=True)

    @staticmethod
    def report(process):
        out, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"edge-loadgen failed ({process.returncode}): {out}")
        return json.loads(out)

    def new_connection(self, proxy):
        run = lambda: self.report(self.client(proxy, "h1-new-conn", self.args.new_conn_clients,
                                              self.args.seconds))
        r, cpu = self.measured_cpu(proxy, run)
        if r["errors"] or r["non_200"]:
            raise SystemExit(f"{proxy.name}: new-connection client saw errors: {r}")
        self.record("new TLS connection per request", "req/s", proxy.name, r["rate"])
        self.record("new TLS connection per request", "p99 ms", proxy.name, r["p99_ms"])
        self.record_cpu("new TLS connection per request", proxy, r["requests"], cpu)

    def listed_clients(self, proxy):
        """The listed client (127.0.0.1): keep-alive and new-connection
        loops at once; returns their reports."""
        s = self.args.seconds
        keep = self.client(proxy, "h1", self.args.listed_connections, s)
        fresh = self.client(proxy, "h1-new-conn", self.args.listed_connections, s)
        return self.report(keep), self.report(fresh)

    def flood(self, proxy, seconds):
        return subprocess.Popen(
            self.loadgen("flood", "--target", f"127.0.0.1:{proxy.port}",
                         "--sources", "127.0.0.2-127.0.0.250", "--rate", self.args.flood_rate,
                         "--concurrency", self.args.flood_concurrency, "--duration", seconds),
            stdout=subprocess.PIPE, text=True)

    def under_flood(self, proxy):
        name = "listed client under a flood from unlisted addresses"
        before_keep, before_fresh = self.listed_clients(proxy)
        flood = self.flood(proxy, self.args.seconds + 1)
        time.sleep(0.5)
        loud_keep, loud_fresh = self.listed_clients(proxy)
        self.report(flood)
        # The quiet rate is measured before and after the flood and
        # averaged, so that the machine's drift during the three
        # measurements does not pass for the flood's effect.
        after_keep, after_fresh = self.listed_clients(proxy)
        for label, before, after, loud in (("keep-alive", before_keep, after_keep, loud_keep),
                                           ("new-conn", before_fresh, after_fresh, loud_fresh)):
            quiet_rate = (before["rate"] + after["rate"]) / 2
            loss = 1 - loud["rate"] / quiet_rate if quiet_rate else None
            self.record(name, f"{label} req/s, quiet", proxy.name, quiet_rate)
            self.record(name, f"{label} req/s, flood", proxy.name, loud["rate"])
            self.record(name, f"{label} loss %", proxy.name, 100 * loss)
            self.record(name, f"{label} p50 ms, flood", proxy.name, loud["p50_ms"])
            self.record(name, f"{label} p99 ms, flood", proxy.name, loud["p99_ms"])
            self.record(name, f"{label} errors, flood", proxy.name, loud["errors"] + loud["non_200"])

        # The flood alone: what each refused connection costs the proxy.
        run = lambda: self.report(self.flood(proxy, self.args.seconds))
        r, cpu = self.measured_cpu(proxy, run)
        o = r["outcomes"]
        refused = o["refused_before_tls"] + o["refused_403"]
        self.record("flood alone", "refused conn/s", proxy.name, refused / r["seconds"])
        self.record("flood alone", "refused before TLS %", proxy.name,
                    100 * o["refused_before_tls"] / max(refused, 1))
        self.record("flood alone", "not refused (timeouts, errors, 2xx)", proxy.name,
                    r["skipped"] + o["connect_failed"] + o["timed_out"] + o["answered_other"]
                    + o["closed_after_tls"])
        self.record("flood alone", "CPU µs/refused conn", proxy.name, sum(cpu) * 1e6 / max(refused, 1))

    def idle_memory(self, proxy, proto):
        # A fresh process, so that memory freed by earlier scenarios and kept
        # by the allocator does not hide what the connections take.
        proxy.restart()
        time.sleep(0.5)
        before = rss_kb(proxy.pids())
        holder = subprocess.Popen(
            self.loadgen("hold", "--target", f"127.0.0.1:{proxy.port}", "--count", self.args.idle,
                         "--proto", proto),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = holder.stderr.readline()
        if not line.startswith("ready"):
            holder.kill()
            raise SystemExit(f"holder failed: {line}{holder.stderr.read()}")
        time.sleep(1)
        after = rss_kb(proxy.pids())
        holder.stdin.write("\n")
        holder.stdin.flush()
        out, _ = holder.communicate()
        r = json.loads(out)
        held = r["still_open"]
        scenario = f"{self.args.idle} idle {proto} keep-alive connections"
        self.record(scenario, "held open", proxy.name, held)
        self.record(scenario, "RSS MB", proxy.name, after / 1024)
        self.record(scenario, "KB per connection", proxy.name, (after - before) / max(held, 1))

    # ---- the run -----------------------------------------------------------
    def scenarios(self):
        all_ = {
            "h1": self.h1_keepalive,
            "h2": self.h2_keepalive,
            "newconn": self.new_connection,
            "flood": self.under_flood,
            "idle": lambda p: self.idle_memory(p, "h1"),
            "idle-h2": lambda p: self.idle_memory(p, "h2"),
        }
        return [(k, all_[k]) for k in self.args.only.split(",")]

    def profile(self, proxy, key, round_):
        """With --perf DIR, samples the edge (not nginx) during each
        scenario: `perf report -i DIR/<scenario>.<round>.data`."""
        if not self.args.perf or proxy.name != "edge" or key.startswith("idle"):
            return None
        Path(self.args.perf).mkdir(parents=True, exist_ok=True)
        data = Path(self.args.perf) / f"{key}.{round_ + 1}.data"
        return subprocess.Popen(
            ["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,16384", "-o", data,
             "-p", str(proxy.process.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def run(self):
        a = self.args
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        print(f"== {os.cpu_count()} cores, {cpu}; load {os.getloadavg()[0]:.2f}; "
              f"{a.rounds} rounds of {a.seconds} s; scenarios {a.only}", flush=True)
        for proxy in self.proxies.values():
            subprocess.run(["wrk", "-t1", "-c8", "-d2s", f"https://127.0.0.1:{proxy.port}/"],
                           capture_output=True, check=True)
        order = list(self.proxies.values())
        for round_ in range(a.rounds):
            for index, (key, scenario) in enumerate(self.scenarios()):
                pair = order if (round_ + index) % 2 == 0 else order[::-1]
                for proxy in pair:
                    if proxy.name == "pump" and key not in FLOOR_SCENARIOS:
                        continue
                    started = time.time()
                    profiler = self.profile(proxy, key, round_)
                    try:
                        scenario(proxy)
                    finally:
                        if profiler:
                            profiler.send_signal(signal.SIGINT)
                            profiler.wait()
                    print(f"round {round_ + 1} {key:8s} {proxy.name:5s} done in "
                          f"{time.time() - started:5.1f} s; load {os.getloadavg()[0]:.2f}", flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(self.results, indent=1))

    def table(self):
        def fmt(v):
            if v is None:
                return "-"
            if abs(v) >= 1000:
                return f"{v:.0f}"
            if abs(v) >= 10:
                return f"{v:.1f}"
            return f"{v:.2f}"

        def ratio(e, n):
            if e is None or n is None or n == 0:
                return None
            return e / n

        def cell(values):
            if not values:
                return "-"
            return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"

        floor = "pump" in self.proxies
        header = ["scenario / metric", "edge median (min-max)", "nginx median (min-max)",
                  "edge/nginx", "per-round ratio"]
        if floor:
            header += ["pump median (min-max)", "pump/nginx"]
        rows = [tuple(header)]
        for scenario, metrics in self.results.items():
            rows.append((scenario,) + ("",) * (len(header) - 1))
            for metric, by_proxy in metrics.items():
                e, n = by_proxy.get("edge", []), by_proxy.get("nginx", [])
                me = statistics.median(e) if e else None
                mn = statistics.median(n) if n else None
                per_round = [r for r in (ratio(x, y) for x, y in zip(e, n)) if r is not None]
                spread = (f"x{min(per_round):.2f}-x{max(per_round):.2f}" if per_round else "-")
                r = ratio(me, mn)
                row = [f"  {metric}", cell(e), cell(n), f"x{r:.2f}" if r is not None else "-", spread]
                if floor:
                    f = by_proxy.get("pump", [])
                    rf = ratio(statistics.median(f), mn) if f else None
                    row += [cell(f), f"x{rf:.2f}" if rf is not None else "-"]
                rows.append(tuple(row))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        print("== medians over rounds (spread: min-max of the rounds)")
        for row in rows:
            print("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                            for i, cell in enumerate(row)).rstrip())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10, help="per measurement (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--only", default="h1,h2,newconn,flood,idle,idle-h2",
                   help="comma-separated scenarios: h1,h2,newconn,flood,idle,idle-h2 (default all)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections, h1 keep-alive (64)")
    p.add_argument("--h2-connections", type=int, default=8, help="h2load connections (8)")
    p.add_argument("--h2-streams", type=int, default=8, help="h2load streams per connection (8)")
    p.add_argument("--new-conn-clients", type=int, default=16,
                   help="new-connection-per-request loops in flight (16)")
    p.add_argument("--listed-connections", type=int, default=2,
                   help="listed client's keep-alive connections and new-connection loops (2 each)")
    p.add_argument("--flood-rate", type=int, default=1000, help="flood connections per second (1000)")
    p.add_argument("--flood-concurrency", type=int, default=512, help="flood attempts in flight at most (512)")
    p.add_argument("--idle", type=int, default=5000, help="idle connections held (5000)")
    p.add_argument("--json", help="also write the raw figures to this file")
    p.add_argument("--perf", metavar="DIR",
                   help="record a perf profile of the edge during each scenario into DIR")
    p.add_argument("--floor", action="store_true",
                   help="also measure `edge-loadgen pump` (h1: a TLS byte pump, no HTTP; h2: "
                        "hyper answering itself): the floor under any proxy on tokio, rustls "
                        "and hyper, in the h1, newconn and idle-h2 scenarios")
    p.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    p.add_argument("--edge-bin", required=True)
    p.add_argument("--loadgen", required=True)
    args = p.parse_args()
    # 5 000 idle connections plus the flood need more descriptors than the
    # usual 1 024; the servers and tools inherit this.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard) if hard != resource.RLIM_INFINITY else hard))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    bench = Bench(args)
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        bench.setup()
        bench.run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        bench.cleanup()
    bench.table()
    if args.keep:
        print(f"work directory kept: {bench.work}")


if __name__ == "__main__":
    main()
