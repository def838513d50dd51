"""The suite's report: ``<date>.md`` (tables, targets, machine facts), ``<date>-*.png`` charts that read
without the table, and ``<date>.json`` (every sample) in the output directory."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.results import (
    BARE,
    DIRECT,
    PGBOUNCER,
    POOLER,
    POOLER_DEFAULTS,
    POOLER_METRICS_OFF,
    IdleResult,
    LaunchRound,
    Results,
    Series,
    SlowResult,
    pgbouncer_n,
    pooler_workers,
    to_json,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

KIB, MIB = 1024, 2**20
IDLE_TARGET = 1.5 * KIB
SLOW_TARGET = 64 * MIB
NAMES = {DIRECT: "direct Postgres", PGBOUNCER: "PgBouncer", POOLER: "pooler"}
COLORS = {DIRECT: "#8c8c8c", PGBOUNCER: "#e8862a", POOLER: "#2b6cb0"}
VARIANT_COLORS = ("#90b4dd", "#2b6cb0")
FAMILY_TITLES = {"a": "a. pgbench -S, simple protocol", "b": "b. pgbench -S, extended and prepared protocol",
                 "c": "c. connection churn (-C), SCRAM"}


def name(contender: str) -> str:
    return NAMES.get(contender, contender)


def color(contender: str) -> str:
    return COLORS.get(contender, COLORS[POOLER])


# ==================================================================================================
# Numbers the tables and the targets share
# ==================================================================================================


def ratio(results: Results, key: str, a: str, b: str, what: str = "tps") -> float | None:
    sa, sb = results.pgbench.get(key, {}).get(a), results.pgbench.get(key, {}).get(b)
    ma, mb = (sa.med(what) if sa else None), (sb.med(what) if sb else None)
    return ma / mb if ma is not None and mb else None


def added_latency(results: Results, key: str, contender: str) -> float | None:
    """ms of latency ``contender`` adds over direct Postgres (medians) in scenario ``key``."""
    row = results.pgbench.get(key, {})
    mine, direct = row.get(contender), row.get(DIRECT)
    a, b = (mine.med("lat") if mine else None), (direct.med("lat") if direct else None)
    return a - b if a is not None and b is not None else None


def launch_summary(rounds: Sequence[LaunchRound]) -> dict[str, Any]:
    """Medians over rounds (failures: the worst round; backends: the most)."""
    worst = max(rounds, key=lambda r: r.failures, default=None)
    p50s = [p for r in rounds if (p := r.pct(0.5)) is not None]
    p99s = [p for r in rounds if (p := r.pct(0.99)) is not None]
    errors: dict[str, int] = {}
    for r in rounds:
        for text, count in r.errors.items():
            errors[text] = errors.get(text, 0) + count
    return {
        "rounds": len(rounds),
        "functions": rounds[0].functions if rounds else 0,
        "ok": len(worst.times) if worst else 0,  # in the round with the most failures
        "failures_worst": worst.failures if worst else 0,
        "failures_median": statistics.median([r.failures for r in rounds]) if rounds else 0,
        "p50": statistics.median(p50s) if p50s else None,
        "p99": statistics.median(p99s) if p99s else None,
        "slowest": max((max(r.times) for r in rounds if r.times), default=None),
        "peak_backends": max((r.peak_backends for r in rounds), default=0),
        "errors": errors,
    }


def by_contender(rounds: Sequence[LaunchRound]) -> dict[str, list[LaunchRound]]:
    out: dict[str, list[LaunchRound]] = {}
    for r in rounds:
        out.setdefault(r.contender, []).append(r)
    order = [DIRECT, PGBOUNCER, POOLER]
    return {k: out[k] for k in sorted(out, key=lambda c: order.index(c) if c in order else 9)}


def _x(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}x"


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**missed**")


def targets(results: Results) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows."""
    rows: list[tuple[str, str, str]] = []

    def measured(key: str) -> bool:
        return key in results.pgbench

    r = ratio(results, "a50", POOLER, PGBOUNCER)
    rows.append(("a. -S simple, 50 clients: pooler tps ≥ 1.0x PgBouncer", _x(r) if measured("a50") else "not run",
                 _verdict(None if r is None else r >= 1.0)))
    mine, theirs = added_latency(results, "a1", POOLER), added_latency(results, "a1", PGBOUNCER)
    rows.append(("a. -S simple, 1 client: latency pooler adds over direct ≤ PgBouncer's",
                 f"pooler +{mine * 1000:.0f} µs, PgBouncer +{theirs * 1000:.0f} µs" if mine is not None
                 and theirs is not None else "n/a",
                 _verdict(None if mine is None or theirs is None else mine <= theirs)))
    prepared = results.pgbench.get("b-prepared", {}).get(POOLER)
    bouncer_ext = results.pgbench.get("b-extended", {}).get(PGBOUNCER)
    p, e = (prepared.med() if prepared else None), (bouncer_ext.med() if bouncer_ext else None)
    rows.append(("issue 4: -M prepared, 50 clients: pooler ≥ 1.5x PgBouncer -M extended",
                 _x(p / e if p and e else None), _verdict(None if not p or not e else p / e >= 1.5)))
    bouncer_modes = {k: s.med() for k in ("a50", "b-extended")
                     if (s := results.pgbench.get(k, {}).get(PGBOUNCER)) is not None and s.med()}
    if p and bouncer_modes:
        best_key = max(bouncer_modes, key=lambda k: bouncer_modes[k] or 0)
        best = bouncer_modes[best_key] or 0
        mode = "simple" if best_key == "a50" else "extended"
        rows.append((f"issue 4: -M prepared, 50 clients: pooler ≥ 1.5x PgBouncer's best mode (here {mode})",
                     _x(p / best), _verdict(p / best >= 1.5)))
    r = ratio(results, "s-check", "pooler check=warn", "pooler check=off")
    rows.append(("issue 4: session_state_check = warn costs ≤ 5% tps against off (-S, 50 clients)",
                 f"warn/off = {_x(r, 3)}" if r else results.skipped.get("s", "n/a"),
                 _verdict(None if r is None else r >= 0.95)))
    r = ratio(results, "m-metrics", "pooler metrics on", "pooler metrics off")
    rows.append(("issue 3: metrics and logging on cost ≤ 3% tps against metrics off (-S, 50 clients)",
                 f"on/off = {_x(r, 3)}" if r else results.skipped.get("m", "n/a"),
                 _verdict(None if r is None else r >= 0.97)))
    launch = by_contender(results.launch)
    if POOLER in launch:
        mine_l = launch_summary(launch[POOLER])
        theirs_l = launch_summary(launch[PGBOUNCER]) if PGBOUNCER in launch else None
        p99_ok = None if theirs_l is None or mine_l["p99"] is None or theirs_l["p99"] is None else (
            mine_l["p99"] <= theirs_l["p99"])
        ok = mine_l["failures_worst"] == 0 and (p99_ok is not False)
        text = f"pooler: {mine_l['failures_worst']} failures, p99 {_ms(mine_l['p99'])}"
        if theirs_l is not None:
            text += f"; PgBouncer: {theirs_l['failures_worst']} failures, p99 {_ms(theirs_l['p99'])}"
        rows.append(("d. launch day: 0 failures and p99 ≤ PgBouncer's", text,
                     _verdict(ok if theirs_l is not None or not ok else None)))
    else:
        rows.append(("d. launch day: 0 failures and p99 ≤ PgBouncer's", "not run", _verdict(None)))
    idle = {i.contender: i for i in results.idle}
    if POOLER in idle:
        i = idle[POOLER]
        text = f"{_bytes(i.per_client)} per client ({i.reached:,} held)"
        if PGBOUNCER in idle:
            text += f"; PgBouncer {_bytes(idle[PGBOUNCER].per_client)}"
        rows.append(("e. idle clients: ≤ 1.5 KiB RSS per client", text,
                     _verdict(None if i.per_client is None else i.per_client <= IDLE_TARGET)))
    else:
        rows.append(("e. idle clients: ≤ 1.5 KiB RSS per client", "not run", _verdict(None)))
    slow = {sr.contender: sr for sr in results.slow}
    if POOLER in slow:
        mine_s = slow[POOLER]
        over = mine_s.rss_peak - mine_s.rss_baseline
        text = f"{over / MIB:.1f} MiB over baseline"
        if PGBOUNCER in slow:
            text += f"; PgBouncer {(slow[PGBOUNCER].rss_peak - slow[PGBOUNCER].rss_baseline) / MIB:.1f} MiB"
        rows.append(("f. slow client: pooler peak RSS < 64 MiB over baseline", text, _verdict(over < SLOW_TARGET)))
    else:
        rows.append(("f. slow client: pooler peak RSS < 64 MiB over baseline", "not run", _verdict(None)))
    keys = [k for k in results.pgbench if k.startswith("w-")]
    if keys:
        labels = list(results.pgbench[keys[0]])
        r = ratio(results, keys[0], labels[-1], labels[0])
        rows.append((f"issue 5.4: {labels[-1]} vs workers=1 (no target; 2 cores shared with pgbench)",
                     f"{_x(r)}", "reported"))
    elif "w" in results.skipped:
        rows.append(("issue 5.4: workers = 2 vs 1", results.skipped["w"], "not measured"))
    return rows


