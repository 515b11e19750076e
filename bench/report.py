"""Summarises a bench/run results file as one markdown table: per scenario the medians over the
rounds of the baseline and of Tally (rate and p99), the ratio of the medians and its range over
the rounds, and the median CPU per command of each process. Exits 1 when the file records a
failure (FAILED lines, non-2xx answers, socket errors, async answers other than 202).

    python3 bench/report.py bench/results/<timestamp>.txt

Raw lines are `<scenario> <system> key=value ...`, with the CPU of each process in clock ticks
(`cpu_<process>=`) and the tick rate in a `# ... clk_tck=N` header line.
"""
import re
import statistics
import sys

SCENARIOS = ["sync-10k", "sync-hot", "async", "balance"]
TALLY_PROCS = ["nats", "ingress", "worker", "postgres", "wrk"]
PEER_PROCS = ["peer", "postgres", "wrk"]


def number(value):
    try:
        return float(value)
    except ValueError:
        return value


def parse(path):
    clk_tck, runs, failures, history = 100, {}, [], []
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if line.startswith("#"):
            if m := re.search(r"clk_tck=(\d+)", line):
                clk_tck = int(m.group(1))
            if m := re.match(r"# history: (\d+) commands", line):
                history.append(int(m.group(1)))
            continue
        if line.startswith("FAILED "):
            failures.append(line[len("FAILED "):])
            continue
        words = line.split()
        if len(words) < 3 or "=" in words[0] or "=" in words[1] or "=" not in words[2]:
            continue
        scenario, system = words[:2]
        run = {k: number(v) for k, v in re.findall(r"(\w+)=(\S+)", line)}
        runs.setdefault((scenario, system), []).append(run)
    return clk_tck, runs, failures, history


def derive(scenario, system, run, clk_tck, failures):
    """Adds the run's rate and its CPU per command (µs) of each process."""
    if scenario == "async" and system == "tally":
        # What was applied, per second from the start of the run until the last was applied.
        commands = run.get("applied", 0)
        run["rate"] = commands * 1000 / run["applied_ms"] if run.get("applied_ms") else 0.0
    else:
        commands = run.get("requests", 0)
        run["rate"] = run.get("rps", 0.0)
    for key in [k for k in run if k.startswith("cpu_")]:
        run["us_" + key[4:]] = run[key] * 1e6 / clk_tck / commands if commands else float("nan")
    what = f"{scenario} {system} round {run.get('round', 0):.0f}"
    if run.get("non2xx"):
        failures.append(f"{what}: {run['non2xx']:.0f} non-2xx answers")
    if run.get("sock_errors"):
        failures.append(f"{what}: {run['sock_errors']:.0f} socket errors (connect, read, write, timeout)")
    if run.get("non202"):
        failures.append(f"{what}: {run['non202']:.0f} answers other than 202")


def median(runs, key):
    values = [r[key] for r in runs if isinstance(r.get(key), float)]
    return statistics.median(values) if values else float("nan")


def cpu(runs, procs):
    """'a + b + c = sum [machine]': medians of µs per command; the machine's busy time per
    command in brackets, as a cross-check of the sum (it also holds anything else running)."""
    parts = [median(runs, "us_" + p) for p in procs]
    return (" + ".join(f"{x:.0f}" for x in parts)
            + f" = **{sum(parts):.0f}** [{median(runs, 'us_machine'):.0f}]")


def main():
    path = sys.argv[1]
    clk_tck, runs, failures, history = parse(path)
    for (scenario, system), rs in runs.items():
        for run in rs:
            derive(scenario, system, run, clk_tck, failures)

    rows = []
    for scenario in SCENARIOS:
        tally, peer = runs.get((scenario, "tally"), []), runs.get((scenario, "peer"), [])
        if not tally or not peer:
            continue
        # Each round's Tally run against the baseline's run of the same round.
        peer_by_round = {p["round"]: p["rate"] for p in peer}
        ratios = [t["rate"] / peer_by_round[t["round"]] for t in tally
                  if peer_by_round.get(t["round"])]
        peer_rate, tally_rate = median(peer, "rate"), median(tally, "rate")
        if scenario == "async":
            tally_cell = (f"{tally_rate:,.0f} applied/s (accepted {median(tally, 'rps'):,.0f}/s, "
                          f"p99 {median(tally, 'p99_ms'):.1f} ms; apply lag p99 "
                          f"{median(tally, 'lag_p99_ms'):,.0f} ms)")
        else:
            tally_cell = f"{tally_rate:,.0f} ({median(tally, 'p99_ms'):.1f} ms)"
        rows.append([
            scenario,
            f"{peer_rate:,.0f} ({median(peer, 'p99_ms'):.1f} ms)",
            tally_cell,
            f"**{tally_rate / peer_rate:.2f}x**" if peer_rate else "-",
            f"{min(ratios):.2f}–{max(ratios):.2f}" if ratios else "-",
            cpu(tally, TALLY_PROCS),
            cpu(peer, PEER_PROCS),
        ])
    before, after = runs.get(("growth-before", "tally")), runs.get(("growth-after", "tally"))
    if before and after:
        b, a = before[0], after[0]
        grown = f" ({history[0]:,} → {history[-1]:,} commands)" if len(history) >= 2 else ""
        rows.append([
            "growth: sync-10k, fresh → grown" + grown,
            "",
            f"{b['rate']:,.0f} ({b['p99_ms']:.1f} ms) → {a['rate']:,.0f} ({a['p99_ms']:.1f} ms)",
            f"**{a['rate'] / b['rate']:.2f}** after / before" if b["rate"] else "-",
            "",
            f"{cpu(before, TALLY_PROCS)} → {cpu(after, TALLY_PROCS)}",
            "",
        ])

    header = ["scenario", "peer-direct /s (p99)", "Tally /s (p99)", "Tally / peer",
              "range over rounds",
              "Tally µs CPU per command: nats + ingress + worker + postgres + wrk = sum [machine]",
              "peer µs CPU per command: peer + postgres + wrk = sum [machine]"]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print("Medians over the rounds. async: Tally's applied/s (from the start of the run until the "
          "last command was applied) against the baseline's synchronous deducts/s; its CPU is per "
          "applied command, counted until the last was applied.")
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
