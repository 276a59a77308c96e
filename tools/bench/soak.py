#!/usr/bin/env python3
"""Soak: hours-long health of one proxy under mixed load, upstream faults and reloads.

One hiapi-sim (faults: --fault-5xx and --fault-reset, 5 % of /v1 requests in all by default;
lognormal task durations) and one hiapi-proxy (state file, deferred journal, admin listener).
Two load streams run back to back rounds of hiapi-load, half a round apart, so the load never
stops: each round mixes naive clients (no cap, 200 ms polls), guide clients (backoff, 2-5 s
polls) and SDK-like clients (3 s polls). The proxy gets SIGHUP every --reload-every with a
harmless setting toggled, so every reload really changes the configuration.

Every --sample seconds: resident memory, open file descriptors, client connections and queue
depth of the proxy. At the end, the slope of memory per hour after the run's first fifth
(warm-up: pools, caches and buffers filling) and over its last half, and the descriptors open
while almost no client is connected (they follow the load; a leak shows there).

Pass (exit 0) when: the proxy never died (0 crashes) and stops cleanly on SIGTERM, every client
request was answered, no task was left unfinished, the simulator saw 0 duplicate creations, and
every reload was applied. Slopes are reported, not judged: a trend needs a human's eye.

Usage: soak.py [--duration 30m] [--sample 10] [--reload-every 60] [--faults 0.05] [--csv PATH]
"""

import argparse
import json
import os
import re
import signal
import subprocess
import threading
import time

import benchlib as bl

SIM_RATE = "10/s"
SIM_BURST = 20


def parse_duration(s):
    m = re.fullmatch(r"([0-9.]+)(ms|s|m|h)?", s)
    if not m:
        raise SystemExit("soak: bad duration %r" % s)
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def slope_per_hour(samples, field, skip=0.2):
    """Least-squares slope of samples[field] over samples['t'], per hour, after the first
    @p skip of the run."""
    if len(samples) < 5:
        return None
    tail = samples[int(len(samples) * skip):]
    ts = [s["t"] for s in tail]
    ys = [s[field] for s in tail]
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return None
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var * 3600


def metric_sum(text, name, label_filter=""):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and label_filter in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def proxy_config(sim_port, st, toggle):
    extra = """tasks:
  state_file: %s
  state_save_interval: 5s
deferred:
  journal: %s
retry:
  budget_ratio: %s
""" % (st.path("tasks.state"), st.path("deferred.journal"), "0.25" if toggle else "0.2")
    return bl.proxy_yaml(sim_port, SIM_RATE, SIM_BURST, 4, 8, min_poll="2s", extra=extra)


