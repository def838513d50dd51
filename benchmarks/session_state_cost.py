"""µs per call of the session-state check, the one piece of SQL analysis on the data path.

Why: ``SessionStateChecker.check`` runs on every Query and Parse message in transaction/statement mode,
so its cost is paid per query. Each case is timed over fresh ``str`` objects decoded from bytes, as the
data path gets them (a new object has no cached hash, so a cache hit pays for hashing the text); "miss"
cases use text that differs every call, as pgbench and ORMs in simple-query mode produce by inlining
values. The last lines show the two ways of asking pglast for a tree, which is why the checker uses
the JSON one.

    python -m benchmarks.session_state_cost [calls]

Measured (Python 3.11.7, pglast 8.8, one core of the dev box), µs per call:

    pgbench -S, Parse ($1), no trigger word                       0.28   (filter only: no cache, no parse)
    pgbench -S, inlined value, unique text                        0.30
    ORM select, no trigger word                                   0.41
    UPDATE … SET, repeated text (DML shortcut)                    0.37
    UPDATE … SET, unique text (DML shortcut)                      0.50
    /* c */ UPDATE … SET, repeated text (parser, cache hit)       0.43
    /* c */ UPDATE … SET, unique text (parser, cache miss)       12.5
    SET search_path, repeated text (cache hit)                    0.39
    SET LOCAL, unique text (cache miss)                           5.9
    pg_try_advisory_lock, unique text (cache miss)               12.7
    pglast parse_sql (node objects)                              43
    json.loads(parse_sql_json(...)) (what the checker uses)       8.6
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

from pglast.parser import parse_sql, parse_sql_json

from pooler.core.session_state import SessionStateChecker


def _texts(template: str, n: int, unique: bool) -> list[str]:
    """n distinct str objects: the same text, or (unique) text with a different number in each."""
    if "%d" not in template:
        return [template.encode().decode() for _ in range(n)]
    return [(template % (i if unique else 4242)).encode().decode() for i in range(n)]


def _per_call(fn: Callable[[str], object], texts: list[str], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for sql in texts:
            fn(sql)
        best = min(best, (time.perf_counter_ns() - start) / len(texts) / 1000)
    return best


def main(n: int = 20_000) -> None:
    cases = [
        # (label, template, whether the text differs every call)
        ("pgbench -S, Parse ($1), no trigger word", "SELECT abalance FROM pgbench_accounts WHERE aid = $1", False),
        ("pgbench -S, inlined value, unique text", "SELECT abalance FROM pgbench_accounts WHERE aid = %d;", True),
        ("ORM select, no trigger word",
         'SELECT "users"."id", "users"."email" FROM "users" WHERE "users"."id" = %d LIMIT 1', False),
        ("UPDATE … SET, repeated text (DML shortcut)",
         "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", False),
        ("UPDATE … SET, unique text (DML shortcut)",
         "UPDATE pgbench_accounts SET abalance = abalance + %d WHERE aid = 5678;", True),
        ("/* c */ UPDATE … SET, repeated text (parser, cache hit)",
         "/* app */ UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = %d", False),
        ("/* c */ UPDATE … SET, unique text (parser, cache miss)",
         "/* app */ UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = %d", True),
        ("SET search_path, repeated text (cache hit)", "SET search_path = app_%d, public", False),
        ("SET LOCAL, unique text (cache miss)", "SET LOCAL app.user_id = '%d'", True),
        ("pg_try_advisory_lock, unique text (cache miss)", "SELECT pg_try_advisory_lock(%d)", True),
    ]
    print(f"SessionStateChecker.check, µs per call (best of 5 x {n} calls, Python {sys.version.split()[0]})")
    for label, template, unique in cases:
        checker = SessionStateChecker()
        texts = _texts(template, n, unique)
        checker.check(texts[0], False)  # a repeated text is in the cache before timing starts

        def check(sql: str, check: Callable[[str, bool], object] = checker.check) -> object:
            return check(sql, False)

        print(f"  {label:<58} {_per_call(check, texts):7.2f}")
    sample = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
    texts = _texts(sample, n // 4, False)
    print("pglast, µs per call, for the pgbench -S text:")
    print(f"  {'parse_sql (node objects)':<58} {_per_call(parse_sql, texts):7.2f}")
    print(f"  {'json.loads(parse_sql_json(...)) (what the checker uses)':<58} "
          f"{_per_call(lambda s: json.loads(parse_sql_json(s)), texts):7.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
