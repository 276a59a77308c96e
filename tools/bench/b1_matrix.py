#!/usr/bin/env python3
"""B1 as a matrix (issue 22): every gateway shape the simulator has, with and without its
X-RateLimit-* counters, with and without 10 ms of arrival jitter, under four workloads, each cell
run through hiapi-proxy, through nginx limit_req (delaying burst queue) and by the bare clients.

A cell is (limiter, counters, jitter, workload); one unit of work is one repetition of a cell:
a fresh hiapi-sim, then the rows one after another (proxy, nginx, direct, in that order).
Units run --parallel at a time (each cell has its own simulator and ports; the runs are mostly
sleeping clients, a few hundred requests a second at most), repetition-major, so that a run cut
short still covers every cell once before any twice.

Every finished run is appended to --results (JSON lines, with the last commit that changed
the daemon, the simulator or the clients), and a unit whose runs are all there for this commit is not run again: the matrix may
be filled over several sittings. --report prints the tables from the file without running.

Goal in every cell (the issue's): the proxy's makespan <= 1.05 x ideal and <= nginx's, 0 client
429s, upstream 429s <= 0.5 % of requests, busiest second within rate + burst.

Ideal: ideal.schedule(), what a client that knows every task's end and the gateway's state
would reach against that gateway shape; it is b1_goodput.ideal() (a lower bound made of three
separate limits) except where a wave's looks and creates contend for the burst (the light
workload: 28.5 s on a bucket, 29.0 s on a window, against 27.0 s) and on a fixed window a run
begins late in (see below). For the mixed workload the makespan
compared is the upstream one (when the simulator ended the last task): its SDK and guide clients
poll every 2-5 s, which adds up to that much to what they see, whatever the gateway does. The
client makespan is in the results too.

Task run times: fixed by default (every task its tier's duration). With --durations
uniform:J or lognormal:S the simulator draws them, per tier in creation order, from a seed that
changes with the repetition and starts over at each run, so the targets of one repetition meet
the same tasks; each run's ideal is then the schedule of the run times it met (from the
simulator's /__stats), and a cell's ratios are the runs' own. Such runs are kept and reported
apart, as latency runs are.

A fixed window's ideal depends on where the run began in the windows' grid (up to 0.9 s on
budget and light; see ideal.py): each run against one carries the ideal at the phase it met
(the simulator's window_phase_ms) and is judged against it. The ideal quoted in a table's
heading is at phase 0 (the longest); runs recorded before the phase was kept are judged
against it.
"""

import argparse
import concurrent.futures
import itertools
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import b1_goodput as b1  # noqa: E402
import benchlib as bl  # noqa: E402
import ideal as ideal_mod  # noqa: E402

LIMITERS = ["token-bucket", "gcra", "fixed-window", "sliding-window"]
WORKLOADS = ["heavy", "budget", "light", "mixed"]
TARGETS = ["proxy", "nginx", "direct"]  # also proxy+expected: see first_wave()


def commit():
    """The last commit that changed what runs (the daemon, the simulator, the clients), so that
    a commit of documents or results does not start the matrix afresh."""
    p = subprocess.run(["git", "-C", bl.ROOT, "log", "-1", "--format=%h", "--", "src", "include",
                        "CMakeLists.txt", "tools/hiapi_sim", "tools/loadgen"],
                       capture_output=True, text=True, timeout=10)
    return p.stdout.strip() or "unknown"


def row_name(workload, target):
    return ("mixed-" if workload == "mixed" else "naive-") + target


def cell_args(limiter, headers, jitter, args, rep=1):
    return argparse.Namespace(limiter=limiter, ratelimit_headers=headers, jitter=jitter,
                              latency=args.latency, durations=args.durations,
                              sim_seed=7 if args.durations == "fixed" else 6 + rep,
                              min_poll=args.min_poll, max_duration=args.max_duration,
                              burst_margin=0)


def load_results(path, latency="0", durations="fixed"):
    """@return the runs in @p path made with the simulator's --latency @p latency and task run
    times @p durations (runs without those fields had none and fixed ones)."""
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    rec = json.loads(line)
                    if (rec.get("latency", "0") == latency and
                            rec.get("durations", "fixed") == durations):
                        out.append(rec)
    return out