def _added(ms: float | None) -> str:
    if ms is None:
        return "n/a"
    return f"{ms * 1000:+.0f} µs" if abs(ms) < 1 else f"{ms:+.1f} ms"


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


def _bytes(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / KIB:.2f} KiB" if abs(value) >= KIB else f"{value:.0f} B"


# ==================================================================================================
# Markdown
# ==================================================================================================


def _cell(series: Series | None, what: str) -> str:
    if series is None:
        return "—"
    if series.error:
        return f"failed: {series.error[:90]}" if series.error != "not installed" else "not installed"
    values = series.tps if what == "tps" else series.latency_ms
    if not values:
        return "—"
    if what == "tps":
        return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def markdown(results: Results, charts: dict[str, str]) -> str:
    out: list[str] = []
    w = out.append
    w(f"# Benchmarks, {results.date}{'' if results.mode == 'full' else f' ({results.mode} run)'}\n")
    w("pooler against PgBouncer and direct Postgres on one machine, in one run, driven by the same "
      "`pgbouncer.ini`; contenders alternate over the rounds so machine drift hits all alike. Medians, "
      "with min-max in parentheses. pgbench, Postgres, the poolers and the load generator share the machine's "
      "cores, so absolute figures are low; the ratios are what to read.\n")
    w(f"Command: `{results.command}`\n")
    w("## Machine\n")
    w("| | |\n|---|---|")
    for key, value in results.facts.items():
        w(f"| {key} | {value} |")
    w("")
    w("## Setup\n")
    for key, value in results.settings.items():
        w(f"- {key}: {value}")
    w("")
    w("## Targets\n")
    w("| target | measured | verdict |\n|---|---|---|")
    for target, measured, verdict in targets(results):
        w(f"| {target} | {measured} | {verdict} |")
    w("")

    families = [f for f in "abc" if any(s.family == f for s in results.scenarios)]
    if families:
        w("## a-c. pgbench: transactions per second (higher is better)\n")
        w("| scenario | direct | PgBouncer | pooler | pooler/PgBouncer | pooler/direct |")
        w("|---|---|---|---|---|---|")
        for s in results.scenarios:
            if s.family not in "abc":
                continue
            row = results.pgbench.get(s.key, {})
            w(f"| {s.family}. {s.title} | {_cell(row.get(DIRECT), 'tps')} | {_cell(row.get(PGBOUNCER), 'tps')} | "
              f"{_cell(row.get(POOLER), 'tps')} | {_x(ratio(results, s.key, POOLER, PGBOUNCER))} | "
              f"{_x(ratio(results, s.key, POOLER, DIRECT))} |")
        w("")
        w("pgbench's average latency, ms (lower is better); \"added\" is the median minus direct's median:\n")
        w("| scenario | direct | PgBouncer | pooler | added by PgBouncer | added by pooler |")
        w("|---|---|---|---|---|---|")
        for s in results.scenarios:
            if s.family not in "abc":
                continue
            row = results.pgbench.get(s.key, {})
            added = [added_latency(results, s.key, c) for c in (PGBOUNCER, POOLER)]
            w(f"| {s.family}. {s.title} | {_cell(row.get(DIRECT), 'lat')} | {_cell(row.get(PGBOUNCER), 'lat')} | "
              f"{_cell(row.get(POOLER), 'lat')} | " + " | ".join(_added(a) for a in added) + " |")
        w("")
        for chart in ("tps", "latency"):
            if chart in charts:
                w(f"![{chart}]({charts[chart]})\n")

    variant_scenarios = [s for s in results.scenarios if s.family in "smw"]
    if variant_scenarios or any(f in results.skipped for f in "smw"):
        w("## Pooler against itself: one setting varied (s, m, w)\n")
        w("| scenario | setting A: tps | setting B: tps | B/A |\n|---|---|---|---|")
        for s in variant_scenarios:
            row = results.pgbench.get(s.key, {})
            (a_label, a), (b_label, b) = list(row.items())[:2]
            w(f"| {s.family}. {s.title} | {a_label}: {_cell(a, 'tps')} | {b_label}: {_cell(b, 'tps')} | "
              f"{_x(ratio(results, s.key, b_label, a_label), 3)} |")
        for family in "smw":
            if family in results.skipped:
                w(f"| {family}. | skipped: {results.skipped[family]} | | |")
        w("")
        if "variants" in charts:
            w(f"![variants]({charts['variants']})\n")

    if results.launch:
        groups = by_contender(results.launch)
        first = results.launch[0]
        w(f"## d. Launch day: {first.functions} functions connect at the same instant, run `select 1`, "
          f"disconnect; Postgres max_connections = {results.launch_max_connections}\n")
        w(f"{len(groups[first.contender])} round(s) per contender, poolers restarted (empty pools) each round; "
          "times are from the storm's start to each function's result; p50/p99 are medians over rounds, "
          "succeeded/failed are from the round with the most failures, peak backends the highest of any round, "
          "errors are summed over all rounds. Each function logs in (md5 to the poolers, SCRAM to Postgres) as its "
          "own connection; both poolers listen with their default listen_backlog = 128, so connections beyond "
          "what the kernel's accept queue holds wait for a SYN retry (about 1 s). Peak backends: "
          "pg_stat_activity polled every few ms during the storm.\n")
        w("| contender | succeeded | failed | p50 | p99 | slowest | peak Postgres backends | errors |")
        w("|---|---|---|---|---|---|---|---|")
        for contender, rounds in groups.items():
            ls = launch_summary(rounds)
            errors = "; ".join(f"{count}x {text}" for text, count in ls["errors"].items()) or "—"
            w(f"| {name(contender)} | {ls['ok']:.0f} / {ls['functions']} | {ls['failures_worst']} | "
              f"{_ms(ls['p50'])} | {_ms(ls['p99'])} | {_ms(ls['slowest'])} | {ls['peak_backends']} | {errors} |")
        w("")
        if "launch" in charts:
            w(f"![launch day]({charts['launch']})\n")

    if results.idle:
        w("## e. Idle authenticated clients held open: the pooler process's RSS\n")
        w("| contender | clients held | RSS before | RSS with them | per client | note |\n|---|---|---|---|---|---|")
        for i in results.idle:
            w(f"| {name(i.contender)} | {i.reached:,} of {i.target:,} | {i.rss_before / MIB:.1f} MiB | "
              f"{i.rss_after / MIB:.1f} MiB | {_bytes(i.per_client)} | {i.error or ''} |")
        w("")
        if "idle" in charts:
            w(f"![idle clients]({charts['idle']})\n")

    if results.slow:
        s0 = results.slow[0]
        w(f"## f. One slow client reading a {s0.result_bytes / 1e9:.2f} GB result: peak RSS\n")
        w("The client reads through a 4 KiB receive buffer at a capped rate and gives up after a time limit; "
          "Postgres produces far faster, so whatever the pooler does not push back on piles up in its memory.\n")
        w("| contender | read | in | RSS baseline | RSS peak | over baseline | query ended after the client left |")
        w("|---|---|---|---|---|---|---|")
        for sr in results.slow:
            released = "not within 30 s" if sr.released_after is None else f"{sr.released_after:.1f} s"
            w(f"| {name(sr.contender)} | {sr.bytes_read / MIB:.0f} MiB{' (all)' if sr.finished else ''} | "
              f"{sr.seconds:.1f} s | {sr.rss_baseline / MIB:.1f} MiB | {sr.rss_peak / MIB:.1f} MiB | "
              f"{(sr.rss_peak - sr.rss_baseline) / MIB:.1f} MiB | {released}{' — ' + sr.error if sr.error else ''} |")
        w("")
        if "slow" in charts:
            w(f"![slow client]({charts['slow']})\n")

    if results.headline_workers or "h" in results.skipped:
        w(headline_markdown(results, level=2))

    if results.notes:
        w("## Notes\n")
        for note in results.notes:
            w(f"- {note}")
        w("")
    return "\n".join(out)