def load_round(target, sim_url, seed, round_s):
    """One round of mixed clients; returns hiapi-load's report."""
    groups = [
        "name=naive,clients=2,tasks=8,preset=naive,heavy=0.2",
        "name=guide,clients=3,tasks=8,preset=guide,heavy=0.2",
        "name=sdk,clients=2,tasks=8,preset=sdk,heavy=0.2,interval=1s",
    ]
    args = ["--seed", str(seed), "--max-duration", "%ds" % round_s]
    for g in groups:
        args += ["--group", g]
    return bl.run_load(target, args, timeout=round_s + 120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", default="30m")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--reload-every", type=float, default=60.0, help="seconds between SIGHUPs")
    ap.add_argument("--faults", type=float, default=0.05,
                    help="share of upstream requests that fail (half 5xx, half reset)")
    ap.add_argument("--round", default="240s", help="bound of one load round")
    ap.add_argument("--csv", help="write the samples here")
    ap.add_argument("--reports", help="write every round's hiapi-load report here (JSON)")
    args = ap.parse_args()
    duration = parse_duration(args.duration)
    round_s = int(parse_duration(args.round))
    bl.build()
    bl.print_header("Soak: mixed load, upstream faults and reloads", {
        "duration": args.duration,
        "upstream": "hiapi-sim %s burst %d, heavy 4 / light 8 running, %.1f %% faults "
                    "(5xx + reset), lognormal durations" % (SIM_RATE, SIM_BURST,
                                                            args.faults * 100),
        "load": "2 streams of rounds: 2 naive + 3 guide + 2 sdk clients x 8 tasks, 20 % heavy",
        "reloads": "SIGHUP every %.0f s, retry.budget_ratio toggled" % args.reload_every,
    })
    with bl.Stack() as st:
        half = args.faults / 2
        sim = st.sim(["--rate", SIM_RATE, "--burst", str(SIM_BURST), "--heavy-max", "4",
                      "--light-max", "8", "--heavy-duration", "6s", "--light-duration", "2s",
                      "--duration-dist", "lognormal", "--fault-5xx", "%g" % half,
                      "--fault-reset", "%g" % half, "--seed", "7"])
        proxy = st.proxy(proxy_config(sim.port, st, False))
        cfg_path = st.path("proxy.yaml")
        admin = "http://127.0.0.1:%d" % proxy.admin_port
        pid = proxy.p.pid

        stop = threading.Event()
        reports, errors = [], []
        lock = threading.Lock()
        t_start = time.monotonic()

        def stream(index):
            seed = 1000 * (index + 1)
            if index == 1:
                stop.wait(round_s / 4)
            while not stop.is_set() and time.monotonic() - t_start < duration:
                seed += 1
                try:
                    rep = load_round(proxy.url, sim.url, seed, round_s)
                    with lock:
                        reports.append(rep)
                except Exception as e:  # noqa: BLE001 (a failed round is a finding, not a crash)
                    with lock:
                        errors.append(str(e)[:300])

        streams = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(2)]
        for t in streams:
            t.start()

        samples, crashed, hups = [], False, 0
        next_hup = t_start + args.reload_every
        while time.monotonic() - t_start < duration:
            time.sleep(min(args.sample, max(0.0, next_hup - time.monotonic())) or args.sample)
            now = time.monotonic()
            if not proxy.alive():
                crashed = True
                bl.log("soak: the proxy died: " + proxy.tail())
                break
            if now >= next_hup:
                hups += 1
                with open(cfg_path, "w") as f:
                    f.write(proxy_config(sim.port, st, hups % 2 == 1))
                os.kill(pid, signal.SIGHUP)
                next_hup += args.reload_every
                continue
            try:
                metrics = bl.http("GET", admin + "/metrics")[1].decode()
                with open("/proc/%d/status" % pid) as f:
                    rss_kib = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
                s = {"t": now - t_start, "rss_kib": rss_kib,
                     "fds": len(os.listdir("/proc/%d/fd" % pid)),
                     "conns": metric_sum(metrics, "hiapi_proxy_client_connections"),
                     "queue": metric_sum(metrics, "hiapi_proxy_queue_depth", 'tier="all"')}
                samples.append(s)
                bl.log("soak: t=%5.0fs rss=%6d KiB fds=%3d conns=%3.0f queue=%3.0f rounds=%d" % (
                    s["t"], s["rss_kib"], s["fds"], s["conns"], s["queue"], len(reports)))
            except (OSError, AttributeError) as e:
                bl.log("soak: sample failed: %s" % e)
        stop.set()
        for t in streams:
            t.join(timeout=round_s + 180)
        metrics = "" if crashed else bl.http("GET", admin + "/metrics")[1].decode()
        reloads_ok = metric_sum(metrics, "hiapi_proxy_config_reloads_total", 'result="ok"')
        stats = json.loads(bl.http("GET", sim.url + "/__stats")[1])
        clean_exit = False
        if not crashed:
            proxy.p.send_signal(signal.SIGTERM)
            try:
                clean_exit = proxy.p.wait(timeout=90) == 0
            except subprocess.TimeoutExpired:
                clean_exit = False

    def tot(path):
        total = 0
        for r in reports:
            v = r
            for k in path:
                v = v.get(k, 0) if isinstance(v, dict) else 0
            total += v or 0
        return total

    tasks_ok = tot(["tasks", "success"]) + tot(["tasks", "fail"])
    unfinished = tot(["tasks", "unfinished"])
    create_failed = tot(["tasks", "create_failed"])
    no_answer = tot(["requests", "no_answer"])
    rss = [s["rss_kib"] for s in samples]
    fds = [s["fds"] for s in samples]
    queue = [s["queue"] for s in samples]
    idle_fds = [s["fds"] for s in samples if s["conns"] <= 5]
    rows = [
        ["run", "%.0f s, %d rounds, %d round errors" % (time.monotonic() - t_start, len(reports),
                                                         len(errors))],
        ["client requests", "%d (%d client 429s, %d no answer)" % (
            tot(["requests", "total"]), tot(["requests", "status_429"]), no_answer)],
        ["tasks", "%d ended (%d success), %d create failed, %d unfinished" % (
            tasks_ok, tot(["tasks", "success"]), create_failed, unfinished)],
        ["upstream", "%s requests, %s tasks created, %s duplicates, %s 429s" % (
            stats.get("requests", {}).get("total"), stats.get("tasks_created"),
            stats.get("duplicate_creations"), json.dumps(stats.get("rejected_429")))],
        ["reloads", "%d SIGHUP, %.0f applied" % (hups, reloads_ok)],
        ["crashes", "%d; clean exit on SIGTERM: %s" % (1 if crashed else 0, clean_exit)],
        ["RSS KiB", "%s-%s, slope %s KiB/h after the first fifth, %s KiB/h over the last half" % (
            min(rss, default="-"), max(rss, default="-"),
            bl.fmt(slope_per_hour(samples, "rss_kib"), "%.0f"),
            bl.fmt(slope_per_hour(samples, "rss_kib", 0.5), "%.0f"))],
        # Descriptors follow the load (client and upstream connections); a leak shows in the
        # samples taken while almost no client is connected.
        ["open fds", "%s-%s; %s-%s when at most 5 clients are connected" % (
            min(fds, default="-"), max(fds, default="-"),
            min(idle_fds, default="-"), max(idle_fds, default="-"))],
        ["queue depth", "max %s" % bl.fmt(max(queue, default=None), "%.0f")],
    ]
    print(bl.table(["measure", "value"], rows))
    for e in errors[:5]:
        print("round error: " + e)
    if args.reports:
        with open(args.reports, "w") as f:
            json.dump(reports, f)
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("t,rss_kib,fds,conns,queue\n")
            for s in samples:
                f.write("%.1f,%d,%d,%.0f,%.0f\n" % (s["t"], s["rss_kib"], s["fds"], s["conns"],
                                                     s["queue"]))
    dup = stats.get("duplicate_creations") or 0
    ok = (not crashed and clean_exit and no_answer == 0 and unfinished == 0 and dup == 0 and
          not errors and reloads_ok == hups)
    print("soak: %s" % ("PASS" if ok else "FAIL"))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