def run_unit(cell, rep, targets, args, sha, sink):
    limiter, headers, jitter, workload = cell
    p = b1.PROFILES[workload]
    cargs = cell_args(limiter, headers, jitter, args, rep)
    with bl.Stack() as st:
        sim = st.sim(b1.sim_flags(p, cargs))
        for target in targets:
            t0 = time.time()
            r = b1.run_row(row_name(workload, target), p, sim, cargs, seed=rep)
            ran = None
            if args.durations != "fixed" or limiter == "fixed-window":
                try:
                    ran = run_ideal(p, limiter, sim, args.durations != "fixed")
                except ValueError:
                    ran = 0.0  # its clients gave up before creating every task: see same_ideal()
            rec = {"commit": sha, "limiter": limiter, "headers": headers, "jitter": jitter,
                   "workload": workload, "target": target, "rep": rep, "started": t0,
                   "makespan_s": r["makespan_s"],
                   "upstream_makespan_s": r["sim"].get("tasks_last_end_s"),
                   "complete": r["complete"], "client_429": r["requests"]["status_429"],
                   "client_errors": r["requests"]["errors"],
                   "client_requests": r["requests"]["total"],
                   "upstream_requests": r["sim"]["requests"],
                   "upstream_429_pct": r["sim"]["upstream_429_pct"],
                   "busiest_1s": r["sim"]["max_admitted_1s"],
                   "duplicates": r["sim"]["duplicate_creations"],
                   "tasks": r["tasks"]}
            if args.latency != "0":
                rec["latency"] = args.latency
            if ran is not None:  # 0: see same_ideal()
                if args.durations != "fixed":
                    rec["durations"] = args.durations
                rec["ideal_s"] = ran
            sink(rec)
            bl.log("%s/%s/%s/%s rep %d %-6s makespan %6.2f s (upstream %s) client 429 %d "
                   "upstream %d (429 %.1f%%)%s" % (
                       limiter, headers, jitter, workload, rep, target, rec["makespan_s"],
                       rec["upstream_makespan_s"], rec["client_429"], rec["upstream_requests"],
                       rec["upstream_429_pct"], "" if rec["complete"] else " INCOMPLETE"))


def run_ideal(p, limiter, sim, drawn):
    """@return the ideal makespan of the run @p sim just served (its /__stats until the next run
    resets it): the omniscient schedule of the run times its tasks had when @p drawn (else the
    configured ones), against a fixed window from where the run's first request fell in it.
    @raise ValueError when the run created fewer tasks than the workload has."""
    _, body = bl.http("GET", sim.url + "/__stats")
    stats = json.loads(body)
    phase = (stats.get("window_phase_ms") or 0.0) / 1000.0
    return ideal_mod.schedule(p, limiter, stats["durations_ms"] if drawn else None, phase)


def measured(rec):
    """The makespan a cell is judged on: upstream for the mixed workload, else the clients'."""
    if rec["workload"] == "mixed" and rec.get("upstream_makespan_s"):
        return rec["upstream_makespan_s"]
    return rec["makespan_s"]


def same_ideal(recs):
    """Each run's own ideal, where it has one: a run with drawn run times that did not create
    every task (clients that gave up) takes the ideal of another run of the same cell and
    repetition (the same seed: the same run times)."""
    by_rep = {}
    for r in recs:
        if r.get("ideal_s"):
            by_rep[(r["limiter"], r["headers"], r["jitter"], r["workload"], r["rep"])] = r["ideal_s"]
    for r in recs:
        if r.get("ideal_s") == 0.0:
            found = by_rep.get((r["limiter"], r["headers"], r["jitter"], r["workload"], r["rep"]))
            if found:
                r["ideal_s"] = found
            else:
                del r["ideal_s"]
    return recs


