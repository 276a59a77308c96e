#!/usr/bin/env python3
"""B1 goodput: how fast a batch of tasks gets done under HiAPI's limits, and at what cost in 429s.

Profiles on hiapi-sim (duration jitter 0, so the ideal is exact):
  heavy: 4 req/s (burst 4), heavy ceiling 2 x 5 s tasks, light 5 x 2 s, 30 tasks (3 clients x 10),
         a third heavy: the heavy ceiling binds.
  budget: 2 req/s (burst 2), same ceilings and durations, 40 tasks (4 clients x 10), a quarter
         heavy: the request budget binds.
  light: 4 req/s (burst 4), light tasks only, 5 x 3 s, 45 tasks (3 clients x 15): the light
         ceiling binds.
  mixed: as heavy, but ten services of three kinds (4 naive, 3 sdk, 3 guide) with 4 tasks each,
         a quarter heavy; its rows name only the target (mixed-proxy, mixed-nginx, mixed-direct).
B1 runs heavy and budget unless --profiles says otherwise; b1_matrix.py runs all four against
every gateway shape.
Rows: naive direct, guide direct, naive through nginx limit_req (burst large, no nodelay,
keep-alive upstream), naive through hiapi-proxy, sdk through hiapi-proxy. Optional rows
naive-proxy+expected / sdk-proxy+expected give the proxy's tiers an expected_duration equal to the
simulator's durations (what an operator who knows the models would configure).

Ideal lower bound (every task needs at least one create and one poll that sees it finished):
  ideal = max( ceil(H / heavy_max) * heavy_duration,      heavy tasks in waves of the ceiling
               ceil(L / light_max) * light_duration,      light tasks likewise
               (2 * T - burst) / rate )                    2 requests per task on the budget
"""

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

PROFILES = {
    "heavy": dict(rate=4, burst=4, heavy_max=2, light_max=5, heavy_s=5, light_s=2,
                  clients=3, tasks=10, heavy_share=1 / 3),
    "budget": dict(rate=2, burst=2, heavy_max=2, light_max=5, heavy_s=5, light_s=2,
                   clients=4, tasks=10, heavy_share=0.25),
    # Light tasks only: the light ceiling binds (9 waves of 3 s), the budget nearly (21.5 s).
    "light": dict(rate=4, burst=4, heavy_max=2, light_max=5, heavy_s=5, light_s=3,
                  clients=3, tasks=15, heavy_share=0),
    # Ten services of three kinds on one key: tight pollers, the official SDK (3 s polls, two
    # retries) and the guide's client (2-5 s jittered polls, 5 tasks at a time, 2 heavy). Its
    # row names a target only ("mixed-proxy"); the heavy ceiling binds.
    "mixed": dict(rate=4, burst=4, heavy_max=2, light_max=5, heavy_s=5, light_s=2,
                  tasks=4, heavy_share=0.25,
                  groups=[("naive", 4), ("sdk", 3), ("guide", 3)]),
}
ROWS = ["naive-direct", "guide-direct", "naive-nginx", "naive-proxy", "sdk-proxy"]


def counts(p):
    def heavy(n):  # hiapi-load spreads a group's heavy tasks evenly over its n tasks
        share = p["heavy_share"]
        return sum(1 for i in range(n) if math.floor((i + 1) * share) > math.floor(i * share))
    sizes = [n * p["tasks"] for _, n in p["groups"]] if "groups" in p else [p["clients"] * p["tasks"]]
    t = sum(sizes)
    h = sum(heavy(n) for n in sizes)
    return t, h, t - h


def ideal(p):
    t, h, light = counts(p)
    return max(math.ceil(h / p["heavy_max"]) * p["heavy_s"],
               math.ceil(light / p["light_max"]) * p["light_s"],
               (2 * t - p["burst"]) / p["rate"])


def duration_flags(spec):
    """hiapi-sim's flags for task run times: "fixed" (every task its tier's duration, so the
    ideal is exact), "uniform:J" (times 1 + J * uniform(-1, 1)) or "lognormal:S" (the tier's
    duration as the mean, S the sigma of its log)."""
    kind, _, value = (spec or "fixed").partition(":")
    if kind == "fixed":
        return ["--duration-jitter", "0"]
    if kind == "uniform" and value:
        return ["--duration-jitter", value]
    if kind == "lognormal" and value:
        return ["--duration-dist", "lognormal", "--duration-sigma", value]
    raise SystemExit("--durations: fixed, uniform:J or lognormal:S, not %r" % spec)


