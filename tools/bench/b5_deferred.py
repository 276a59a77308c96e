#!/usr/bin/env python3
"""B5: heavy-dominant burst of minute-long tasks through the official Python SDK.

Every client thread runs the SDK's own `client.tasks.run()` (create, then `wait()` polling every
3 s) with the SDK's defaults (60 s per request, 2 retries of 429/503 honouring Retry-After). The
simulator runs heavy tasks of about a minute with a ceiling of 2 per key, so most heavy creates
find the ceiling full: a client can only succeed if whatever stands between it and HiAPI keeps
them from failing.

Rows (alternated within each repetition, fresh simulator each):
  sdk-proxy   the SDK through hiapi-proxy (heavy creates deferred after 2 s)
  sdk-nginx   the SDK through nginx limit_req (rate = the simulator's, delaying burst queue)
  sdk-direct  the SDK straight at the simulator

Reported per row: makespan (first create to last task seen ended) against the ideal (the heavy
ceiling's waves back to back), the slowest create answer, tasks that ended in success, errors
the clients saw (exceptions raised by the SDK), and the simulator's view (tasks created,
duplicates, 429s sent, most heavy tasks running at once).

The SDK is not vendored: pass its source directory (the one holding the `hiapi` package, e.g.
a checkout's `src/`) with --sdk, or a git directory of HiAPIAI/hiapi-python with --sdk-git.

Usage: b5_deferred.py --sdk PATH [--reps N] [--rows sdk-proxy,sdk-nginx,sdk-direct]
       [--heavy N] [--light N] [--duration 60s]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time

import benchlib as bl

CEILING = 2


def load_sdk(args):
    path = args.sdk
    if args.sdk_git:
        path = tempfile.mkdtemp(prefix="hiapi-sdk-")
        archive = subprocess.run(["git", "--git-dir", args.sdk_git, "archive", "HEAD", "src"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", path], input=archive, check=True)
        path = os.path.join(path, "src")
    if not path:
        sys.exit("b5: give --sdk PATH (the directory holding the hiapi package) or --sdk-git DIR")
    sys.path.insert(0, path)
    import hiapi  # noqa: F401  (fails early when the path is wrong)
    return hiapi


def run_clients(hiapi, base_url, heavy, light, clients):
    """Runs heavy + light tasks, spread over @p clients threads, each task in its own thread
    (as a service fanning out). @return per-task records."""
    records = []
    lock = threading.Lock()
    start = time.monotonic()

    def one(i, model):
        client = hiapi.HiAPI(api_key=bl.KEY, base_url=base_url)
        rec = {"model": model, "ok": False, "error": None, "create_s": None, "end_s": None}
        t0 = time.monotonic()
        try:
            created = client.tasks.create(model=model, input={"prompt": "b5-%d" % i})
            rec["create_s"] = time.monotonic() - t0
            rec["id"] = created.task_id
            task = client.tasks.wait(created.task_id, poll_interval=3.0, timeout=1800)
            rec["ok"] = task.status == "success"
        except Exception as e:  # the SDK's own exceptions are what a service would see
            rec["error"] = "%s: %s" % (type(e).__name__, str(e)[:120])
        rec["end_s"] = time.monotonic() - start
        with lock:
            records.append(rec)

    threads = []
    models = ["seedance-2-0"] * heavy + ["gpt-image-2"] * light
    for i, m in enumerate(models):
        t = threading.Thread(target=one, args=(i, m), daemon=True)
        threads.append(t)
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=3600)
    return records


def one_row(hiapi, row, args):
    dur = args.duration
    sim_flags = ["--keys", bl.KEY, "--rate", "1/s", "--burst", "10", "--heavy-max", str(CEILING),
                 "--light-max", "10", "--heavy-duration", dur, "--light-duration", "15s",
                 "--duration-jitter", "0.1", "--seed", str(args.seed)]
    with bl.Stack() as st:
        sim = st.sim(sim_flags)
        if row == "sdk-proxy":
            yaml = bl.proxy_yaml(sim.port, "1/s", 10, CEILING, 10, min_poll="2s",
                                 extra="deferred:\n  journal: %s\n" % st.path("deferred.journal"))
            proxy = st.proxy(yaml)
            base = proxy.url
        elif row == "sdk-nginx":
            port = bl.free_port()
            ng = st.nginx(bl.nginx_limit_req(sim.port, port, 1))
            st.wait_port(port, ng)
            base = "http://127.0.0.1:%d" % port
        else:
            base = sim.url
        t0 = time.monotonic()
        recs = run_clients(hiapi, base, args.heavy, args.light, args.clients)
        makespan = max(r["end_s"] for r in recs) if recs else None
        stats = json.loads(bl.http("GET", sim.url + "/__stats")[1])
    ok = sum(1 for r in recs if r["ok"])
    errors = [r["error"] for r in recs if r["error"]]
    creates = [r["create_s"] for r in recs if r["create_s"] is not None]
    return {
        "row": row,
        "makespan": makespan,
        "ok": ok,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "slowest_create": max(creates) if creates else None,
        "created": stats.get("tasks_created"),
        "duplicates": stats.get("duplicate_creations"),
        "upstream_429": stats.get("rejected_429", {}).get("rate", 0) +
                        stats.get("rejected_429", {}).get("concurrency", 0),
        "max_heavy": stats.get("tiers", {}).get("heavy", {}).get("max_running"),
        "took": time.monotonic() - t0,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sdk", help="directory holding the hiapi package (the SDK's src/)")
    ap.add_argument("--sdk-git", help="git directory of HiAPIAI/hiapi-python")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--rows", default="sdk-proxy,sdk-nginx,sdk-direct")
    ap.add_argument("--heavy", type=int, default=8)
    ap.add_argument("--light", type=int, default=4)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", default="60s", help="heavy task duration (mean)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    hiapi = load_sdk(args)
    bl.build()
    dur_s = float(args.duration.rstrip("s"))
    ideal = math.ceil(args.heavy / CEILING) * dur_s
    bl.print_header("B5: deferred creates, minute-long heavy tasks, official Python SDK", {
        "tasks": "%d heavy (~%s each, ceiling %d) + %d light (15 s)" % (
            args.heavy, args.duration, CEILING, args.light),
        "limits": "1 req/s burst 10 per key (simulator and proxy alike)",
        "client": "hiapi-python tasks.create() + wait(poll_interval=3), SDK defaults",
        "ideal": "%.0f s (heavy waves back to back)" % ideal,
        "reps": args.reps,
    })
    rows = args.rows.split(",")
    results = {r: [] for r in rows}
    for rep in range(args.reps):
        for row in rows:
            bl.log("rep %d row %s ..." % (rep + 1, row))
            res = one_row(hiapi, row, args)
            bl.log("  %s" % res)
            results[row].append(res)
    table_rows = []
    for row in rows:
        rs = results[row]
        ms = [r["makespan"] for r in rs]
        med = bl.median(ms)
        table_rows.append([
            row,
            "%s (%s-%s)" % (bl.fmt(med), bl.fmt(min(ms)), bl.fmt(max(ms))),
            bl.fmt(med / ideal if med else None, "%.2f"),
            bl.fmt(bl.median([r["slowest_create"] for r in rs]), "%.2f"),
            "%d/%d" % (min(r["ok"] for r in rs), args.heavy + args.light),
            max(r["errors"] for r in rs),
            max(r["created"] for r in rs),
            max(r["duplicates"] for r in rs),
            max(r["upstream_429"] for r in rs),
            max(r["max_heavy"] for r in rs),
        ])
    print(bl.table(["row", "makespan s (min-max)", "x ideal", "slowest create s",
                    "success", "client errors", "tasks created", "duplicates",
                    "upstream 429s", "max heavy running"], table_rows))
    for row in rows:
        for r in results[row]:
            if r["first_error"]:
                print("%s first error: %s" % (row, r["first_error"]))


if __name__ == "__main__":
    main()