def summary(recs, ideal):
    """@param ideal the cell's ideal, for runs that do not carry their own (fixed run times)."""
    ms = [measured(r) / (r.get("ideal_s") or ideal) for r in recs]
    return {"n": len(recs), "ratio": bl.median(ms), "min": min(ms), "max": max(ms),
            "client_429": max(r["client_429"] for r in recs),
            "u429": bl.median([r["upstream_429_pct"] for r in recs]),
            "u429_max": max(r["upstream_429_pct"] for r in recs),
            "busiest": max(r["busiest_1s"] for r in recs),
            "complete": all(r["complete"] for r in recs),
            "dups": max(r["duplicates"] for r in recs)}


def report(results, sha, args):
    base = args.baseline_commit or sha
    recs = [r for r in results if r["commit"] == sha and r["target"].startswith("proxy")]
    recs += [r for r in results if r["commit"] == base and not r["target"].startswith("proxy")]
    recs = same_ideal(recs)
    print("B1 matrix: hiapi-proxy at %s, nginx and bare clients at %s: %d runs in %s%s%s" % (
        sha, base, len(recs), args.results,
        "" if args.latency == "0" else ", simulator latency %s" % args.latency,
        "" if args.durations == "fixed" else ", run times %s (each run against its own "
        "ideal; the ideals quoted are those of fixed run times)" % args.durations))
    misses = []
    for workload in args.workloads:
        p = b1.PROFILES[workload]
        t, h, light = b1.counts(p)
        print()
        print("### %s: %d tasks (%d heavy, %d light), %d req/s burst %d; ideal %s%s" % (
            workload, t, h, light, p["rate"], p["burst"],
            ", ".join("%.1f s on a %s%s" % (ideal_mod.schedule(p, lim), lim,
                                             " (at phase 0)" if lim == "fixed-window" else "")
                      for lim in args.limiters),
            " (makespans upstream)" if workload == "mixed" else ""))
        print()
        rows = []
        for limiter, headers, jitter in itertools.product(args.limiters, args.headers, args.jitters):
            ideal = max(b1.ideal(p), ideal_mod.schedule(p, limiter))
            by = {}
            for target in TARGETS:
                rs = [r for r in recs if (r["limiter"], r["headers"], r["jitter"], r["workload"],
                                          r["target"]) == (limiter, headers, jitter, workload, target)]
                by[target] = summary(rs, ideal) if rs else None
            px, ng, dr = by["proxy"], by["nginx"], by["direct"]
            if not px:
                continue

            def cellf(s):
                if not s:
                    return "-", "-", "-"
                return ("%.2f (%.2f–%.2f)%s" % (s["ratio"], s["min"], s["max"],
                                               "" if s["complete"] else " tasks undone"),
                        "%d" % s["client_429"], "%.1f %%" % s["u429"])
            verdict = []
            if px["ratio"] > 1.05:
                verdict.append("> 1.05×")
            # nginx that left tasks undone (clients that gave up on its 429s) did less work:
            # its makespan is no bar then.
            if ng and ng["complete"] and px["ratio"] > ng["ratio"]:
                verdict.append("> nginx")
            if px["client_429"]:
                verdict.append("client 429s")
            if px["u429"] > 0.5:
                verdict.append("upstream 429s")
            if px["busiest"] > p["rate"] + p["burst"]:
                verdict.append("busiest second")
            if not px["complete"] or px["dups"]:
                verdict.append("incomplete/duplicates")
            if verdict:
                misses.append((workload, limiter, headers, jitter, verdict))
            rows.append([limiter, headers, jitter or "0"] + list(cellf(px)) +
                        ["%d" % px["busiest"]] + list(cellf(ng))[:3] + list(cellf(dr))[:2] +
                        ["%d/%s/%s" % (px["n"], ng["n"] if ng else 0, dr["n"] if dr else 0),
                         "met" if not verdict else "**" + ", ".join(verdict) + "**"])
        print(bl.table(["gateway", "counters", "jitter", "proxy × ideal (min–max)",
                        "proxy client 429s", "proxy upstream 429 %", "busiest 1 s",
                        "nginx × ideal", "nginx client 429s", "nginx upstream 429 %",
                        "bare × ideal", "bare client 429s", "runs p/n/b", "goal"], rows))
    first_wave(recs, args)
    print()
    print("cells missing the goal: %d" % len(misses))
    for m in misses:
        print("  %s %s counters %s jitter %s: %s" % (m[0], m[1], m[2], m[3] or "0", ", ".join(m[4])))


