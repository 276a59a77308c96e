#!/usr/bin/env python3
"""B6 several hosts: what sharing a key's budget and slots through Redis costs, and whether three
instances get a batch done as fast as one with the same total budget.

Part 1, admission overhead (loopback): the B3 origin (nginx, 1 worker, fixed JSON) behind
hiapi-proxy with store.kind local and with store.kind redis (a redis-server of the bench's own),
limits out of the way (rate 1000000/s). wrk -c32 on GET /v1/tasks?page=N&size=1 (every request
admitted and forwarded). Reported: req/s, p50 and p99 per request (wrk), and Redis round trips
per request (Redis' total_commands_processed over the run, heartbeats included, over wrk's
requests). Runs alternate; medians.

Part 2, makespan: B1's profiles on hiapi-sim (duration jitter 0). "1 instance": one hiapi-proxy,
the profile's naive clients (3 or 4) x 10 tasks. "3 instances": three hiapi-proxy sharing one
Redis, the same clients dealt round them (3: one each; 4: 2, 1, 1), started together (the same
tasks, the same key and total budget).
Makespan of the 3-instance run = the longest of the three clients' makespans. Goal: <= 1.05 x.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import b1_goodput as b1  # noqa: E402
import b3_overhead as b3  # noqa: E402
import benchlib as bl  # noqa: E402

REDIS_BIN = os.environ.get("REDIS_SERVER", "/usr/bin/redis-server")
REDIS_CLI = os.environ.get("REDIS_CLI", "/usr/bin/redis-cli")


def start_redis(st):
    port = bl.free_port()
    p = st.start([REDIS_BIN, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", st.dir], "redis")
    st.wait_port(port, p)
    p.port = port
    return p


def redis_commands(port):
    out = subprocess.run([REDIS_CLI, "-p", str(port), "INFO", "stats"], capture_output=True,
                         text=True, timeout=10).stdout
    m = re.search(r"total_commands_processed:(\d+)", out)
    return int(m.group(1)) if m else 0


def store_yaml(redis_port, secret):
    return ("store:\n  kind: redis\n  url: redis://127.0.0.1:%d/0\n  key_secret_file: %s\n"
            % (redis_port, secret))


def secret_file(st):
    path = st.path("store.secret")
    with open(path, "wb") as f:
        f.write(os.urandom(32))
    return path


def overhead(args):
    rows = {"local": [], "redis": []}
    with bl.Stack() as st:
        origin_port = bl.free_port()
        origin = st.nginx(b3.origin_block(origin_port), name="origin")
        st.wait_port(origin_port, origin)
        redis = start_redis(st)
        secret = secret_file(st)
        local = st.proxy(b3.proxy_yaml(origin_port), name="local")
        shared = st.proxy(b3.proxy_yaml(origin_port) + store_yaml(redis.port, secret),
                          name="redis")
        lua = st.path("list.lua")
        with open(lua, "w") as f:
            f.write(b3.LIST_LUA % ())
        urls = {"local": local.url, "redis": shared.url}
        for url in urls.values():  # warm-up
            subprocess.run([bl.WRK_BIN, "-t1", "-c%d" % args.connections, "-d2s", "-s", lua,
                            "-H", "Authorization: Bearer " + bl.KEY, url + "/v1/tasks"],
                           capture_output=True, timeout=60)
        for rep in range(args.reps):
            for name, url in urls.items():
                before = redis_commands(redis.port)
                p = subprocess.run([bl.WRK_BIN, "-t1", "-c%d" % args.connections,
                                    "-d%ds" % args.duration, "--latency", "-s", lua, "-H",
                                    "Authorization: Bearer " + bl.KEY, url + "/v1/tasks"],
                                   capture_output=True, text=True, timeout=args.duration + 60)
                r = b3.parse_wrk(p.stdout)
                m = re.search(r"(\d+) requests in", p.stdout)
                r["requests"] = int(m.group(1)) if m else 0
                r["redis_commands"] = redis_commands(redis.port) - before
                rows[name].append(r)
                bl.log("rep %d %-5s %8.0f req/s p50 %.2f ms p99 %.2f ms, redis commands %d"
                       % (rep + 1, name, r["rps"] or 0, r["p50"] or 0, r["p99"] or 0,
                          r["redis_commands"]))
    out = []
    for name, rs in rows.items():
        rt = bl.median([r["redis_commands"] / max(1, r["requests"]) for r in rs])
        out.append([name, bl.fmt(bl.median([r["rps"] for r in rs]), "%.0f"),
                    bl.fmt(bl.median([r["p50"] for r in rs]), "%.2f ms"),
                    bl.fmt(bl.median([r["p99"] for r in rs]), "%.2f ms"),
                    "%.3f" % rt if name == "redis" else "-",
                    sum(r["non2xx"] for r in rs)])
    print("## admission overhead (wrk -c%d, list route, %d x %d s)" % (args.connections, args.reps,
                                                                     args.duration))
    print(bl.table(["store", "req/s", "p50", "p99", "Redis round trips / request",
                    "non-2xx (all runs)"], out))
    print(flush=True)
    return rows


def load_args(p, clients, seed, label, args):
    return ["--preset", "naive", "--clients", str(clients), "--tasks", str(p["tasks"]),
            "--heavy-share", str(p["heavy_share"]), "--seed", str(seed),
            "--max-duration", str(args.max_duration), "--label", label]


def makespan_one(p, seed, args):
    with bl.Stack() as st:
        sim = st.sim(b1.sim_flags(p, args))
        px = st.proxy(bl.proxy_yaml(sim.port, "%d/s" % p["rate"], p["burst"], p["heavy_max"],
                                    p["light_max"], args.min_poll))
        r = bl.run_load(px.url, load_args(p, p["clients"], seed, "1 instance", args),
                        sim=sim.url)
        return {"makespan": r["makespan_s"], "complete": r["complete"],
                "c429": r["requests"]["status_429"], "u429": r["sim"]["upstream_429_pct"],
                "busiest": r["sim"]["max_admitted_1s"], "upstream": r["sim"]["requests"]}


def makespan_three(p, seed, args):
    with bl.Stack() as st:
        sim = st.sim(b1.sim_flags(p, args))
        redis = start_redis(st)
        secret = secret_file(st)
        proxies = [st.proxy(bl.proxy_yaml(sim.port, "%d/s" % p["rate"], p["burst"],
                                          p["heavy_max"], p["light_max"], args.min_poll,
                                          extra=store_yaml(redis.port, secret)),
                            name="proxy%d" % i) for i in range(3)]
        bl.http("POST", sim.url + "/__reset", b"")
        reports = [None] * len(proxies)

        # The profile's clients, dealt round the instances (4 clients: 2, 1, 1).
        clients = [len(range(i, p["clients"], len(proxies))) for i in range(len(proxies))]

        def run(i):
            reports[i] = bl.run_load(proxies[i].url,
                                     load_args(p, clients[i], seed + i, "instance %d" % i, args))
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(proxies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _, body = bl.http("GET", sim.url + "/__stats")
        stats = json.loads(body)
        key = stats.get("keys", {}).get(bl.KEY, {})
        rej = stats.get("rejected_429", {})
        upstream = stats.get("requests", {}).get("total", 0)
        return {"makespan": max(r["makespan_s"] for r in reports),
                "complete": all(r["complete"] for r in reports),
                "c429": sum(r["requests"]["status_429"] for r in reports),
                "u429": 100.0 * (rej.get("rate", 0) + rej.get("concurrency", 0)) / max(1, upstream),
                "busiest": key.get("max_admitted_1s"), "upstream": upstream}


def makespans(args):
    results = {}
    for name in args.profiles.split(","):
        p = b1.PROFILES[name]
        one, three = [], []
        for rep in range(args.reps_makespan):
            one.append(makespan_one(p, 1 + rep, args))
            three.append(makespan_three(p, 1 + rep, args))
            bl.log("%s rep %d: 1 instance %.2f s, 3 instances %.2f s"
                   % (name, rep + 1, one[-1]["makespan"], three[-1]["makespan"]))
        results[name] = {"one": one, "three": three}
        m1 = bl.median([r["makespan"] for r in one])
        m3 = bl.median([r["makespan"] for r in three])
        print("## makespan, profile %s (ideal %.1f s)" % (name, b1.ideal(p)))
        print(bl.table(["instances", "makespan", "x 1 instance", "client 429s",
                        "upstream requests", "upstream 429 %", "busiest 1 s", "all done",
                        "runs"], [
            [n, "%.2f s" % m, "%.2f" % (m / m1), max(r["c429"] for r in rs),
             "%g" % bl.median([r["upstream"] for r in rs]),
             "%.1f" % bl.median([r["u429"] for r in rs]),
             bl.median([r["busiest"] or 0 for r in rs]), all(r["complete"] for r in rs),
             " ".join("%.2f" % r["makespan"] for r in rs)]
            for n, m, rs in (("1", m1, one), ("3 + Redis", m3, three))]))
        print(flush=True)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="wrk repetitions (part 1)")
    ap.add_argument("--reps-makespan", type=int, default=3, help="repetitions (part 2)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--profiles", default="heavy,budget")
    ap.add_argument("--parts", default="overhead,makespan")
    ap.add_argument("--min-poll", default="1s")
    ap.add_argument("--max-duration", type=int, default=240)
    # B1's gateway shape: a token bucket, no counters, no arrival jitter.
    ap.add_argument("--limiter", default="token-bucket")
    ap.add_argument("--ratelimit-headers", default="off")
    ap.add_argument("--jitter", default="0ms")
    ap.add_argument("--json")
    args = ap.parse_args()
    bl.build()
    bl.print_header("B6 several hosts", {
        "part 1": "wrk -t1 -c%d -d%ds, list route, rate 1000000/s, local vs redis store"
                  % (args.connections, args.duration),
        "part 2": "profiles %s, naive clients, 1 proxy vs 3 proxies + Redis" % args.profiles,
        "redis": subprocess.run([REDIS_BIN, "--version"], capture_output=True,
                                text=True).stdout.strip(),
        "note": "everything shares the machine's %s cores" % os.cpu_count(),
    })
    raw = {}
    parts = args.parts.split(",")
    if "overhead" in parts:
        raw["overhead"] = overhead(args)
    if "makespan" in parts:
        raw["makespan"] = makespans(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()
