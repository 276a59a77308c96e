"""Shared helpers of the benchmarks (python3 standard library only).

Every process a benchmark starts (hiapi-sim, hiapi-proxy, nginx) lives in a temporary directory
and is stopped by pid when the benchmark ends, also on error or Ctrl-C. Everything listens on
127.0.0.1. Every wait is bounded.
"""

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("HIAPI_BENCH_BUILD", os.path.join(ROOT, "build-bench"))
PROXY_BIN = os.path.join(BUILD, "hiapi-proxy")
SIM_BIN = os.path.join(BUILD, "tools", "hiapi_sim", "hiapi-sim")
LOAD_BIN = os.path.join(BUILD, "tools", "loadgen", "hiapi-load")
NGINX_BIN = os.environ.get("NGINX", "/usr/sbin/nginx")
WRK_BIN = os.environ.get("WRK", "/usr/bin/wrk")
KEY = "sk-hiapi-bench-0001"


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


# SIGTERM unwinds like Ctrl-C, so every Stack stops its processes and removes its directory.
signal.signal(signal.SIGTERM, _on_sigterm)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def build():
    """Configures and builds the three binaries (Release) unless HIAPI_BENCH_NO_BUILD is set."""
    if os.environ.get("HIAPI_BENCH_NO_BUILD"):
        return
    if not os.path.exists(os.path.join(BUILD, "CMakeCache.txt")):
        subprocess.run(["cmake", "-S", ROOT, "-B", BUILD, "-DCMAKE_BUILD_TYPE=Release"],
                       check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", BUILD, "-j2", "--target", "hiapi-proxy", "hiapi-sim",
                    "hiapi-load"], check=True, stdout=subprocess.DEVNULL)


def _first_line(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        out = (p.stdout + p.stderr).strip().splitlines()
        return out[0] if out else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"


def machine_info():
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = "%.1f GiB" % (int(line.split()[1]) / 1024 / 1024)
    distro = "?"
    with contextlib.suppress(OSError):
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip().strip('"')
    git = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "src", "include"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if dirty:
            git += " (+ uncommitted changes in src/include)"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "os": distro,
        "git": git,
        "hiapi-proxy": _first_line([PROXY_BIN, "--version"]) + ", binary built " + (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(PROXY_BIN)))
            if os.path.exists(PROXY_BIN) else "?"),
        "nginx": _first_line([NGINX_BIN, "-v"]),
        "wrk": _first_line([WRK_BIN, "-v"]),
        "ulimit -n": _first_line(["sh", "-c", "ulimit -n"]),
    }


def print_header(title, config):
    print("# " + title)
    for k, v in machine_info().items():
        print("%-12s %s" % (k + ":", v))
    print("configuration:")
    for k, v in config.items():
        print("  %s: %s" % (k, v))
    print(flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise RuntimeError("timed out waiting for " + what)


def http(method, url, body=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


class Proc:
    """A child process in its own process group; stop() sends SIGTERM then SIGKILL, by pid."""

    def __init__(self, argv, log_path, preexec=None):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                  start_new_session=True, preexec_fn=preexec)
        self.pid = self.p.pid

    def alive(self):
        return self.p.poll() is None

    def stop(self, timeout=10):
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait(timeout=5)
        self.log.close()
        return self.p.returncode

    def tail(self, n=20):
        with contextlib.suppress(OSError):
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        return ""


class Stack(contextlib.ExitStack):
    """Owns a temp dir and the processes started in it."""

    def __init__(self, keep=False):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="hiapi-bench-")
        self.keep = keep or bool(os.environ.get("HIAPI_BENCH_KEEP"))
        self.callback(self._cleanup)

    def _cleanup(self):
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def start(self, argv, name, preexec=None):
        p = Proc(argv, self.path(name + ".log"), preexec)
        self.callback(p.stop)
        return p

    # ---- hiapi-sim ----------------------------------------------------------------------------
    def sim(self, flags, name="sim"):
        pf = self.path(name + ".port")
        p = self.start([SIM_BIN, "--port", "0", "--port-file", pf] + flags, name)

        def ready():
            if not p.alive():
                raise RuntimeError("hiapi-sim exited: " + p.tail())
            with contextlib.suppress(OSError):
                t = open(pf).read()
                if t.endswith("\n"):
                    return int(t)
            return None
        p.port = wait_for(ready, 10, "hiapi-sim port file")
        p.url = "http://127.0.0.1:%d" % p.port
        return p

    # ---- hiapi-proxy --------------------------------------------------------------------------
    def proxy(self, yaml, name="proxy", nofile=None):
        cfg = self.path(name + ".yaml")
        with open(cfg, "w") as f:
            f.write(yaml)
        pf = self.path(name + ".ports")
        pre = None
        if nofile:
            import resource

            def pre():
                # Soft limit up to the hard one; raising the hard limit needs CAP_SYS_RESOURCE.
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                want = nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        p = self.start([PROXY_BIN, "--config", cfg, "--port-file", pf], name, pre)

        def ready():
            if not p.alive():
                raise RuntimeError("hiapi-proxy exited: " + p.tail())
            with contextlib.suppress(OSError):
                kv = dict(line.split("=", 1) for line in open(pf).read().split() if "=" in line)
                if "proxy" in kv:
                    return kv
            return None
        kv = wait_for(ready, 10, "hiapi-proxy port file")
        p.port = int(kv["proxy"])
        p.admin_port = int(kv.get("admin", 0))
        p.url = "http://127.0.0.1:%d" % p.port
        return p

    # ---- nginx --------------------------------------------------------------------------------
    def nginx(self, http_block, name="nginx", workers=1, connections=4096):
        """Runs nginx as the current user with everything under <tmp>/<name>/.
        @param http_block the inside of http { } with {port} already substituted."""
        pre = os.path.join(self.dir, name)
        os.makedirs(os.path.join(pre, "logs"), exist_ok=True)
        conf = os.path.join(pre, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_TEMPLATE % {"prefix": pre, "workers": workers,
                                      "connections": connections, "http": http_block})
        t = subprocess.run([NGINX_BIN, "-t", "-p", pre, "-c", conf], capture_output=True,
                           text=True, timeout=10)
        if t.returncode != 0:
            raise RuntimeError("nginx -t failed:\n" + t.stderr)
        p = self.start([NGINX_BIN, "-p", pre, "-c", conf, "-g", "daemon off;"], name)
        p.pidfile = os.path.join(pre, "nginx.pid")
        return p

    def wait_port(self, port, proc):
        def ready():
            if not proc.alive():
                raise RuntimeError("process exited: " + proc.tail())
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                return True
            return False
        wait_for(ready, 10, "port %d" % port)


