"""The ideal makespan of a B1 workload against one gateway shape: what a client that knows
every task's end and the gateway's state exactly would reach.

b1_goodput.ideal() is a lower bound made of three separate limits (the heavy waves, the light
waves, two requests per task on the budget). It counts each alone, so it misses what they cost
together: when a wave of tasks ends at once, its looks and its next creates all need tokens at
that moment, and a bucket of `burst` cannot give them all at once. Against a window (fixed or
sliding) the same wave may also have to wait for the window to turn. No client, however it
polls, can do better than a schedule that sees each end the moment it happens; this module
computes such a schedule, greedily:

- every task is asked for at time 0 (the clients' creates all come at once) in the order the
  load generator starts them;
- a task needs one admitted request to be created (when its tier has a free slot) and one to be
  seen ended (the look that frees its slot); a look is sent at the task's end, never before;
- whenever the gateway admits a request, the most useful one goes: a create into a free slot
  before a look, heavy before light (the heavy ceiling is the scarcer), older first; and a
  light one goes only if it does not delay the requests the next heavy end will need (its
  look, and the create of the next heavy task), which the client knows are coming;
- the gateway's limiter is the simulator's (tools/hiapi_sim/sim_limits.cc); a fixed window's
  grid starts where the run's first request fell in it (the simulator's /__stats says, as
  window_phase_ms), or at the run's start when that is not given. The phase moves the ideal:
  for B1's budget and light workloads a run that begins 0.9 of a window in ends 0.9 s sooner
  than one that begins at a window's start (its first window turns early: a burst more).
The makespan is the time of the last look. Greedy is not always optimal, so this is an
achievable target rather than a bound. With fixed run times it is never below
b1_goodput.ideal(), except against a fixed window that a run begins late in (b1_goodput.ideal()
counts a bucket's burst once; such a window gives one more soon after the start).
"""

import collections
import copy
import heapq
import math


class Bucket:
    """Token bucket (and GCRA, its equivalent): `burst` at once, `rate` per second."""

    def __init__(self, rate, burst):
        self.rate, self.burst, self.tokens, self.t = rate, burst, float(burst), 0.0

    def _refill(self, t):
        self.tokens = min(self.burst, self.tokens + (t - self.t) * self.rate)
        self.t = t

    def next_allowed(self, t):
        self._refill(t)
        return t if self.tokens >= 1 - 1e-9 else t + (1 - self.tokens) / self.rate

    def take(self, t):
        self._refill(t)
        self.tokens -= 1


class FixedWindow:
    """`burst` requests per window of burst / rate seconds; time 0 lies @p phase seconds into
    its window."""

    def __init__(self, rate, burst, phase=0.0):
        self.w, self.limit, self.index, self.count = burst / rate, burst, -1, 0
        self.phase = phase

    def next_allowed(self, t):
        i = math.floor((t + self.phase) / self.w + 1e-9)
        if i != self.index or self.count < self.limit:
            return t
        return (i + 1) * self.w - self.phase

    def take(self, t):
        i = math.floor((t + self.phase) / self.w + 1e-9)
        if i != self.index:
            self.index, self.count = i, 0
        self.count += 1


class SlidingWindow:
    """At most `burst` requests in any (t - W, t], W = burst / rate."""

    def __init__(self, rate, burst):
        self.w, self.limit, self.log = burst / rate, burst, collections.deque()

    def next_allowed(self, t):
        while self.log and self.log[0] <= t - self.w + 1e-9:
            self.log.popleft()
        return t if len(self.log) < self.limit else self.log[0] + self.w

    def take(self, t):
        self.log.append(t)


LIMITERS = {"token-bucket": Bucket, "gcra": Bucket, "fixed-window": FixedWindow,
            "sliding-window": SlidingWindow}


