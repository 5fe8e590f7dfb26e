#!/usr/bin/env python3
"""SQLite push() latency with several producer processes, and W1, before vs after.

    /path/to/python .bench/push_latency.py [--before REV] [--rounds 5]
                                           [--producers 8] [--pushes 2000] [--w1 3000]

Each variant is a dbqueue.py: BEFORE is taken from git (REV, default `main`),
AFTER is this checkout's. In every round, both variants run (their order
alternating round by round, since the machine is shared and noisy):

- contention: P producer processes, started together on a fresh SQLite file,
  each pushing N jobs as fast as it can and timing every push() call;
  p50, p99, max and mean over all P x N pushes, and all of them per second
  (P x N over the slowest producer's time);
- W1: one process pushing M jobs into a fresh file (pushes/s; each push is
  its own commit, at synchronous=FULL).

Prints every round, then the medians over the rounds, side by side ("locked":
pushes that failed with "database is locked" after the busy timeout, summed).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import dbqueue
url, count, start_at, out = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
q = dbqueue.Queue(url)
q.push("bench", {"warm": True})
if sys.argv[6] != "FULL":   # --sync: take the disk out, to compare the code's own cost
    q._conn().execute("PRAGMA synchronous=" + sys.argv[6])
while time.time() < start_at:
    time.sleep(0.001)
clock = time.perf_counter
lat = []
began = clock()
errors = 0
for i in range(count):
    t = clock()
    try:
        q.push("bench", {"n": i, "to": "user%d@example.com" % i})
    except dbqueue.DatabaseError:   # "database is locked": the busy timeout ran out
        errors += 1
    lat.append(clock() - t)
elapsed = clock() - began
with open(out, "w") as fh:
    json.dump({"lat": lat, "elapsed": elapsed, "errors": errors}, fh)
"""


# --workers: processes draining the queue while the producers push, so that
# pushes also wait for the workers' claims and acks.
WORKER = r"""
import sys
sys.path.insert(0, sys.argv[1])
import dbqueue
dbqueue.job("bench")(lambda data: None)
dbqueue.Worker(dbqueue.Queue(sys.argv[2]), ["default"], sleep=0.1,
               log=dbqueue._Log(level="warning")).run()
"""


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def run_producers(code_dir, tmp, producers, pushes, workers=0, sync="FULL"):
    db = os.path.join(tmp, "c.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    url = "sqlite:///" + db
    # Make the file and tables first, so the producers only push.
    subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                    " import dbqueue; dbqueue.Queue(sys.argv[2]).migrate()", code_dir, url],
                   check=True)
    drains = [subprocess.Popen([sys.executable, "-c", WORKER, code_dir, url])
              for _ in range(workers)]
    start_at = time.time() + 1.0 + 0.1 * producers
    outs = [os.path.join(tmp, "p%d.json" % i) for i in range(producers)]
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, code_dir, url, str(pushes),
                               repr(start_at), out, sync]) for out in outs]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit("a producer failed")
    for proc in drains:
        proc.terminate()
        proc.wait()
    lat, errors, longest = [], 0, 0.0
    for out in outs:
        with open(out) as fh:
            result = json.load(fh)
        lat += result["lat"]
        errors += result["errors"]
        longest = max(longest, result["elapsed"])
    return {"p50": percentile(lat, 50) * 1000, "p99": percentile(lat, 99) * 1000,
            "max": max(lat) * 1000, "mean": sum(lat) / len(lat) * 1000, "n": len(lat),
            "errors": errors, "rate": len(lat) / longest}


def run_w1(code_dir, tmp, pushes, sync="FULL"):
    db = os.path.join(tmp, "w1.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    url = "sqlite:///" + db
    subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                    " import dbqueue; dbqueue.Queue(sys.argv[2]).migrate()", code_dir, url],
                   check=True)
    subprocess.run(["sync"])
    out = os.path.join(tmp, "w1.json")
    subprocess.run([sys.executable, "-c", CHILD, code_dir, url, str(pushes), "0", out, sync],
                   check=True)
    with open(out) as fh:
        return pushes / json.load(fh)["elapsed"]


ROW = ("%-14s p50 %5.2f ms  p99 %6.2f ms  max %7.1f ms  mean %5.2f ms  all %5.0f/s"
       "  locked %2d   W1 %5.0f/s")


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="main", help="git revision of the BEFORE dbqueue.py")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--producers", type=int, default=8, help="0: W1 only")
    parser.add_argument("--pushes", type=int, default=2000)
    parser.add_argument("--w1", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=0,
                        help="worker processes draining during the contention run (default 0)")
    parser.add_argument("--sync", choices=("FULL", "NORMAL", "OFF"), default="FULL",
                        help="PRAGMA synchronous of the pushers (default FULL, dbqueue's own);"
                             " OFF takes the disk's fsync out, to compare the code's own cost")
    parser.add_argument("--only", choices=("before", "after"), help="run one variant only")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="dbqueue-push-latency-")
    try:
        dirs = {"after": REPO}
        before = os.path.join(tmp, "before")
        os.mkdir(before)
        with open(os.path.join(before, "dbqueue.py"), "wb") as fh:
            fh.write(subprocess.run(["git", "-C", REPO, "show", args.before + ":dbqueue.py"],
                                    check=True, stdout=subprocess.PIPE).stdout)
        dirs["before"] = before
        names = [args.only] if args.only else ["before", "after"]
        results = {name: [] for name in names}
        print("%d producers x %d pushes, %d workers draining; W1 = %d pushes by one process;"
              " synchronous=%s; SQLite %s" % (args.producers, args.pushes, args.workers, args.w1,
                                              args.sync, __import__("sqlite3").sqlite_version))
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                c = {"p50": 0, "p99": 0, "max": 0, "mean": 0, "rate": 0, "errors": 0}
                if args.producers:
                    c = run_producers(dirs[name], tmp, args.producers, args.pushes, args.workers,
                                      args.sync)
                c["w1"] = run_w1(dirs[name], tmp, args.w1, args.sync)
                results[name].append(c)
                print(ROW % ("round %d %s" % (r + 1, name), c["p50"], c["p99"], c["max"],
                             c["mean"], c["rate"], c["errors"], c["w1"]), flush=True)
        print("median of %d rounds:" % args.rounds)
        for name in names:
            rs = results[name]
            print(ROW % ("  " + name, median([x["p50"] for x in rs]),
                         median([x["p99"] for x in rs]), median([x["max"] for x in rs]),
                         median([x["mean"] for x in rs]), median([x["rate"] for x in rs]),
                         sum(x["errors"] for x in rs), median([x["w1"] for x in rs])))
        if len(names) == 2:
            # Each round ran both, one right after the other: the ratio within
            # a round is less at the mercy of the machine's other load.
            ratios = [a["w1"] / b["w1"] for a, b in zip(results["after"], results["before"])]
            print("  W1 after/before, median of the %d rounds' ratios: %.3f"
                  % (len(ratios), median(ratios)))
    finally:
        shutil.rmtree(tmp, True)


if __name__ == "__main__":
    main()
