"""Summarises a bench/run results file: one row per scenario with the medians of Tally and the
baseline, their ratio (median and range over rounds), and the CPU per command of each process."""
import re
import statistics
import sys

path, clk_tck, quick = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
PROCS = ["nats", "ingress", "worker", "postgres", "peer"]
runs = {}  # (scenario, system) -> list of dicts
failures = []
for line in open(path):
    if line.startswith("#") or "RESULT" not in line:
        continue
    scenario, system = line.split()[:2]
    groups = dict(re.findall(r"(\w+)\[([^\]]*)\]", line))
    counts = lambda name: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", groups.get(name, ""))}
    before, after = counts("before"), counts("after")
    shape_before, shape_after = counts("batching_before"), counts("batching_after")
    plain = re.sub(r"\w+\[[^\]]*\]", " ", line)
    kv = dict(re.findall(r"(\w+)=([\d.]+)", plain))
    run = {k: float(v) for k, v in kv.items()}
    delta = {k: shape_after.get(k, 0) - shape_before.get(k, 0) for k in shape_after}
    run["per_publish"] = delta.get("published", 0) / max(delta.get("publishes", 0), 1)
    run["per_batch"] = delta.get("applied", 0) / max(delta.get("batches", 0), 1)
    run["full_share"] = delta.get("full_batches", 0) / max(delta.get("batches", 0), 1)
    commands = run["requests"]
    if scenario == "batch":
        # Every operation is a command; the rate is what was applied.
        commands = max(run.get("applied", 0), 1)
        run["rate"] = run["applied"] / max(run["applied_ms"], 1) * 1000
        expected = run["requests"] * run["ops"]
        if run["applied"] < expected:
            failures.append(f"batch: {expected:.0f} operations answered, {run['applied']:.0f} applied")
    elif (scenario == "async" or scenario.startswith("scaleout-")) and system == "tally":
        commands = max(run.get("applied", 0), 1)
        run["rate"] = run["applied"] / max(run["applied_ms"], 1) * 1000
        if run["applied"] < run["requests"]:
            failures.append(f"async: {run['requests']:.0f} accepted, {run['applied']:.0f} applied")
    else:
        run["rate"] = run["rps"]
    for proc in PROCS:
        run["us_" + proc] = (after.get(proc, 0) - before.get(proc, 0)) * 1e6 / clk_tck / max(commands, 1)
    run["us_wrk"] = run.get("wrk_ticks", 0) * 1e6 / clk_tck / max(run["requests"], 1)
    for counter in ["broker_out_bytes", "broker_out_msgs", "broker_in_bytes", "broker_in_msgs"]:
        run[counter + "_per_cmd"] = delta.get(counter, 0) / max(commands, 1)
    if run.get("non2xx", 0) or run.get("sock_errors", 0):
        failures.append(f"{scenario} {system}: {run.get('non2xx', 0):.0f} non-2xx, {run.get('sock_errors', 0):.0f} socket errors")
    runs.setdefault((scenario, system), []).append(run)

