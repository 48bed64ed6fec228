"""The sandbox ASGI application: one Starlette app, one mount per vendor, plus ``/_control``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Mount, Router

from .control import Control, ControlGuard
from .gate import Sandbox, VendorGate
from .harvest import Harvest
from .salesforce import Salesforce
from .xero import Xero


def create_app(base_url: str = "http://127.0.0.1:8100") -> Starlette:
    sandbox = Sandbox(base_url=base_url)
    sf, hv, xr = Salesforce(sandbox), Harvest(sandbox), Xero(sandbox)
    control = Control(sandbox, sf, hv, xr)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Webhook deliveries run beside the request handlers, never inside them.
        task = asyncio.create_task(sandbox.webhooks.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = Starlette(
        routes=[
            Mount("/salesforce", app=VendorGate(sf)),
            Mount("/harvest", app=VendorGate(hv)),
            Mount("/xero", app=VendorGate(xr)),
            Mount("/_control", app=ControlGuard(Router(routes=control.routes()))),
        ],
        lifespan=lifespan,
    )
    app.state.sandbox = sandbox
    app.state.control = control
    return app