# ==================================================================================================
# h. The closing-note comparison
# ==================================================================================================

H_TPS_KEYS = ("h-simple", "h-prepared", "h-extended")
H_LATENCY_KEY = "h-1client"
#: Metrics on against off: at most this far apart (issue 11).
METRICS_SPREAD = 0.02


def _short_bouncer(results: Results) -> str:
    """``PgBouncer 1.25.2`` (the version line, without the binary's path)."""
    fact = results.facts.get("PgBouncer", "PgBouncer")
    return fact.split(" (")[0] if fact != "not installed" else "PgBouncer (not installed)"


def headline_rows(results: Results) -> list[tuple[str, str]]:
    """(series label, how the table names it) in the table's order."""
    n = results.headline_workers
    bouncer = _short_bouncer(results)
    rows = [(DIRECT, "direct Postgres"), (PGBOUNCER, f"{bouncer}, 1 process (the reference)")]
    if n > 1:
        rows.append((pgbouncer_n(n), f"{bouncer} x {n} processes (`so_reuseport`)"))
    rows += [(BARE, "bare 1:1 forwarder on pooler's socket transport (the floor)"),
             (POOLER_DEFAULTS, "**pooler with its defaults**, 1 process (metrics on, `session_state_check = warn`)"),
             (POOLER_METRICS_OFF, "pooler, metrics off (`metrics_port = 0`), 1 process")]
    if n > 1:
        rows.append((pooler_workers(n), f"pooler with its defaults, `workers = {n}`"))
    return rows


