"""`make bench`: Concord's throughput figures, one JSON object per line per figure.

Runs against real parts on this machine: a fresh PostgreSQL database (`concord_bench`, dropped
and created here), Redis database 14, the vendor sandbox as its own process, and for ingestion a
gunicorn server. Each figure: {"name", "value", "unit"[, "floor", "target"]}.

    python -m tests.benchmarks [--only NAME ...] [--entries 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _prepare_environment() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings_test")
    os.environ["DATABASE_URL"] = os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/concord_bench"
    )
    os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    os.environ.setdefault("CONCORD_LOG_LEVEL", "WARNING")


def _fresh_database() -> None:
    import psycopg

    url = os.environ["DATABASE_URL"]
    name = url.rsplit("/", 1)[1]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--entries", type=int, default=100_000)
    args = parser.parse_args(argv)

    _prepare_environment()
    _fresh_database()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()

    from tests.benchmarks import figures

    wanted = args.only or [name for name, _ in figures.ALL]
    with figures.Sandbox() as sandbox:
        for name, run in figures.ALL:
            if name not in wanted:
                continue
            for figure in run(sandbox, entries=args.entries):
                print(json.dumps(figure), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
