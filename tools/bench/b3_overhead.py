#!/usr/bin/env python3
"""B3 overhead: what a hop through each proxy costs, with limits out of the way.

Origin: an nginx (1 worker) answering fixed HiAPI bodies: GET /v1/tasks?... a one-item list,
GET /v1/tasks/<id> a task detail (status "handling"). wrk (1 thread, fixed connections) against:
  straight       the origin itself
  nginx          an nginx (1 worker, like hiapi-proxy's one event loop) proxy_pass with
                 keep-alive upstream connections
  hiapi-proxy    rate 1000000/s, burst 1000000, passthrough key
Two request variants:
  list  GET /v1/tasks?page=N&size=1: every request is forwarded by both proxies (the fair
        comparison: same work on both sides). N cycles over 1..1000 (wrk Lua script).
  poll  GET /v1/tasks/<one id>: hiapi-proxy answers repeated polls of a task from its cache
        (min_poll_interval 2s), nginx forwards each: shows the cache, not forwarding overhead.
Targets and variants alternate within each repetition; medians of req/s, p50 and p99.
"""

import argparse
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

TASK = "tk-hiapi-01HZTQ8BX2N3GM3YFK4Z9D7VQR"
DETAIL = ('{"code":200,"message":"success","data":{"taskId":"%s","model":"gpt-image-2",'
          '"status":"handling","created":1795822356,"completed":0,"output":[],"error":null,'
          '"storage":"temp"}}' % TASK)
LIST = ('{"code":200,"message":"success","data":{"page":1,"size":1,"total":1,"items":[%s]}}'
        % DETAIL[DETAIL.index('{"taskId"'):-1])

LIST_LUA = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/v1/tasks?page=" .. (counter %% 1000 + 1) .. "&size=1")
end
"""


def origin_block(port):
    def q(s):
        return s.replace("\\", "\\\\").replace("'", "\\'")
    return """
  server {
    listen 127.0.0.1:%d backlog=4096;
    default_type application/json;
    location = /v1/tasks { return 200 '%s'; }
    location /v1/tasks/ { return 200 '%s'; }
  }
""" % (port, q(LIST), q(DETAIL))


def front_block(port, origin_port):
    return """
  upstream origin { server 127.0.0.1:%d; keepalive 64; }
  server {
    listen 127.0.0.1:%d backlog=4096;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
""" % (origin_port, port)


def proxy_yaml(origin_port):
    return bl.proxy_yaml(origin_port, "1000000/s", 1000000, 100000, 100000, "2s",
                         extra="", queue_max=100000).replace(
        "  response_timeout: 30s\n", "  response_timeout: 30s\n  pool_size: 64\n")


def parse_wrk(text):
    def ms(v, unit):
        return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    lat = dict((p, ms(v, u)) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$",
                                                        text, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errs = re.search(r"Socket errors: (.*)", text)
    return {"rps": float(rps.group(1)) if rps else None, "p50": lat.get("50"),
            "p99": lat.get("99"), "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errs.group(1).strip() if errs else ""}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Five: on a 2-core box shared by wrk, the origin and the proxy, one run's req/s moves by
    # +-10 %; the median of five alternated runs is what is quoted.
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--variants", default="list,poll")
    ap.add_argument("--json")
    args = ap.parse_args()
    bl.build()
    variants = [v for v in args.variants.split(",") if v]
    targets = ["straight", "nginx", "hiapi-proxy"]
    bl.print_header("B3 overhead", {
        "wrk": "-t%d -c%d -d%ds --latency, header Authorization: Bearer <key>"
               % (args.threads, args.connections, args.duration),
        "origin": "nginx, 1 worker, fixed JSON (list and detail)",
        "nginx proxy": "1 worker, proxy_pass, upstream keepalive 64, proxy_http_version 1.1",
        "hiapi-proxy": "rate 1000000/s burst 1000000, tiers 100000 running, min_poll_interval "
                       "2s, pool_size 64, log level warn",
        "variants": variants, "repetitions": args.reps,
        "note": "wrk, origin and proxy share the machine's %s cores" % os.cpu_count(),
    })
    raw = {v: {t: [] for t in targets} for v in variants}
    with bl.Stack() as st:
        origin_port = bl.free_port()
        origin = st.nginx(origin_block(origin_port), name="origin")
        st.wait_port(origin_port, origin)
        front_port = bl.free_port()
        front = st.nginx(front_block(front_port, origin_port), name="front")
        st.wait_port(front_port, front)
        px = st.proxy(proxy_yaml(origin_port))
        lua = st.path("list.lua")
        with open(lua, "w") as f:
            f.write(LIST_LUA % ())
        urls = {"straight": "http://127.0.0.1:%d" % origin_port,
                "nginx": "http://127.0.0.1:%d" % front_port, "hiapi-proxy": px.url}
        # Warm-up: connections, caches, the proxy's upstream pool.
        for t in targets:
            subprocess.run([bl.WRK_BIN, "-t1", "-c%d" % args.connections, "-d2s", "-H",
                            "Authorization: Bearer " + bl.KEY, urls[t] + "/v1/tasks/" + TASK],
                           capture_output=True, timeout=60)
        for rep in range(args.reps):
            for v in variants:
                for t in targets:
                    cmd = [bl.WRK_BIN, "-t%d" % args.threads, "-c%d" % args.connections,
                           "-d%ds" % args.duration, "--latency", "-H",
                           "Authorization: Bearer " + bl.KEY]
                    if v == "list":
                        cmd += ["-s", lua, urls[t] + "/v1/tasks"]
                    else:
                        cmd += [urls[t] + "/v1/tasks/" + TASK]
                    p = subprocess.run(cmd, capture_output=True, text=True,
                                       timeout=args.duration + 60)
                    r = parse_wrk(p.stdout)
                    raw[v][t].append(r)
                    bl.log("rep %d %-5s %-12s %9.0f req/s p50 %.2f ms p99 %.2f ms non-2xx %d %s"
                           % (rep + 1, v, t, r["rps"] or 0, r["p50"] or 0, r["p99"] or 0,
                              r["non2xx"], r["socket_errors"]))
        rss = "?"
        with open("/proc/%d/status" % px.pid) as f:
            for line in f:
                if line.startswith("VmHWM"):
                    rss = line.split(":", 1)[1].strip()
        print("hiapi-proxy peak RSS after the runs: %s\n" % rss)
    for v in variants:
        print("## variant %s" % v)
        out = []
        for t in targets:
            rs = raw[v][t]
            out.append([t, bl.fmt(bl.median([r["rps"] for r in rs]), "%.0f"),
                        bl.fmt(bl.median([r["p50"] for r in rs]), "%.2f ms"),
                        bl.fmt(bl.median([r["p99"] for r in rs]), "%.2f ms"),
                        sum(r["non2xx"] for r in rs),
                        " ".join("%.0f" % (r["rps"] or 0) for r in rs)])
        print(bl.table(["target", "req/s", "p50", "p99", "non-2xx (all runs)", "req/s per run"],
                       out))
        print(flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()