def _h_cell(series: Series | None) -> str:
    if series is None:
        return "—"
    if series.error:
        return "not installed" if series.error == "not installed" else f"failed: {series.error[:60]}"
    median = series.med("tps")
    return "—" if median is None else f"{median:,.0f}"


def headline_targets(results: Results) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) of issue 11's targets, from scenario h."""
    n = results.headline_workers
    rows: list[tuple[str, str, str]] = []
    for key, what in zip(H_TPS_KEYS, ("`-S -c 50`", "`-M prepared -c 50`", "`-M extended -c 50`"), strict=True):
        r = ratio(results, key, POOLER_DEFAULTS, PGBOUNCER)
        rows.append((f"{what}: pooler with its defaults ≥ 1.0x PgBouncer, 1 process", _x(r),
                     _verdict(None if r is None else r >= 1.0)))
    mine, theirs = added_latency(results, H_LATENCY_KEY, POOLER_DEFAULTS), added_latency(results, H_LATENCY_KEY,
                                                                                          PGBOUNCER)
    rows.append(("1 client: latency pooler (defaults) adds over direct ≤ PgBouncer's",
                 f"pooler {_added(mine)}, PgBouncer {_added(theirs)}" if mine is not None and theirs is not None
                 else "n/a", _verdict(None if mine is None or theirs is None else mine <= theirs)))
    if n > 1:
        r = ratio(results, "h-simple", pooler_workers(n), pgbouncer_n(n))
        rows.append((f"`-S -c 50`: pooler `workers = {n}` ≥ 1.0x PgBouncer x {n} processes", _x(r),
                     _verdict(None if r is None else r >= 1.0)))
    spreads = {key: r for key in H_TPS_KEYS if (r := ratio(results, key, POOLER_DEFAULTS, POOLER_METRICS_OFF))}
    if spreads:
        worst = max(spreads.values(), key=lambda v: abs(v - 1.0))
        text = ", ".join(f"{key.removeprefix('h-')} {v:.3f}x" for key, v in spreads.items())
        rows.append((f"metrics on vs off ≤ {METRICS_SPREAD:.0%} apart (on/off, each -c 50 scenario)", text,
                     _verdict(abs(worst - 1.0) <= METRICS_SPREAD)))
    else:
        rows.append((f"metrics on vs off ≤ {METRICS_SPREAD:.0%} apart", "n/a", _verdict(None)))
    return rows


