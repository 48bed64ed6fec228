"""Two writers at the same moment, in two threads with their own database connections: the
first does its work in a transaction and holds it open while the second starts (and blocks on
the first's rows or keys), then commits. For the races a unique key decides."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import connection, transaction

# Long enough for the second writer to plan from what is committed and block on the first.
HOLD_S = 1.0


def first_holds_then_commits(
    first: Callable[[], Any], second: Callable[[], Any], *, hold_s: float = HOLD_S
) -> tuple[Any, Any]:
    """Run `first` in a transaction held open `hold_s` after it returns, and `second` as soon
    as `first` has returned (inside that hold). Their results, in that order; an exception
    either raised is raised here, so a test fails with it."""
    done, results, raised = threading.Event(), {}, []

    def run(name: str, work: Callable[[], Any]) -> None:
        try:
            results[name] = work()
        except BaseException as exc:  # handed to the test's thread below
            raised.append(exc)
        finally:
            done.set()
            connection.close()

    def held() -> Any:
        with transaction.atomic():
            result = first()
            done.set()
            time.sleep(hold_s)
        return result

    def after() -> Any:
        done.wait(10)
        return second()

    threads = [
        threading.Thread(target=run, args=("first", held)),
        threading.Thread(target=run, args=("second", after)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    if raised:
        raise raised[0]
    return results["first"], results["second"]
