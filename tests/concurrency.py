"""Two writers at the same moment, in two threads with their own database connections: the
first does its work in a transaction and holds it open while the second starts (and blocks on
the first's rows or keys), then commits. For the races a unique key decides."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection, transaction

# Long enough for the second writer to plan from what is committed and block on the first.
HOLD_S = 1.0


def first_holds_then_commits(
    first: Callable[[], Any], second: Callable[[], Any], *, hold_s: float = HOLD_S
) -> tuple[Any, Any]:
    """Run `first` in a transaction held open `hold_s` after it returns, and `second` as soon
    as `first` has returned (inside that hold). Their results, in that order."""
    done, results = threading.Event(), {}

    def run_first() -> None:
        try:
            with transaction.atomic():
                results["first"] = first()
                done.set()
                threading.Event().wait(hold_s)
        finally:
            connection.close()

    def run_second() -> None:
        try:
            done.wait(10)
            results["second"] = second()
        finally:
            connection.close()

    threads = [threading.Thread(target=run_first), threading.Thread(target=run_second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results["first"], results["second"]