def sim_flags(p, args):
    """hiapi-sim's flags for profile @p p, with the task run times (args.durations, fixed by
    default), the gateway's shape, counters, arrival jitter and latency (args.latency, if any)
    from @p args."""
    return ["--rate", "%d/s" % p["rate"], "--burst", str(p["burst"]),
            "--heavy-max", str(p["heavy_max"]), "--light-max", str(p["light_max"]),
            "--heavy-duration", "%ds" % p["heavy_s"], "--light-duration", "%ds" % p["light_s"],
            "--seed", str(getattr(args, "sim_seed", 7))] + (
                duration_flags(getattr(args, "durations", "fixed"))) + [
            "--limiter", args.limiter,
            "--ratelimit-headers", args.ratelimit_headers, "--jitter", args.jitter] + (
                ["--latency", args.latency] if getattr(args, "latency", "0") not in ("0", "") else [])


def proxy_burst(p, args):
    # --burst-margin below the simulator's bucket (0: exactly the gateway's burst).
    return max(1, p["burst"] - args.burst_margin)


def run_row(row, p, sim, args, seed):
    """@param row e.g. naive-proxy, naive-proxy@2s for another min_poll_interval, or
    naive-proxy+expected with the tiers' expected_duration set to the simulator's durations, or
    naive-proxy+cut with every rate 429 cutting the rate and no phase margin (repeat_window and
    phase_margin 0s: the reaction before issue 22, for comparison in the same build)."""
    limits_extra = ""
    if row.endswith("+cut"):
        row = row[:-len("+cut")]
        limits_extra = "  repeat_window: 0s\n  phase_margin: 0s\n"
    expected = None
    if row.endswith("+expected"):
        row = row[:-len("+expected")]
        expected = ("%ds" % p["heavy_s"], "%ds" % p["light_s"])
    row, _, min_poll = row.partition("@")
    min_poll = min_poll or args.min_poll
    load = ["--tasks", str(p["tasks"]), "--heavy-share", str(p["heavy_share"]), "--seed", str(seed),
            "--max-duration", str(args.max_duration), "--label", row]
    if "groups" in p:
        for preset, n in p["groups"]:
            load += ["--group", "name=%s,clients=%d,preset=%s" % (preset, n, preset)]
    else:
        load += ["--preset", row.split("-")[0], "--clients", str(p["clients"])]
    with bl.Stack() as st:
        if row.endswith("direct"):
            target = sim.url
        elif row.endswith("nginx"):
            port = bl.free_port()
            ng = st.nginx(bl.nginx_limit_req(sim.port, port, p["rate"]))
            st.wait_port(port, ng)
            target = "http://127.0.0.1:%d" % port
        else:
            px = st.proxy(bl.proxy_yaml(sim.port, "%d/s" % p["rate"], proxy_burst(p, args),
                                        p["heavy_max"], p["light_max"], min_poll,
                                        expected=expected, limits_extra=limits_extra))
            target = px.url
        return bl.run_load(target, load, sim=sim.url)


