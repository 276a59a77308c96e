#!/usr/bin/env python3
"""Trace one B1 run: where the makespan goes, task by task.

Runs one row of one B1 profile (as b1_goodput.py does, on a fresh simulator) with `hiapi-sim
--verbose`, then reads the simulator's log: every upstream request paired with its reply, in
order. Prints the makespan, each heavy task's create and end as the upstream saw them, each
look at it (with the status it found), every non-200 reply, and the heavy waves' start times
against the ideal's (one wave per heavy_duration). Timings are from the run's first request.

  tools/bench/b1_trace.py naive-proxy               # heavy profile, seed 1
  tools/bench/b1_trace.py sdk-proxy+expected --seed 3 --profile budget --all

Builds like the benches (HIAPI_BENCH_NO_BUILD=1 skips it). The log and the proxy's files stay in the printed directory (--keep) for a closer look.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402
import b1_goodput as b1  # noqa: E402


def parse(log_text):
    """@return [(t_request, method, uri, status, task_id, model, task_status)] in request order.

    The simulator answers in order on its one thread, so the n-th reply line belongs to the n-th
    request line still open."""
    pending, out = [], []
    for line in log_text.splitlines():
        if not line.startswith("hiapi-sim: "):
            continue
        f = line[len("hiapi-sim: "):].split()
        if len(f) < 2 or not f[0][0].isdigit():
            continue
        t = float(f[0])
        if f[1] != "->":
            pending.append((t, f[1], f[2] if len(f) > 2 else ""))
            continue
        if not pending:
            continue
        t_req, method, uri = pending.pop(0)
        rest = f[3:] + ["", "", ""]
        out.append((t_req, method, uri, int(f[2]), rest[0], rest[1], rest[2]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("row", help="a b1_goodput.py row, e.g. naive-proxy or sdk-proxy+expected")
    ap.add_argument("--profile", default="heavy", choices=sorted(b1.PROFILES))
    ap.add_argument("--seed", type=int, default=1, help="the load generator's seed")
    ap.add_argument("--min-poll", default="1s", help="hiapi-proxy tiers' min_poll_interval")
    ap.add_argument("--max-duration", type=int, default=240, help="bound of the run, seconds")
    ap.add_argument("--all", action="store_true", help="print light tasks' requests too")
    ap.add_argument("--keep", action="store_true", help="keep the run's directory")
    ap.add_argument("--limiter", default="token-bucket", help="the simulator's limiter shape")
    ap.add_argument("--ratelimit-headers", default="off", help="the simulator's X-RateLimit-*")
    ap.add_argument("--jitter", default="0", help="the simulator's arrival jitter, e.g. 10ms")
    ap.add_argument("--latency", default="0",
                    help="the simulator's latency before each request is counted, e.g. 50ms")
    ap.add_argument("--sim-seed", type=int, default=7,
                    help="the simulator's seed (b1_matrix.py uses 6 + repetition with drawn run times)")
    ap.add_argument("--durations", default="fixed",
                    help="task run times: fixed, uniform:J or lognormal:S (b1_goodput.py's)")
    ap.add_argument("--burst-margin", type=int, default=0,
                    help="hiapi-proxy's burst = the simulator's minus this")
    args = ap.parse_args()

    bl.build()
    p = b1.PROFILES[args.profile]
    with bl.Stack(keep=args.keep) as st:
        sim = st.sim(b1.sim_flags(p, args) + ["--verbose"])
        report = b1.run_row(args.row, p, sim, args, seed=args.seed)
        sim.stop()
        with open(sim.log_path, errors="replace") as f:
            events = parse(f.read())
        where = st.dir
    if not events:
        sys.exit("no requests in the simulator's log")

    t0 = events[0][0]
    heavy_s = p["heavy_s"]
    model = {}
    for _, method, uri, status, tid, mod, _ in events:
        if tid and mod:
            model[tid] = mod
    heavy = {tid for tid, m in model.items() if is_heavy(m)}
    created, ended = {}, {}
    print("makespan %.2f s (ideal %.1f s), %s" % (report["makespan_s"], b1.ideal(p),
                                                 where if args.keep else "log removed"))
    print("%8s  %-6s %-5s %-8s %-4s %s" % ("t (s)", "what", "tier", "task", "http", "status"))
    for t_req, method, uri, status, tid, mod, tstatus in events:
        t = t_req - t0
        if uri.startswith("/__"):
            continue
        if method == "POST" and uri == "/v1/tasks":
            what = "create"
            if status == 200 and tid:
                created.setdefault(tid, t)
        elif method == "GET" and uri.startswith("/v1/tasks/"):
            what, tid = "look", uri.rsplit("/", 1)[-1]
            if tstatus in ("success", "fail"):
                ended.setdefault(tid, t)
        else:
            what = method.lower()
        heavy_task = tid in heavy
        if heavy_task or args.all or status != 200:
            print("%8.3f  %-6s %-5s %-8s %-4d %s" % (t, what, "heavy" if heavy_task else "light",
                                                     tid[-8:], status, tstatus))
    starts = sorted(created[t] for t in heavy if t in created)
    print("\nheavy waves (ceiling %d, %d s each): start vs ideal" % (p["heavy_max"], heavy_s))
    for i in range(0, len(starts), p["heavy_max"]):
        wave = starts[i:i + p["heavy_max"]]
        ideal = (i // p["heavy_max"]) * heavy_s
        print("  wave %d: %s  (ideal %d s; late %s)" % (
            i // p["heavy_max"] + 1, " / ".join("%.2f" % s for s in wave), ideal,
            " / ".join("%+.2f" % (s - ideal) for s in wave)))
    late = [ended[t] - created[t] - heavy_s for t in heavy if t in ended and t in created]
    if late:
        print("heavy end seen after its true end: mean %.3f s, worst %.3f s" %
              (sum(late) / len(late), max(late)))
    # Looks that found their task still running: each cost a token and learned only that.
    wasted = {}
    for t_req, method, uri, status, tid, mod, tstatus in events:
        if method == "GET" and uri.startswith("/v1/tasks/") and status == 200 and \
                tstatus not in ("success", "fail"):
            task = uri.rsplit("/", 1)[-1]
            if task in created:
                wasted.setdefault(task, []).append(t_req - t0 - created[task])
    order = sorted(wasted, key=lambda k: created[k])
    print("\nlooks that found the task running: %d, at ages (s) by task in create order:" %
          sum(len(v) for v in wasted.values()))
    for task in order:
        print("  %7.2f %-5s %s: %s" % (created[task], "heavy" if task in heavy else "light",
                                       task[-8:], " ".join("%.2f" % a for a in wasted[task])))


def is_heavy(model):
    """The simulator's default heavy models (its --heavy-max applies to them): video and pro."""
    return model.startswith(("seedance-", "wan2.7-video/", "happyhorse-", "veo-", "kling-",
                             "hailuo-")) or model.endswith(("@pro", "-pro"))


if __name__ == "__main__":
    main()
