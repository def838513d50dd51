"""How long the adversity tests (fuzzers, property tests) run: a few seconds each by default, longer on request.

``POOLER_ADVERSITY_SECONDS`` (default 3) scales every such test's example count; set it (say to 60 or 600)
for a long local or nightly run. Short runs are derandomized (the same examples every time: CI does not
flake on a newly drawn case); long runs draw fresh examples, and print a seed to replay a failure.
Hypothesis keeps no example database (``database=None``): nothing is written to the work tree.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

DEFAULT_SECONDS = 3.0
SECONDS = float(os.environ.get("POOLER_ADVERSITY_SECONDS") or DEFAULT_SECONDS)
LONG = SECONDS > DEFAULT_SECONDS


def examples(per_default_run: int) -> int:
    """The example count for a test that runs ``per_default_run`` examples in the default few seconds."""
    return max(1, round(per_default_run * SECONDS / DEFAULT_SECONDS))


def budget(per_default_run: int) -> settings:
    """Hypothesis settings for an adversity test of ``per_default_run`` examples by default."""
    return settings(
        max_examples=examples(per_default_run),
        deadline=None,
        derandomize=not LONG,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    )


class Counter:
    """Counts the cases a test really ran (reported with ``-s``, and in the issue's closing note)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cases = 0

    def report(self) -> None:
        print(f"\n[adversity] {self.name}: {self.cases} cases")