med = lambda xs: statistics.median(xs) if xs else float("nan")
print()
print("| scenario | peer-direct /s (p99 ms) | Tally /s (p99 ms) | ratio (range) | Tally µs CPU per command: nats / ingress / worker / postgres | peer µs: service / postgres | wrk µs per request: Tally / peer | Tally commands per publish / per apply batch |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for scenario in ["sync-10k", "sync-hot", "async", "balance"]:
    t, p = runs.get((scenario, "tally"), []), runs.get((scenario, "peer"), [])
    if not t or not p:
        continue
    ratios = [a["rate"] / b["rate"] for a, b in zip(t, p) if b["rate"]]
    extra = f", accepted {med([r['rps'] for r in t]):,.0f}/s, apply lag p99 {med([r['lag_p99_ms'] for r in t]):,.0f} ms" if scenario == "async" else ""
    print(f"| {scenario} | {med([r['rate'] for r in p]):,.0f} ({med([r['p99_ms'] for r in p]):.1f}) "
          f"| {med([r['rate'] for r in t]):,.0f} ({med([r['p99_ms'] for r in t]):.1f}){extra} "
          f"| {med([r['rate'] for r in t]) / med([r['rate'] for r in p]):.2f}x ({min(ratios):.2f}–{max(ratios):.2f}) "
          f"| {' / '.join(f'{med([r[chr(117) + chr(115) + chr(95) + q] for r in t]):.0f}' for q in ['nats', 'ingress', 'worker', 'postgres'])} "
          f"| {med([r['us_peer'] for r in p]):.0f} / {med([r['us_postgres'] for r in p]):.0f} "
          f"| {med([r['us_wrk'] for r in t]):.0f} / {med([r['us_wrk'] for r in p]):.0f} "
          f"| {med([r['per_publish'] for r in t]):.1f} / {med([r['per_batch'] for r in t]):.1f} |")
batches = runs.get(("batch", "tally"), [])
if batches:
    singles = runs.get(("sync-10k", "tally"), [])
    peers = runs.get(("sync-10k", "peer"), [])
    vs = lambda others: (f"{med([r['rate'] for r in batches]) / med([r['rate'] for r in others]):.2f}x"
                         if others else "n/a")
    print(f"| batch of {batches[0]['ops']:.0f} deducts | {med([r['rate'] for r in peers]):,.0f} single deducts "
          f"| {med([r['rate'] for r in batches]):,.0f} applied ({med([r['rps'] for r in batches]):,.0f} requests, p99 {med([r['p99_ms'] for r in batches]):.1f}) "
          f"| {vs(peers)} (vs Tally single: {vs(singles)}) "
          f"| {' / '.join(f'{med([r[chr(117) + chr(115) + chr(95) + q] for r in batches]):.1f}' for q in ['nats', 'ingress', 'worker', 'postgres'])} "
          f"| | {med([r['us_wrk'] for r in batches]) / batches[0]['ops']:.1f} per operation "
          f"| {med([r['per_publish'] for r in batches]):.1f} / {med([r['per_batch'] for r in batches]):.1f} |")
events = runs.get(("events", "tally"), [])
if events:
    plain = runs.get(("sync-10k", "tally"), [])
    ratio = med([r["rate"] for r in events]) / med([r["rate"] for r in plain]) if plain else float("nan")
    print(f"| sync-10k with every deduct an event | {med([r['rate'] for r in plain]):,.0f} without an endpoint "
          f"| {med([r['rate'] for r in events]):,.0f} (p99 {med([r['p99_ms'] for r in events]):.1f}), "
          f"delivery lag p50 {med([r['lag_p50_ms'] for r in events]):,.0f} ms, p99 {med([r['lag_p99_ms'] for r in events]):,.0f} ms "
          f"| {ratio:.2f}x of without "
          f"| {' / '.join(f'{med([r[chr(117) + chr(115) + chr(95) + q] for r in events]):.0f}' for q in ['nats', 'ingress', 'worker', 'postgres'])} | | | |")
    for r in events:
        if r["delivered"] < r["events"]:
            failures.append(f"events: {r['events']:.0f} recorded, {r['delivered']:.0f} delivered")
failing = runs.get(("events-failing", "tally"), [])
if failing:
    plain = runs.get(("sync-10k", "tally"), [])
    f = failing[0]
    during = f"{f['rate'] / med([r['rate'] for r in plain]):.2f}x of sync-10k" if plain else ""
    print(f"| receiver failing, then back | | {f['rate']:,.0f}/s while it answered 500 ({during}); "
          f"{f['events']:,.0f} events, {f['refused']:,.0f} attempts refused | drained at {f['drain_per_s']:,.0f} events/s "
          f"({f['drain_ms'] / 1000:.1f} s) | | | | |")
    if f["delivered"] < f["events"]:
        failures.append(f"events-failing: {f['events']:.0f} recorded, {f['delivered']:.0f} delivered")
before, after = runs.get(("growth-before", "tally")), runs.get(("growth-after", "tally"))
if before and after:
    print(f"| growth | | {before[0]['rate']:,.0f} -> {after[0]['rate']:,.0f} /s "
          f"| {after[0]['rate'] / before[0]['rate']:.2f} (after / before) "
          f"| {' / '.join(f'{before[0][chr(117) + chr(115) + chr(95) + q]:.0f}->{after[0][chr(117) + chr(115) + chr(95) + q]:.0f}' for q in ['nats', 'ingress', 'worker', 'postgres'])} | | | |")
scaleout = sorted((int(s.split("-")[1]), r) for (s, system), r in runs.items() if s.startswith("scaleout-"))
if scaleout:
    print()
    print("Scale-out: fire-and-forget deducts, the same load with more workers (medians over rounds;"
          " growth is against 1 worker)")
    print()
    print("| workers | applied /s (apply lag p99 ms) | µs CPU per applied command: nats / ingress / worker / postgres "
          "| commands per publish / per apply batch | broker bytes sent per command (growth) "
          "| broker messages sent per command (growth) | worker µs per command (growth) "
          "| full-path batches | wrk µs per request |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    first = scaleout[0][1]
    base = lambda key: med([r[key] for r in first]) or float("nan")
    for workers, rs in scaleout:
        m = lambda key: med([r[key] for r in rs])
        print(f"| {workers} | {m('rate'):,.0f} ({m('lag_p99_ms'):,.0f}) "
              f"| {' / '.join(f'{m(chr(117) + chr(115) + chr(95) + q):.0f}' for q in ['nats', 'ingress', 'worker', 'postgres'])} "
              f"| {m('per_publish'):.1f} / {m('per_batch'):.1f} "
              f"| {m('broker_out_bytes_per_cmd'):,.0f} ({m('broker_out_bytes_per_cmd') / base('broker_out_bytes_per_cmd'):.2f}x) "
              f"| {m('broker_out_msgs_per_cmd'):.2f} ({m('broker_out_msgs_per_cmd') / base('broker_out_msgs_per_cmd'):.2f}x) "
              f"| {m('us_worker'):.0f} ({m('us_worker') / base('us_worker'):.2f}x) "
              f"| {m('full_share') * 100:.0f} % | {m('us_wrk'):.0f} |")
if failures:
    print("\nFAILED:\n  " + "\n  ".join(failures))
    sys.exit(1)
