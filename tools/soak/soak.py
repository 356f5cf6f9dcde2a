#!/usr/bin/env python3
"""Soak a running Sprout server: CLIENTS concurrent clients for SECONDS, each posting one
256x256 generation after another (honouring Retry-After on a 429, as a well-behaved client
does), while the resident memory of the given processes is sampled.

    soak.py URL SECONDS CLIENTS PID[,PID...]

Prints answers by status, the latency percentiles of the 200s, and each process's resident
memory after a first image, once under load and at the end; the last line is JSON.
Standard library only."""
import http.client, json, sys, threading, time, urllib.parse


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    url, seconds, clients, pids = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    pids = [int(p) for p in pids.split(",") if p]
    u = urllib.parse.urlparse(url)
    body = json.dumps({"prompt": "a red circle above a blue square", "size": "256x256", "seed": 1, "steps": 4})
    lock = threading.Lock()
    statuses, lat, errors = {}, [], []
    stop = time.monotonic() + seconds

    def client(k):
        conn = None
        while time.monotonic() < stop:
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
                conn.request("POST", "/v1/images/generations", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                dt = time.monotonic() - t0
                with lock:
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                    if r.status == 200:
                        if not json.loads(data)["data"][0]["b64_json"]:
                            errors.append("empty image")
                        lat.append(dt)
                if r.status == 429:
                    time.sleep(float(r.getheader("Retry-After", "1")))
                elif r.status >= 500:
                    with lock:
                        errors.append(f"{r.status}: {data[:200]!r}")
            except Exception as e:  # a reset connection is a failure to report, not to hide
                with lock:
                    errors.append(f"client {k}: {e!r}")
                conn = None
                time.sleep(0.5)

    # A first image, then the starting memory.
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    c.request("POST", "/v1/images/generations", body, {"Content-Type": "application/json"})
    assert c.getresponse().status == 200, "the first request failed"
    rss0 = {p: rss(p) for p in pids}
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    # Memory once the load has run a fifth of the time (at most a minute): what 64 open
    # connections and their buffers take, before any growth that would be a leak.
    time.sleep(min(60.0, seconds / 5))
    rss_warm = {p: rss(p) for p in pids}
    # Then every 30 s: a leak grows steadily, allocator fragmentation levels off.
    series = {p: [round(rss_warm[p] / 2**20, 1)] for p in pids}
    while any(t.is_alive() for t in threads):
        time.sleep(1.0)
        if int(time.monotonic() - t0) % 30 == 0:
            for p in pids:
                series[p].append(round(rss(p) / 2**20, 1))
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    rss1 = {p: rss(p) for p in pids}
    lat.sort()
    pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None
    out = {
        "seconds": round(wall, 1),
        "clients": clients,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "images_per_s": round(statuses.get(200, 0) / wall, 2),
        "p50_s": pct(0.5),
        "p99_s": pct(0.99),
        "errors": len(errors),
        # Per process: MB after the first image, MB under load, MB at the end, and the
        # growth from under load to the end in per cent.
        "rss_series_mb": {str(p): v for p, v in series.items()},
        "rss_mb": {str(p): [round(rss0[p] / 2**20, 1), round(rss_warm[p] / 2**20, 1), round(rss1[p] / 2**20, 1), round(100 * (rss1[p] / rss_warm[p] - 1), 2)] for p in pids},
    }
    for e in errors[:10]:
        print("error:", e)
    print(f"{out['statuses']} in {out['seconds']} s; 200s p50 {out['p50_s']} s, p99 {out['p99_s']} s")
    for p, (a, w, b, g) in out["rss_mb"].items():
        print(f"pid {p}: {a} MB after the first image, {w} MB under load, {b} MB at the end ({g:+.2f} %)")
    print(json.dumps(out))


main()
