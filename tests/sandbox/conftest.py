"""Fixtures for the sandbox tests: a real sandbox subprocess, real HTTP, vendor specs.

The sandbox is started once per session as ``python -m sandbox --seed none`` on a
free loopback port and reset through its control API before every test. No Django needed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse

REPO = Path(__file__).resolve().parents[2]
LEGACY_TENANT = "6b1f4c2e-3a5d-4e8f-9a7b-1c2d3e4f5a01"
NEW_TENANT = "9d8e7f6a-5b4c-4d3e-8f2a-1b0c9d8e7f02"
HARVEST_HEADERS = {
    "Authorization": "Bearer sandbox-harvest-token",
    "Harvest-Account-Id": "100001",
    "User-Agent": "Concord tests (tests@concord.example)",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def sandbox_url() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", str(port), "--seed", "none"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{url}/_control/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            output = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"sandbox did not start on port {port}:\n{output}")
        time.sleep(0.05)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def client(sandbox_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox_url, timeout=10) as c:
        assert c.post("/_control/reset", json={}).status_code == 200
        yield c


@pytest.fixture
def harvest(client: httpx.Client) -> httpx.Client:
    client.headers.update(HARVEST_HEADERS)
    return client


def xero_token(client: httpx.Client) -> str:
    response = client.post(
        "/xero/connect/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "concord-xero",
            "client_secret": "sandbox-xero-secret",
        },
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.fixture
def xero(client: httpx.Client) -> httpx.Client:
    client.headers.update(
        {"Authorization": f"Bearer {xero_token(client)}", "Xero-Tenant-Id": NEW_TENANT}
    )
    return client


@pytest.fixture
def salesforce(client: httpx.Client) -> httpx.Client:
    response = client.post(
        "/salesforce/services/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "concord-salesforce",
            "client_secret": "sandbox-salesforce-secret",
        },
    )
    assert response.status_code == 200, response.text
    client.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
    return client


# -- vendor contracts --------------------------------------------------------------------------


# Where the vendor contracts live: beside the checkout (../shared/specs), or in the workplace's
# shared folder when the repository is cloned elsewhere (a CI clone). CONCORD_SPECS_DIR wins.
SPEC_DIRS = (REPO.parent / "shared" / "specs", Path("/work/shared/specs"))


def specs_dir() -> Path:
    candidates = (
        [Path(os.environ["CONCORD_SPECS_DIR"])]
        if os.environ.get("CONCORD_SPECS_DIR")
        else SPEC_DIRS
    )
    for path in candidates:
        if (path / "harvest-v2.yaml").is_file():
            return path
    pytest.fail(
        f"vendor specs not found in {', '.join(map(str, candidates))}: set CONCORD_SPECS_DIR to "
        "the folder holding harvest-v2.yaml and xero-*.yaml (read, never copied into the repo)"
    )


def _string_keys(node: Any) -> Any:
    # YAML reads unquoted status codes (``201:``) as integers; openapi-core looks responses up
    # by the string "201" and would otherwise fall back to ``default`` (the error schema),
    # silently validating every success body against the wrong schema.
    if isinstance(node, dict):
        return {str(k): _string_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_string_keys(v) for v in node]
    return node


def load_yaml(name: str) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(specs_dir() / name, encoding="utf-8") as fh:
        return dict(_string_keys(yaml.load(fh, Loader=loader)))  # noqa: S506 - a safe loader


class Contract:
    """Validates a real sandbox response against a vendor spec.

    The sandbox serves ``/<prefix>`` + the vendor's own path; the spec's server is the vendor's
    host. The request is re-addressed to the vendor host and path before validation.
    """

    def __init__(
        self,
        spec: dict[str, Any],
        sandbox_prefix: str,
        host_url: str,
        rename: dict[str, str] | None = None,
    ):
        # The spec files are published and already validated; skipping openapi-core's own spec
        # check saves seconds per session.
        self.api = OpenAPI.from_dict(spec, config=Config(spec_validator_cls=None))
        self.prefix, self.host, self.rename = sandbox_prefix, host_url, rename or {}

    def check(self, response: httpx.Response) -> Any:
        request = response.request
        path = request.url.path
        assert path.startswith(self.prefix), path
        path = path[len(self.prefix) :]
        path = self.rename.get(path, path)
        mock_request = MockRequest(
            self.host,
            request.method,
            path,
            args=dict(request.url.params),
            headers=dict(request.headers),
            data=request.content,
            content_type=request.headers.get("content-type", "application/json"),
        )
        mock_response = MockResponse(
            response.content,
            status_code=response.status_code,
            headers=dict(response.headers),
            content_type=response.headers.get("content-type", "").split(";")[0],
        )
        self.api.validate_response(mock_request, mock_response)
        return response.json()


@pytest.fixture(scope="session")
def harvest_contract() -> Contract:
    return Contract(load_yaml("harvest-v2.yaml"), "/harvest", "https://api.harvestapp.com")


@pytest.fixture(scope="session")
def xero_contract() -> Contract:
    return Contract(load_yaml("xero-accounting.yaml"), "/xero", "https://api.xero.com")


@pytest.fixture(scope="session")
def xero_identity_contract() -> Contract:
    return Contract(
        load_yaml("xero-identity.yaml"),
        "/xero",
        "https://api.xero.com",
        rename={"/connections": "/Connections"},
    )


@pytest.fixture(scope="session")
def xero_identity_spec() -> dict[str, Any]:
    return load_yaml("xero-identity.yaml")


@pytest.fixture(scope="session")
def xero_webhooks_spec() -> dict[str, Any]:
    return load_yaml("xero-webhooks.yaml")