def headline_markdown(results: Results, level: int = 1) -> str:
    """Scenario h's table, ready to paste into a closing note: the command, the machine, medians and
    ratios against PgBouncer in one process, then issue 11's targets."""
    out: list[str] = []
    w = out.append
    h = "#" * level
    bouncer = _short_bouncer(results)
    w(f"{h} h. pooler against {bouncer}{'' if results.mode == 'full' else f' ({results.mode} run: indicative)'}\n")
    if "h" in results.skipped:
        w(f"Not measured: {results.skipped['h']}\n")
        return "\n".join(out)
    f = results.facts
    w(f"Command: `{results.command}`  ")
    w(f"Machine: {f.get('cores', '?')} cores ({f.get('CPU', '?')}), {f.get('memory', '?')}, {f.get('kernel', '?')}; "
      f"Python {f.get('Python', '?')}; Postgres {f.get('Postgres', '?')}; {f.get('PgBouncer', '?')}; "
      f"pooler {f.get('pooler', '?')}; load average at start {f.get('load average at start', '?')}  ")
    rounds = max((len(v.tps) for key in (*H_TPS_KEYS, H_LATENCY_KEY) for v in results.pgbench.get(key, {}).values()),
                 default=0)
    w(f"Setup: {results.settings.get('rounds', f'{rounds} rounds')}; pgbench -j 2; "
      f"{results.settings.get('pool', '')}. Medians; x = ratio to {bouncer} in 1 process.\n")
    w("| contender | `-S -c 50` tps | x | `-M prepared -c 50` tps | x | `-M extended -c 50` tps | x | "
      "1 client: µs per transaction |")
    w("|---|---|---|---|---|---|---|---|")
    latency_row = results.pgbench.get(H_LATENCY_KEY, {})
    direct_lat = latency_row.get(DIRECT)
    for label, title in headline_rows(results):
        cells = []
        for key in H_TPS_KEYS:
            series = results.pgbench.get(key, {}).get(label)
            cells += [_h_cell(series), _x(ratio(results, key, label, PGBOUNCER))]
        lat = latency_row.get(label)
        if label not in latency_row:
            latency = "—"
        elif lat is None or lat.med("lat") is None:
            latency = _h_cell(lat)
        elif label == DIRECT:
            latency = f"{(lat.med('lat') or 0) * 1000:.0f} µs"
        else:
            added = added_latency(results, H_LATENCY_KEY, label)
            latency = f"{(lat.med('lat') or 0) * 1000:.0f} µs ({_added(added)} over direct)" if direct_lat else \
                f"{(lat.med('lat') or 0) * 1000:.0f} µs"
        w(f"| {title} | " + " | ".join(cells) + f" | {latency} |")
    w("")
    w("| target (issue 11) | measured | verdict |\n|---|---|---|")
    for target, measured, verdict in headline_targets(results):
        w(f"| {target} | {measured} | {verdict} |")
    w("")
    return "\n".join(out)