def first_wave(recs, args):
    """What not knowing the durations costs: the proxy against the same proxy whose tiers'
    expected_duration is the simulator's (target proxy+expected), where both ran."""
    rows = []
    for cell in itertools.product(args.limiters, args.headers, args.jitters, args.workloads):
        def of(target):
            return [measured(r) for r in recs if (r["limiter"], r["headers"], r["jitter"],
                                                   r["workload"], r["target"]) == cell + (target,)]
        plain, known = of("proxy"), of("proxy+expected")
        if plain and known:
            rows.append(list(cell[:3]) + [cell[3], "%.2f s" % bl.median(plain),
                                          "%.2f s" % bl.median(known),
                                          "%+.2f s" % (bl.median(plain) - bl.median(known)),
                                          "%d/%d" % (len(plain), len(known))])
    if rows:
        print()
        print("### first-wave cost: learning the durations against knowing them (expected_duration)")
        print()
        print(bl.table(["gateway", "counters", "jitter", "workload", "proxy", "proxy+expected",
                        "cost", "runs"], rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limiters", default=",".join(LIMITERS))
    ap.add_argument("--headers", default="on,off")
    ap.add_argument("--jitters", default="0,10ms")
    ap.add_argument("--latency", default="0",
                    help="the simulator's latency before each request is counted (e.g. 50ms), in "
                         "every cell; runs are kept and reported apart from those without")
    ap.add_argument("--durations", default="fixed",
                    help="task run times: fixed, uniform:J or lognormal:S (b1_goodput.py's); "
                         "runs with drawn times are kept and reported apart")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=1, help="units run at once")
    ap.add_argument("--min-poll", default="1s", help="hiapi-proxy tiers' min_poll_interval")
    ap.add_argument("--max-duration", type=int, default=240, help="bound of one run, seconds")
    ap.add_argument("--results", default=os.path.join(bl.ROOT, "docs", "bench", "b1_matrix.jsonl"))
    ap.add_argument("--commit", help="the commit whose proxy rows to report (default: the "
                                     "last that changed what runs)")
    ap.add_argument("--baseline-commit",
                    help="take the nginx and bare-client rows from this commit's runs (they do "
                         "not run hiapi-proxy, so a proxy change leaves them as they were)")
    ap.add_argument("--report", action="store_true", help="print the tables only")
    ap.add_argument("--deadline", type=int, default=0,
                    help="start no unit after this many seconds (0: no bound)")
    args = ap.parse_args()
    for k in ("limiters", "headers", "jitters", "workloads", "targets"):
        setattr(args, k, [x if x != "0" else "0" for x in getattr(args, k).split(",") if x])
    sha = args.commit or commit()
    if args.report:
        report(load_results(args.results, args.latency, args.durations), sha, args)
        return
    bl.build()
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    done = {(r["limiter"], r["headers"], r["jitter"], r["workload"], r["target"], r["rep"])
            for r in load_results(args.results, args.latency, args.durations) if r["commit"] == sha}
    units = []
    for rep in range(1, args.reps + 1):
        for cell in itertools.product(args.limiters, args.headers, args.jitters, args.workloads):
            todo = [t for t in args.targets if cell + (t, rep) not in done]
            if todo:
                units.append((cell, rep, todo))
    bl.log("B1 matrix at %s: %d units to run, %d at a time" % (sha, len(units), args.parallel))
    lock = threading.Lock()
    start = time.monotonic()

    def sink(rec):
        with lock, open(args.results, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")

    def unit(u):
        if args.deadline and time.monotonic() - start > args.deadline:
            return
        run_unit(u[0], u[1], u[2], args, sha, sink)

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as ex:
        for f in [ex.submit(unit, u) for u in units]:
            try:
                f.result()
            except Exception as e:  # one failed unit must not lose the others' results
                bl.log("unit failed: %s" % e)
    report(load_results(args.results, args.latency, args.durations), sha, args)


if __name__ == "__main__":
    main()
