#!/usr/bin/env python3
"""B2 fairness: a batch service floods 60 creates on a 2 req/s budget while an interactive service
sends one create every 3 s on the same key. What does the interactive service wait for a create?

hiapi-sim: 2 req/s (burst 2), light tasks of 2 s, tier ceilings out of the way (light 100) so that
only the shared request budget is contended. Both services are naive clients (200 ms polls), the
flood starts at t = 0 with all 60 creates at once, the interactive service (10 creates, one every
3 s) starts at t = 1 s. Rows: through nginx limit_req (FIFO delaying queue, 2 r/s, keyed on the
API key) and through hiapi-proxy (2/s, burst 1, fair queue across X-HiAPI-Client).
Quoted: the interactive service's create latency (one HTTP request: queueing included), worst and
median, medians over the repetitions.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

ROWS = ["nginx", "hiapi-proxy"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--flood", type=int, default=60)
    ap.add_argument("--interactive", type=int, default=10)
    ap.add_argument("--interval", default="3s")
    ap.add_argument("--min-poll", default="1s")
    ap.add_argument("--max-duration", type=int, default=240)
    ap.add_argument("--json")
    args = ap.parse_args()
    bl.build()
    rows = [x for x in args.rows.split(",") if x]
    sim_flags = ["--rate", "2/s", "--burst", "2", "--heavy-max", "2", "--light-max", "100",
                 "--light-duration", "2s", "--duration-jitter", "0", "--seed", "7"]
    bl.print_header("B2 fairness", {
        "simulator": " ".join(sim_flags),
        "flood": "1 client 'flood', %d light creates at once, naive" % args.flood,
        "interactive": "1 client 'interactive', %d light creates one every %s from t=1s, naive"
                       % (args.interactive, args.interval),
        "nginx": "limit_req 2r/s burst=100000 no nodelay keyed on Authorization, keepalive upstream",
        "hiapi-proxy": "rate 2/s burst 1, light max_running 100, min_poll_interval %s, fair "
                       "queue on X-HiAPI-Client" % args.min_poll,
        "repetitions": args.reps,
    })
    load = ["--group", "name=flood,clients=1,tasks=%d,preset=naive,heavy=0" % args.flood,
            "--group", "name=interactive,clients=1,tasks=%d,preset=naive,heavy=0,interval=%s,start=1s"
            % (args.interactive, args.interval),
            "--max-duration", str(args.max_duration)]
    raw = {r: [] for r in rows}
    with bl.Stack() as outer:
        sim = outer.sim(sim_flags)
        for rep in range(args.reps):
            for row in rows:
                with bl.Stack() as st:
                    if row == "nginx":
                        port = bl.free_port()
                        ng = st.nginx(bl.nginx_limit_req(sim.port, port, 2))
                        st.wait_port(port, ng)
                        target = "http://127.0.0.1:%d" % port
                    else:
                        px = st.proxy(bl.proxy_yaml(sim.port, "2/s", 1, 2, 100, args.min_poll))
                        target = px.url
                    r = bl.run_load(target, load + ["--seed", str(rep + 1), "--label", row],
                                    sim=sim.url)
                raw[row].append(r)
                ic = r["classes"]["interactive"]["latency_ms"]["create"]
                bl.log("rep %d %-12s interactive create p50 %.0f ms max %.0f ms; flood makespan "
                       "%.1f s; client 429 %d" % (rep + 1, row, ic["p50"], ic["max"],
                                                  r["makespan_s"], r["requests"]["status_429"]))
    out = []
    for row in rows:
        rs = raw[row]
        ic = [r["classes"]["interactive"]["latency_ms"]["create"] for r in rs]
        fc = [r["classes"]["flood"]["latency_ms"]["create"] for r in rs]
        out.append([row,
                    "%.2f s" % (bl.median([c["max"] for c in ic]) / 1000),
                    "%.2f s" % (bl.median([c["p50"] for c in ic]) / 1000),
                    "%.2f s" % (bl.median([c["p50"] for c in fc]) / 1000),
                    "%.1f s" % bl.median([r["makespan_s"] for r in rs]),
                    "%d" % bl.median([r["requests"]["status_429"] for r in rs]),
                    "%d" % bl.median([r["sim"]["requests"] for r in rs]),
                    "%.1f %%" % bl.median([r["sim"]["upstream_429_pct"] for r in rs]),
                    " ".join("%.2f" % (c["max"] / 1000) for c in ic)])
    print(bl.table(["row", "interactive create worst", "interactive create median",
                    "flood create median", "makespan (all tasks)", "client 429s",
                    "upstream requests", "upstream 429 %", "worst per run (s)"], out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()
