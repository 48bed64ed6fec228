"""The control API refuses what a web page in a browser on this machine could send it:
a foreign Host (DNS rebinding) and a POST/PATCH that is not JSON (a cross-site form or
``text/plain`` fetch, which needs no CORS preflight)."""

from __future__ import annotations

import httpx
import pytest


def _one_client(harvest: httpx.Client) -> None:
    response = harvest.post("/harvest/v2/clients", json={"name": "Acme"})
    assert response.status_code == 201, response.text


def _client_count(client: httpx.Client) -> int:
    return int(client.get("/_control/records/harvest/clients").json()["count"])


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8100",
        "127.0.0.1.evil.example",
        "localhost.evil.example:8100",
        "127.0.0.2:8100",
        "[::2]:8100",
        "localhost:http",
    ],
)
def test_a_foreign_host_is_refused_and_changes_nothing(
    client: httpx.Client, harvest: httpx.Client, host: str
) -> None:
    _one_client(harvest)
    reset = client.post("/_control/reset", json={}, headers={"Host": host})
    assert reset.status_code == 421
    assert host in reset.json()["error"]
    assert "loopback" in reset.json()["error"]
    faults = client.post(
        "/_control/faults", json={"system": "xero", "error_rate": 1.0}, headers={"Host": host}
    )
    assert faults.status_code == 421
    # Reads too: a rebinding page must not learn the credentials.
    assert client.get("/_control/credentials", headers={"Host": host}).status_code == 421
    assert _client_count(client) == 1
    assert client.get("/_control/faults").json()["xero"]["error_rate"] == 0.0


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:{port}",
        "localhost",
        "LOCALHOST:{port}",
        "[::1]:{port}",
        "[::1]",
        "::1",
    ],
)
def test_loopback_hosts_are_served(client: httpx.Client, sandbox_url: str, host: str) -> None:
    port = httpx.URL(sandbox_url).port
    response = client.post(
        "/_control/faults",
        json={"system": "harvest", "latency_ms": 1},
        headers={"Host": host.format(port=port)},
    )
    assert response.status_code == 200, response.text
    assert response.json()["harvest"]["latency_ms"] == 1.0


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b"{}"),
        ("text/plain;charset=UTF-8", b'{"scale": 1}'),
        ("application/x-www-form-urlencoded", b"a=b"),
        ("multipart/form-data; boundary=x", b"--x--\r\n"),
        (None, b""),  # a bodyless fetch() or form POST sends no Content-Type at all
    ],
)
def test_a_post_that_is_not_json_is_refused_and_resets_nothing(
    client: httpx.Client, harvest: httpx.Client, content_type: str | None, body: bytes
) -> None:
    _one_client(harvest)
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/_control/reset", content=body, headers=headers)
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]
    assert _client_count(client) == 1
    seeded = client.post("/_control/seed", content=body, headers=headers)
    assert seeded.status_code == 415
    assert _client_count(client) == 1


def test_a_patch_that_is_not_json_changes_nothing(
    client: httpx.Client, harvest: httpx.Client
) -> None:
    _one_client(harvest)
    key = client.get("/_control/records/harvest/clients").json()["records"][0]["id"]
    response = client.patch(
        f"/_control/records/harvest/clients/{key}",
        content=b'{"name": "Changed"}',
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 415
    record = client.get(f"/_control/records/harvest/clients/{key}").json()
    assert record["data"]["name"] == "Acme"
    assert record["version"] == 1


def test_the_json_path_still_resets_and_patches(
    client: httpx.Client, harvest: httpx.Client
) -> None:
    _one_client(harvest)
    key = client.get("/_control/records/harvest/clients").json()["records"][0]["id"]
    patched = client.patch(
        f"/_control/records/harvest/clients/{key}",
        content=b'{"name": "Changed"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["data"]["name"] == "Changed"
    # An empty body is fine when it says it is JSON.
    reset = client.post("/_control/reset", headers={"Content-Type": "application/json"})
    assert reset.status_code == 200, reset.text
    assert _client_count(client) == 0


def test_a_preflight_is_never_granted(client: httpx.Client) -> None:
    """What makes the JSON rule hold: a page must ask before sending JSON, and is told no."""
    response = client.options(
        "/_control/reset",
        headers={
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code == 405
    assert "access-control-allow-origin" not in response.headers


def test_vendor_apis_keep_their_own_bodies(client: httpx.Client) -> None:
    """The guard is the control API's only: the token endpoints still take form bodies."""
    response = client.post(
        "/xero/connect/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "concord-xero",
            "client_secret": "sandbox-xero-secret",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"