NGINX_TEMPLATE = """
worker_processes %(workers)s;
pid %(prefix)s/nginx.pid;
error_log %(prefix)s/logs/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections %(connections)s; }
http {
  access_log off;
  client_body_temp_path %(prefix)s/body;
  proxy_temp_path %(prefix)s/proxy;
  fastcgi_temp_path %(prefix)s/fastcgi;
  uwsgi_temp_path %(prefix)s/uwsgi;
  scgi_temp_path %(prefix)s/scgi;
  keepalive_requests 1000000;
%(http)s
}
"""


def nginx_limit_req(sim_port, listen_port, rate_per_s, burst=100000):
    """nginx in front of the simulator: limit_req keyed on the API key, a delaying queue (no
    nodelay), keep-alive upstream connections, 429 for what the queue cannot hold."""
    return """
  limit_req_zone $http_authorization zone=hiapi:1m rate=%(rate)dr/s;
  upstream hiapi { server 127.0.0.1:%(sim)d; keepalive 64; }
  server {
    listen 127.0.0.1:%(port)d;
    location / {
      limit_req zone=hiapi burst=%(burst)d;
      limit_req_status 429;
      proxy_pass http://hiapi;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 300s;
    }
  }
""" % {"rate": rate_per_s, "sim": sim_port, "port": listen_port, "burst": burst}


def proxy_yaml(sim_port, rate, burst, heavy_max, light_max, min_poll="1s", extra="",
               queue_max=10000, deadline="45s", level="warn", expected=None, limits_extra="",
               max_connections=None):
    """hiapi-proxy mirroring the simulator's limits (passthrough keys: the bench's bearer is
    limited under its pt-<hash> name with limits.rate / burst). @p expected: (heavy, light)
    tiers' expected_duration, e.g. ("5s", "2s"); None = learn only. @p limits_extra: more
    `limits:` lines, indented by two spaces. @p max_connections: listen.max_connections
    (None: the default)."""
    level = os.environ.get("HIAPI_BENCH_PROXY_LOG", level)  # e.g. debug, for a trace
    exp_h = ", expected_duration: %s" % expected[0] if expected else ""
    exp_l = ", expected_duration: %s" % expected[1] if expected else ""
    return """listen:
  address: 127.0.0.1
  port: 0
%(listen_extra)sadmin:
  enabled: true
  port: 0
upstream:
  url: http://127.0.0.1:%(sim)d
  connect_timeout: 2s
  response_timeout: 30s
auth:
  mode: passthrough
limits:
  rate: %(rate)s
  burst: %(burst)d
%(limits_extra)s  tiers:
    - {name: heavy, models: ["seedance-*", "*-pro", "*@pro"], routes: [pro], max_running: %(heavy)d, lease: 2m, min_poll_interval: %(mpi)s%(exp_h)s}
    - {name: light, models: ["*"], max_running: %(light)d, lease: 2m, min_poll_interval: %(mpi)s%(exp_l)s}
queue:
  max_size: %(qmax)d
  deadline: %(deadline)s
log:
  level: %(level)s
%(extra)s""" % {"sim": sim_port, "rate": rate, "burst": burst, "heavy": heavy_max,
                "light": light_max, "mpi": min_poll, "extra": extra, "qmax": queue_max,
                "deadline": deadline, "level": level, "exp_h": exp_h, "exp_l": exp_l,
                "limits_extra": limits_extra,
                "listen_extra": ("  max_connections: %d\n" % max_connections
                                 if max_connections else "")}


def run_load(target, args, sim=None, timeout=900):
    """Runs hiapi-load and returns its JSON report (dict)."""
    argv = [LOAD_BIN, "--target", target, "--key", KEY, "--json", "-", "--quiet"] + args
    if sim:
        argv += ["--sim", sim, "--sim-reset"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if p.returncode not in (0, 1) or not p.stdout.strip():
        raise RuntimeError("hiapi-load failed (%d): %s" % (p.returncode, p.stderr[-2000:]))
    return json.loads(p.stdout)


def table(headers, rows):
    """A GitHub-flavoured markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def fmt(x, spec="%.1f"):
    return "-" if x is None else spec % x