# ==================================================================================================
# Charts
# ==================================================================================================


def _bar_panel(ax: Axes, labels: list[str], series: list[Series | None], colors: list[str], *, what: str,
               fmt: Callable[[float], str]) -> None:
    """Bars of medians with min-max whiskers; a failed or absent contender gets a note instead of a bar."""
    heights = [s.med(what) if s is not None else None for s in series]
    tops = [max(s.tps if what == "tps" else s.latency_ms) for s, h in zip(series, heights, strict=True)
            if s is not None and h is not None]
    top = max(tops, default=1.0) or 1.0
    for x, (s, h, c) in enumerate(zip(series, heights, colors, strict=True)):
        if s is None or h is None:
            why = "not run" if s is None or s.error is None else "not installed" if s.error == "not installed" \
                else "failed"
            ax.bar(x, top * 0.04, color="white", edgecolor="#c53030", hatch="///")
            ax.text(x, top * 0.08, why, ha="center", va="bottom", color="#c53030", fontsize=9, rotation=90)
            continue
        values = s.tps if what == "tps" else s.latency_ms
        ax.bar(x, h, color=c, width=0.7)
        ax.errorbar(x, h, yerr=[[h - min(values)], [max(values) - h]], color="black", capsize=3, lw=1)
        ax.text(x, max(values) + top * 0.02, fmt(h), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(0, top * 1.22)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(axis="y", labelsize=8)


def _tps_chart(results: Results, path: Path) -> bool:
    import matplotlib.pyplot as plt

    scenarios = [s for s in results.scenarios if s.family in "abc"]
    if not scenarios:
        return False
    cols = min(3, len(scenarios))
    rows = (len(scenarios) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.4 * rows), squeeze=False)
    contenders = [DIRECT, PGBOUNCER, POOLER]
    for ax, s in zip(axes.flat, scenarios, strict=False):
        row = results.pgbench.get(s.key, {})
        _bar_panel(ax, [name(c) for c in contenders], [row.get(c) for c in contenders],
                   [color(c) for c in contenders], what="tps", fmt=lambda v: f"{v:,.0f}")
        r = ratio(results, s.key, POOLER, PGBOUNCER)
        bouncer = row.get(PGBOUNCER)
        sub = f"pooler = {_x(r)} PgBouncer" if r else ""
        if bouncer is not None and bouncer.error and bouncer.error != "not installed":
            sub = f"PgBouncer failed: {bouncer.error.replace('ERROR:', '').strip()[:48]}"
        ax.set_title(f"{s.family}. {s.title}\n{sub}", fontsize=9)
        ax.set_ylabel("transactions / s", fontsize=8)
    for ax in list(axes.flat)[len(scenarios):]:
        ax.axis("off")
    rounds = max((len(v.tps) for row in results.pgbench.values() for v in row.values()), default=0)
    fig.suptitle(f"pgbench throughput, higher is better (median of {rounds} rounds; whiskers: min-max)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _latency_chart(results: Results, path: Path) -> bool:
    import matplotlib.pyplot as plt

    scenarios = [s for s in results.scenarios if s.family == "a"]
    if not scenarios:
        return False
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.2 * len(scenarios), 3.9), squeeze=False)
    contenders = [DIRECT, PGBOUNCER, POOLER]
    for ax, s in zip(axes.flat, scenarios, strict=True):
        row = results.pgbench.get(s.key, {})
        _bar_panel(ax, [name(c) for c in contenders], [row.get(c) for c in contenders],
                   [color(c) for c in contenders], what="lat", fmt=lambda v: f"{v:.3f}" if v < 10 else f"{v:.1f}")
        added = [added_latency(results, s.key, c) for c in (PGBOUNCER, POOLER)]
        sub = ", ".join(f"{n} {_added(a)}" for n, a in zip(("PgBouncer", "pooler"), added, strict=True)
                        if a is not None)
        ax.set_title(f"{s.title}\nadded over direct:\n{sub}" if sub else s.title, fontsize=9)
        ax.set_ylabel("ms per transaction", fontsize=8)
    fig.suptitle("pgbench -S average latency, lower is better (median of rounds; whiskers: min-max)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _variants_chart(results: Results, path: Path) -> bool:
    import matplotlib.pyplot as plt

    scenarios = [s for s in results.scenarios if s.family in "smw"]
    skipped = [f for f in "smw" if f in results.skipped]
    panels = len(scenarios) + len(skipped)
    if not scenarios:
        return False
    fig, axes = plt.subplots(1, panels, figsize=(3.8 * panels, 3.6), squeeze=False)
    titles = {"s": "session_state_check", "m": "metrics listener + logging", "w": "worker processes"}
    targets_text = {"s": "target: warn ≥ 0.95x off", "m": "target: on ≥ 0.97x off", "w": "no target"}
    for ax, s in zip(axes.flat, scenarios, strict=False):
        row = results.pgbench.get(s.key, {})
        labels = list(row)
        _bar_panel(ax, [label.replace("pooler ", "") for label in labels], [row[label] for label in labels],
                   list(VARIANT_COLORS), what="tps", fmt=lambda v: f"{v:,.0f}")
        r = ratio(results, s.key, labels[-1], labels[0]) if len(labels) > 1 else None
        short = [label.replace("pooler ", "").split("=")[-1].replace("metrics ", "") for label in labels]
        ax.set_title(f"{titles[s.family]}: {short[-1]}/{short[0]} = {_x(r, 3)}\n{targets_text[s.family]}",
                     fontsize=9)
        ax.set_ylabel("transactions / s", fontsize=8)
    for ax, family in zip(list(axes.flat)[len(scenarios):], skipped, strict=True):
        ax.axis("off")
        ax.text(0.5, 0.5, f"{titles[family]}:\nnot measured\n\n" + _wrap(results.skipped[family], 40),
                ha="center", va="center", fontsize=8, transform=ax.transAxes)
    fig.suptitle("pooler against itself, pgbench -S, 50 clients (tps, higher is better)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:8])


def _launch_chart(results: Results, path: Path) -> bool:
    import matplotlib.pyplot as plt

    groups = by_contender(results.launch)
    if not groups:
        return False
    first = results.launch[0]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    slowest = max((max(r.times) for r in results.launch if r.times), default=1.0)
    for contender, rounds in groups.items():
        times = sorted(t for r in rounds for t in r.times)
        total = sum(r.functions for r in rounds)
        s = launch_summary(rounds)
        xs = [0.0, *times, slowest * 1.05]
        ys = [0.0, *[(i + 1) / total * 100 for i in range(len(times))], len(times) / total * 100]
        ax1.step([x * 1000 for x in xs], ys, where="post", color=color(contender), lw=2,
                 label=f"{name(contender)}: p99 {_ms(s['p99'])}, {s['failures_worst']} failed")
    ax1.set_xlabel("ms since all functions started connecting")
    ax1.set_ylabel("% of functions with their result")
    ax1.set_ylim(0, 105)
    ax1.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.18), ncol=1, frameon=False)
    ax1.set_title("Who gets an answer, and when", fontsize=10)
    labels = [name(c) for c in groups]
    summaries = [launch_summary(r) for r in groups.values()]
    ok = [s["ok"] for s in summaries]
    failed = [s["failures_worst"] for s in summaries]
    ax2.bar(labels, ok, color="#38a169", label="got a result")
    ax2.bar(labels, failed, bottom=ok, color="#c53030", label="failed")
    for x, f in enumerate(failed):
        if f:
            ax2.text(x, ok[x] + f / 2, f"{f}\nfailed", ha="center", va="center", color="white", fontsize=8)
    ax2.set_title(f"Outcome of {first.functions} functions\n(worst round)", fontsize=10)
    ax2.legend(fontsize=8, loc="lower center")
    ax2.tick_params(axis="x", labelsize=8)
    peaks = [s["peak_backends"] for s in summaries]
    ax3.bar(labels, peaks, color=[color(c) for c in groups])
    ax3.axhline(results.launch_max_connections, color="#c53030", ls="--", lw=1)
    ax3.text(len(labels) - 0.5, results.launch_max_connections, f"max_connections = "
             f"{results.launch_max_connections}", ha="right", va="bottom", fontsize=8, color="#c53030")
    for x, p in enumerate(peaks):
        ax3.text(x, p, str(p), ha="center", va="bottom", fontsize=8)
    ax3.set_ylim(0, max([*peaks, results.launch_max_connections]) * 1.2)
    ax3.set_title("Postgres backends used (peak)", fontsize=10)
    ax3.tick_params(axis="x", labelsize=8)
    for ax in (ax1, ax2, ax3):
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"Launch day: {first.functions} serverless functions open a connection at the same instant "
                 f"(Postgres max_connections = {results.launch_max_connections})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _idle_chart(results: Results, path: Path) -> bool:
    import matplotlib.pyplot as plt

    idle: list[IdleResult] = [i for i in results.idle if i.per_client is not None]
    if not idle:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4))
    values = [(i.per_client or 0) / KIB for i in idle]
    ax.bar([name(i.contender) for i in idle], values, color=[color(i.contender) for i in idle], width=0.5)
    for x, (i, v) in enumerate(zip(idle, values, strict=True)):
        ax.text(x, v, f"{v:.2f} KiB\n({i.reached:,} clients)", ha="center", va="bottom", fontsize=9)
    ax.axhline(IDLE_TARGET / KIB, color="#c53030", ls="--", lw=1)
    ax.text((len(idle) - 1) / 2, IDLE_TARGET / KIB, "target: 1.5 KiB", ha="center", va="bottom", fontsize=8,
            color="#c53030")
    ax.set_ylim(0, max([*values, IDLE_TARGET / KIB]) * 1.25)
    ax.set_ylabel("KiB of RSS per idle client")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title("Memory per idle authenticated client, lower is better\n(RSS with the clients held "
                 "minus RSS before, divided by their number)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _slow_chart(results: Results, path: Path) -> bool:
    import matplotlib.pyplot as plt

    slow: list[SlowResult] = [s for s in results.slow if s.trace]
    if not slow:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    top = SLOW_TARGET / MIB
    for s in slow:
        xs = [t for t, _ in s.trace]
        ys = [(rss - s.rss_baseline) / MIB for _, rss in s.trace]
        top = max(top, *ys)
        ax.plot(xs, ys, color=color(s.contender), lw=2,
                label=f"{name(s.contender)}: peak +{(s.rss_peak - s.rss_baseline) / MIB:.1f} MiB "
                      f"(client read {s.bytes_read / MIB:.0f} MiB in {s.seconds:.0f} s)")
    ax.axhline(SLOW_TARGET / MIB, color="#c53030", ls="--", lw=1)
    ax.text(ax.get_xlim()[1], SLOW_TARGET / MIB, "target: < 64 MiB", ha="right", va="bottom", fontsize=8,
            color="#c53030")
    ax.set_ylim(min(0, ax.get_ylim()[0]), top * 1.15)
    ax.set_xlabel("seconds since the query was sent (the client gives up at the end)")
    ax.set_ylabel("RSS above baseline, MiB")
    ax.legend(fontsize=8, loc="center left")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(f"One slow client reading a {slow[0].result_bytes / 1e9:.2f} GB result: the pooler's memory, "
                 "lower is better", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write(results: Results, out: Path) -> Path:
    """Write ``<date>[-mode].md``, its charts and ``.json`` into ``out``; return the markdown's path."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    stem = results.date + ("" if results.mode == "full" else f"-{results.mode}")
    charts: dict[str, str] = {}
    for key, draw in (("tps", _tps_chart), ("latency", _latency_chart), ("variants", _variants_chart),
                      ("launch", _launch_chart), ("idle", _idle_chart), ("slow", _slow_chart)):
        file = f"{stem}-{key}.png"
        if draw(results, out / file):
            charts[key] = file
    (out / f"{stem}.json").write_text(to_json(results))
    path = out / f"{stem}.md"
    path.write_text(markdown(results, charts))
    return path


def load(path: Path) -> Results:
    """A ``Results`` back from the ``.json`` a run wrote (to redraw its report)."""
    import json

    from benchmarks.results import PgbenchScenario

    data = json.loads(path.read_text())
    results = Results(date=data["date"], command=data["command"], mode=data["mode"], facts=data["facts"],
                      settings=data["settings"], launch_max_connections=data["launch_max_connections"],
                      skipped=data["skipped"], notes=data["notes"],
                      headline_workers=data.get("headline_workers", 0))
    results.scenarios = [PgbenchScenario(**s) for s in data["scenarios"]]
    results.pgbench = {k: {c: Series(**v) for c, v in row.items()} for k, row in data["pgbench"].items()}
    results.launch = [LaunchRound(**r) for r in data["launch"]]
    results.idle = [IdleResult(**i) for i in data["idle"]]
    results.slow = [SlowResult(**{**s, "trace": [tuple(t) for t in s["trace"]]}) for s in data["slow"]]
    return results


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m benchmarks.report benchmarks/results/<date>.json  (redraws its .md and charts)")
    source = Path(sys.argv[1])
    print(write(load(source), source.parent))
