"""``python -m sandbox --port 8100 [--host 127.0.0.1] [--seed demo|none] [--scale N]``.

Binds loopback only: the control API has no authentication.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import date

import uvicorn

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class _QuietDrops(logging.Filter):
    """The ``drop_response_rate`` fault cuts responses off on purpose; uvicorn would log each
    one as an application error, which would drown real errors in a fault-injection run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("SANDBOX_PORT", "8100")))
    parser.add_argument(
        "--host", default="127.0.0.1", help="loopback only: 127.0.0.1, localhost or ::1"
    )
    parser.add_argument("--seed", choices=("demo", "none"), default="demo")
    parser.add_argument(
        "--scale", type=int, default=1, help="seed scale: about 1,000 time entries per unit"
    )
    parser.add_argument("--anchor", help="seed anchor date YYYY-MM-DD (default: today)")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    if args.host not in LOOPBACK:
        parser.error("the sandbox binds loopback only (its control API has no authentication)")

    from .app import create_app
    from .control import settle_heap
    from .seed import Seeder, default_anchor

    host_in_url = f"[{args.host}]" if ":" in args.host else args.host
    app = create_app(base_url=f"http://{host_in_url}:{args.port}")
    if args.seed == "demo":
        control = app.state.control
        anchor = date.fromisoformat(args.anchor) if args.anchor else default_anchor()
        result = Seeder(control.sf, control.hv, control.xero, args.scale, 42, anchor).run()
        settle_heap()
        print(f"sandbox seeded: {result['counts']} in {result['seconds']}s", file=sys.stderr)
    logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