def tasks_of(p):
    """The workload's tasks as (heavy, duration) in start order, heavy ones spread as the load
    generator spreads them (per group)."""
    share = p["heavy_share"]
    sizes = [n * p["tasks"] for _, n in p["groups"]] if "groups" in p else [p["clients"] * p["tasks"]]
    out = []
    for n in sizes:
        for i in range(n):
            heavy = math.floor((i + 1) * share) > math.floor(i * share)
            out.append((heavy, p["heavy_s"] if heavy else p["light_s"]))
    return out


def schedule(p, limiter, durations=None, phase=0.0):
    """@return the makespan (s) of the greedy omniscient schedule of profile @p p against the
    gateway shape @p limiter (a LIMITERS name).
    @param durations each tier's run times in creation order, as the simulator's /__stats gives
           them ({"heavy": [ms...], "light": [ms...]}): the n-th task of a tier the schedule
           creates runs the simulator's n-th of that tier (it draws them per tier, in creation
           order, afresh at every reset). None: every task its tier's configured duration.
    @param phase how far into its window the run began (s), against a fixed window."""
    if limiter == "fixed-window":
        gate = FixedWindow(p["rate"], p["burst"], phase)
    else:
        gate = LIMITERS[limiter](p["rate"], p["burst"])
    free = {True: p["heavy_max"], False: p["light_max"]}
    waiting = {True: collections.deque(), False: collections.deque()}
    for i, (heavy, d) in enumerate(tasks_of(p)):
        if durations is not None:
            drawn = durations["heavy" if heavy else "light"]
            n = len(waiting[heavy])
            if n >= len(drawn):
                raise ValueError("fewer run times than %s tasks" % ("heavy" if heavy else "light"))
            d = drawn[n] / 1000.0
        waiting[heavy].append((i, d))
    running = []                      # heap of (end, index, heavy)
    ended = {True: [], False: []}     # heaps of (end, index): ended, not yet seen
    left = sum(len(q) for q in waiting.values())
    t, last = 0.0, 0.0
    for _ in range(100000):  # bounded: every pass admits a request or moves time forward
        if left == 0:
            break
        while running and running[0][0] <= t + 1e-9:
            end, i, heavy = heapq.heappop(running)
            heapq.heappush(ended[heavy], (end, i))
        wants = []
        for heavy in (True, False):
            if waiting[heavy] and free[heavy] > 0:
                wants.append(("create", heavy))
            if ended[heavy]:
                wants.append(("look", heavy))
        if wants:
            at = gate.next_allowed(t)
            if at <= t + 1e-9 and not wants[0][1] and delays_heavy(gate, t, running, waiting):
                # Held back: try again a little later (a refill may make room) or at that end.
                at = min(next_heavy_end(running), t + 0.25 / p["rate"])
            if at <= t + 1e-9:
                what, heavy = wants[0]
                gate.take(t)
                if what == "create":
                    i, d = waiting[heavy].popleft()
                    free[heavy] -= 1
                    heapq.heappush(running, (t + d, i, heavy))
                else:
                    heapq.heappop(ended[heavy])
                    free[heavy] += 1
                    left -= 1
                    last = t
                continue
            nxt = at if not running else min(at, running[0][0])
        else:
            nxt = running[0][0]
        t = max(t, nxt)
    return last


def next_heavy_end(running):
    return min((end for end, _, heavy in running if heavy), default=None)


def delays_heavy(gate, t, running, waiting):
    """@return whether one request admitted at @p t would make the next heavy end's requests
    (a look per task ending then, and as many creates as heavy tasks wait) come later."""
    te = next_heavy_end(running)
    if te is None:
        return False
    n_end = sum(1 for end, _, heavy in running if heavy and end <= te + 1e-6)
    need = n_end + min(n_end, len(waiting[True]))

    def done(g):
        at = te
        for _ in range(need):
            at = g.next_allowed(at)
            g.take(at)
        return at
    with_it = copy.deepcopy(gate)
    with_it.take(t)
    return done(with_it) > done(copy.deepcopy(gate)) + 1e-9