def summarise(reports, ideal_s):
    def med(f):
        return bl.median([f(r) for r in reports])
    ok = all(r["complete"] for r in reports)
    return {
        "makespan": med(lambda r: r["makespan_s"]),
        "ratio": med(lambda r: r["makespan_s"] / ideal_s),
        "c429": med(lambda r: r["requests"]["status_429"]),
        "cerr": med(lambda r: r["requests"]["errors"]),
        "creq": med(lambda r: r["requests"]["total"]),
        "ureq": med(lambda r: r["sim"]["requests"]),
        "u429pct": med(lambda r: r["sim"]["upstream_429_pct"]),
        "busiest": med(lambda r: r["sim"]["max_admitted_1s"]),
        "dups": max(r["sim"]["duplicate_creations"] for r in reports),
        "done": min(r["tasks"]["success"] + r["tasks"]["fail"] for r in reports),
        "complete": ok,
        "runs": [round(r["makespan_s"], 2) for r in reports],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="repetitions per row (medians quoted)")
    ap.add_argument("--profiles", default="heavy,budget")
    ap.add_argument("--rows", default=",".join(ROWS),
                    help="comma-separated; a proxy row may name its min_poll_interval "
                         "(naive-proxy@2s) or end in +expected (tiers' expected_duration = the "
                         "simulator's durations)")
    ap.add_argument("--min-poll", default="1s", help="hiapi-proxy tiers' min_poll_interval")
    ap.add_argument("--max-duration", type=int, default=240, help="bound of one run, seconds")
    ap.add_argument("--json", help="write every run's report here")
    ap.add_argument("--limiter", default="token-bucket",
                    help="the simulator's limiter: token-bucket, gcra, fixed-window, sliding-window")
    ap.add_argument("--ratelimit-headers", default="off", help="the simulator's X-RateLimit-*: on|off")
    ap.add_argument("--jitter", default="0", help="the simulator's arrival jitter, e.g. 10ms")
    ap.add_argument("--latency", default="0",
                    help="the simulator's latency before each request is counted, e.g. 50ms")
    ap.add_argument("--durations", default="fixed",
                    help="task run times: fixed (the ideal is exact), uniform:J, lognormal:S")
    ap.add_argument("--burst-margin", type=int, default=1,
                    help="hiapi-proxy's burst = the simulator's minus this (0: the same)")
    args = ap.parse_args()
    bl.build()
    profiles = [x for x in args.profiles.split(",") if x]
    rows = [x for x in args.rows.split(",") if x]
    bl.print_header("B1 goodput", {
        "profiles": {k: PROFILES[k] for k in profiles},
        "rows": rows, "repetitions": args.reps,
        "simulator": "limiter %s, X-RateLimit-* %s, arrival jitter %s" % (
            args.limiter, args.ratelimit_headers, args.jitter),
        "hiapi-proxy": "rate = simulator rate, burst = simulator burst - %d, tiers = simulator "
                       "ceilings, lease 2m, min_poll_interval %s, queue deadline 45s" % (
                           args.burst_margin, args.min_poll),
        "nginx": "limit_req rate = simulator rate, burst=100000, no nodelay, keyed on "
                 "Authorization, keepalive 64 upstream, 1 worker",
        "clients": "hiapi-load, 3-4 clients (X-HiAPI-Client svc-N), one key",
    })
    raw = {}
    for name in profiles:
        p = PROFILES[name]
        t, h, light = counts(p)
        ideal_s = ideal(p)
        with bl.Stack() as st:
            sim = st.sim(sim_flags(p, args))
            reports = {r: [] for r in rows}
            for rep in range(args.reps):
                for row in rows:  # rows alternate within each repetition
                    r = run_row(row, p, sim, args, seed=rep + 1)
                    reports[row].append(r)
                    bl.log("%s rep %d %-13s makespan %6.2f s  client 429 %4d  upstream %5d "
                           "(429 %.1f%%)%s" % (name, rep + 1, row, r["makespan_s"],
                                               r["requests"]["status_429"], r["sim"]["requests"],
                                               r["sim"]["upstream_429_pct"],
                                               "" if r["complete"] else " INCOMPLETE"))
        raw[name] = reports
        print("## profile %s: %d tasks (%d heavy, %d light), %d req/s burst %d, heavy %d x %d s, "
              "light %d x %d s; ideal %.1f s" % (name, t, h, light, p["rate"], p["burst"],
                                                 p["heavy_max"], p["heavy_s"], p["light_max"],
                                                 p["light_s"], ideal_s))
        out = []
        for row in rows:
            s = summarise(reports[row], ideal_s)
            out.append([row, "%.1f s" % s["makespan"], "%.2f" % s["ratio"], bl.fmt(s["c429"], "%d"),
                        bl.fmt(s["cerr"], "%d"), bl.fmt(s["creq"], "%d"), bl.fmt(s["ureq"], "%d"),
                        "%.1f %%" % s["u429pct"], bl.fmt(s["busiest"], "%d"), s["dups"],
                        "%d/%d%s" % (s["done"], t, "" if s["complete"] else " (!)"),
                        " ".join(str(x) for x in s["runs"])])
        print(bl.table(["row", "makespan", "× ideal", "client 429s", "client errors",
                        "client requests", "upstream requests", "upstream 429 %",
                        "busiest 1 s", "duplicates", "tasks done", "runs (s)"], out))
        print(flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()
