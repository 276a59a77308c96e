#!/usr/bin/env python3
"""B4 scale: 10,000 client connections held in hiapi-proxy's queue at once.

hiapi-sim with a tiny budget (1 req/s, burst 1); hiapi-proxy at the same rate, queue.max_size
and listen.max_connections 12000, deadline 20s. hiapi-load --hold 10000 opens every connection at once and sends one
GET /v1/tasks?page=1&size=1 on each; the proxy serves about one a second and must answer every
other one with its own 429 (queue_timeout) when its deadline passes: no connection may be dropped.
Measured from /proc/<pid> of the daemon: VmHWM (peak RSS) and the largest fd count seen (sampled
every 100 ms while the connections are held).

File descriptors: 10,000 connections need more than the usual 1024. The daemon is started with
its soft RLIMIT_NOFILE raised to 20000 (set in the child before exec, capped by the hard limit;
raising the hard limit itself needs CAP_SYS_RESOURCE); hiapi-load raises its own soft limit up to
its hard limit. The hard limit must therefore be >= ~10,100 (`ulimit -Hn`).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def status_kb(pid, field):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--deadline", default="20s", help="the proxy's queue.deadline")
    ap.add_argument("--nofile", type=int, default=20000,
                    help="daemon RLIMIT_NOFILE (soft; capped by the hard limit)")
    ap.add_argument("--json")
    args = ap.parse_args()
    bl.build()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections + 1000
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
        except (ValueError, OSError) as e:
            sys.exit("cannot raise RLIMIT_NOFILE to %d (%s): run as root or `ulimit -n %d` first"
                     % (want, e, want))
    bl.print_header("B4 scale", {
        "simulator": "--rate 1/s --burst 1",
        "hiapi-proxy": "rate 1/s burst 1, queue.max_size %d, listen.max_connections %d, "
                       "deadline %s, RLIMIT_NOFILE %d"
                       % (args.connections + 2000, args.connections + 2000, args.deadline,
                          args.nofile),
        "load": "hiapi-load --hold %d (GET /v1/tasks?page=1&size=1, all at once, 1 client class)"
                % args.connections,
        "client RLIMIT_NOFILE": resource.getrlimit(resource.RLIMIT_NOFILE),
        "repetitions": args.reps,
    })
    results = []
    for rep in range(args.reps):
        with bl.Stack() as st:
            sim = st.sim(["--rate", "1/s", "--burst", "1", "--seed", "7"])
            # Every connection held open at once is what B4 measures: the cap (4,096 by
            # default, a defence against floods) is raised above them, as the queue is.
            yaml = bl.proxy_yaml(sim.port, "1/s", 1, 2, 5, queue_max=args.connections + 2000,
                                 deadline=args.deadline, level="error",
                                 max_connections=args.connections + 2000)
            px = st.proxy(yaml, nofile=args.nofile)
            base_rss = status_kb(px.pid, "VmRSS")
            base_fds = fd_count(px.pid)
            stop = threading.Event()
            peak = {"fds": 0, "rss": 0}

            def sample():
                while not stop.is_set():
                    n = fd_count(px.pid)
                    r = status_kb(px.pid, "VmRSS")
                    peak["fds"] = max(peak["fds"], n or 0)
                    peak["rss"] = max(peak["rss"], r or 0)
                    time.sleep(0.1)
            th = threading.Thread(target=sample, daemon=True)
            th.start()
            p = subprocess.run([bl.LOAD_BIN, "--target", px.url, "--key", bl.KEY, "--hold",
                                str(args.connections), "--max-duration", "120s", "--json", "-",
                                "--quiet", "--label", "b4"],
                               capture_output=True, text=True, timeout=300)
            stop.set()
            th.join()
            hwm = status_kb(px.pid, "VmHWM")
            alive = px.alive()
            if not p.stdout.strip():
                raise RuntimeError("hiapi-load --hold failed: " + p.stderr)
            r = json.loads(p.stdout)
            r.update({"vmhwm_kb": hwm, "peak_rss_sampled_kb": peak["rss"], "peak_fds": peak["fds"],
                      "base_rss_kb": base_rss, "base_fds": base_fds, "proxy_alive": alive,
                      "upstream_requests": json.loads(bl.http("GET", sim.url + "/__stats")[1])
                      ["requests"]["total"]})
            results.append(r)
            bl.log("rep %d: answered %d/%d (%s), 200=%s 429=%s, lost %d, peak RSS %.1f MiB, "
                   "peak fds %d, all sent %.2f s, last answer %.2f s"
                   % (rep + 1, r["answered"], r["connections"], "no loss" if r["lossless"] else "LOSS",
                      r["by_status"].get("200", 0), r["by_status"].get("429", 0),
                      r["closed_without_answer"] + r["unanswered"] + r["connect_failed"],
                      (hwm or 0) / 1024, peak["fds"], r["all_sent_s"], r["last_answer_s"]))
    out = []
    for i, r in enumerate(results):
        out.append([i + 1, "%d/%d" % (r["answered"], r["connections"]), r["by_status"].get("200", 0),
                    r["by_status"].get("429", 0),
                    ", ".join("%s %d" % kv for kv in r["proxy_errors"].items()) or "-",
                    r["closed_without_answer"] + r["unanswered"] + r["connect_failed"],
                    "%.1f MiB" % ((r["vmhwm_kb"] or 0) / 1024), r["peak_fds"],
                    "%.1f MiB" % ((r["base_rss_kb"] or 0) / 1024), r["upstream_requests"],
                    "%.2f s" % r["all_sent_s"], "%.2f s" % r["last_answer_s"]])
    print(bl.table(["run", "answered", "200", "429", "proxy errors", "lost", "peak RSS (VmHWM)",
                    "peak fds", "RSS idle", "upstream requests", "all sent", "last answer"], out))
    print()
    print("median peak RSS %.1f MiB, median peak fds %d, runs without loss %d/%d"
          % (bl.median([r["vmhwm_kb"] for r in results]) / 1024,
             bl.median([r["peak_fds"] for r in results]),
             sum(1 for r in results if r["lossless"]), len(results)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
