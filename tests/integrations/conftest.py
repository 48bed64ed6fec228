"""Fixtures for the connector and sync tests: real sandbox subprocess, Redis and PostgreSQL.

The sandbox runs once per session (``python -m sandbox --seed none``) on a free
loopback port and is reset through its control API before each test that uses it. Redis keys
get a prefix unique to the test, so runs (and other suites on the same Redis) never share
limiter or breaker state.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from integrations.connectors import limits as limits_module
from integrations.connectors.http import forget_tokens
from integrations.models import Connection
from integrations.vendors.xero import connector as xero_module
from tests.processes import free_port, running, sandbox_proc, wait_for_sandbox

REPO = Path(__file__).resolve().parents[2]
NEW_TENANT = "9d8e7f6a-5b4c-4d3e-8f2a-1b0c9d8e7f02"
XERO_SECRET = "sandbox-xero-secret"
HARVEST_TOKEN = "sandbox-harvest-token"
SALESFORCE_SECRET = "sandbox-salesforce-secret"


@pytest.fixture(scope="session")
def sandbox_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = sandbox_proc(port, tmp_path_factory.mktemp("sandbox") / "sandbox.log")
    with running(proc):
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_sandbox(url)
        except AssertionError:
            pytest.fail(f"sandbox did not start on port {port}:\n{proc.output()}")
        yield url


class Sandbox:
    """The sandbox's control API."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.control = httpx.Client(base_url=f"{url}/_control", timeout=10)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.control.post(path, json=body)
        assert response.status_code < 300, response.text
        return response.json()

    def faults(self, system: str, **settings: Any) -> None:
        self.post("/faults", {"system": system, **settings})

    def limits(self, system: str, **settings: Any) -> None:
        self.post("/limits", {"system": system, **settings})

    def stats(self, system: str, obj: str) -> dict[str, Any]:
        body = self.control.get("/stats", params={"system": system}).json()
        return dict(body["systems"].get(system, {}).get(obj, {}))

    def records(self, system: str, obj: str, tenant: str | None = None) -> list[dict[str, Any]]:
        params = {"tenant": tenant} if tenant else {}
        return list(self.control.get(f"/records/{system}/{obj}", params=params).json()["records"])

    def patch(self, system: str, obj: str, key: Any, changes: dict[str, Any]) -> None:
        response = self.control.patch(f"/records/{system}/{obj}/{key}", json=changes)
        assert response.status_code == 200, response.text


@pytest.fixture
def sandbox(sandbox_url: str) -> Iterator[Sandbox]:
    box = Sandbox(sandbox_url)
    box.post("/reset", {})
    yield box
    box.control.close()


@pytest.fixture(autouse=True)
def isolated_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Fresh Redis key space, token cache and Xero discovery caches for every test."""
    prefix = f"concord-test:{uuid.uuid4().hex[:12]}"
    monkeypatch.setattr(limits_module, "KEY_PREFIX", prefix)
    forget_tokens()
    xero_module._tenants.clear()
    xero_module._no_where_or.clear()
    yield prefix
    limits_module.get_store().clear(prefix)
    forget_tokens()


@pytest.fixture
def make_connection(db: None, sandbox_url: str) -> Callable[..., Connection]:
    def make(vendor: str, **fields: Any) -> Connection:
        defaults: dict[str, Any] = {
            "xero": {
                "role": "erp",
                "base_url": f"{sandbox_url}/xero/api.xro/2.0",
                "credentials": {
                    "client_id": "concord-xero",
                    "client_secret": XERO_SECRET,
                    "token_url": f"{sandbox_url}/xero/connect/token",
                    "tenant_id": NEW_TENANT,
                },
                "rate_limit_per_minute": 60,
                "max_concurrency": 5,
            },
            "harvest": {
                "role": "psa",
                "base_url": f"{sandbox_url}/harvest/v2",
                "credentials": {"access_token": HARVEST_TOKEN, "account_id": "100001"},
                "rate_limit_per_minute": 400,
                "max_concurrency": 5,
            },
            "salesforce": {
                "role": "crm",
                "base_url": f"{sandbox_url}/salesforce",
                "credentials": {
                    "client_id": "concord-salesforce",
                    "client_secret": SALESFORCE_SECRET,
                },
                "rate_limit_per_minute": 1000,
                "max_concurrency": 10,
            },
        }[vendor]
        values = {**defaults, **fields}
        credentials = values.pop("credentials")
        connection = Connection(name=f"{vendor}-{uuid.uuid4().hex[:8]}", vendor=vendor, **values)
        connection.credentials = credentials
        connection.save()
        return connection

    return make


@pytest.fixture
def xero_connection(make_connection: Callable[..., Connection]) -> Connection:
    return make_connection("xero")


@pytest.fixture
def harvest_connection(make_connection: Callable[..., Connection]) -> Connection:
    return make_connection("harvest")


@pytest.fixture
def salesforce_connection(make_connection: Callable[..., Connection]) -> Connection:
    return make_connection("salesforce")
