"""An outbound mapping change made in the editor reaches the ERP: an integration admin books one
legal entity's revenue to another Xero account through the page's forms (a draft, a value-map
entry keyed by the entity's code, publish), the editor shows the payload change beside the
invoice last sent, and the next invoice the Xero sandbox receives carries the new account code
while the one already sent stays as sent. (tests/integrations/sync/test_outbound.py makes the
same change through the services.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from integrations.mapping.selectors import mapping_cache_clear
from integrations.models import AuditEvent, Connection, Invoice, MappingSet, ValueMap
from integrations.roles import INTEGRATION_ADMIN
from integrations.sync.dispatch import outbox_dispatch
from integrations.workflows.time_to_erp import billing_run
from tests.factories import UserFactory
from tests.integrations.conftest import (  # noqa: F401 - fixtures
    Sandbox,
    isolated_state,
    make_connection,
    sandbox,
    sandbox_url,
)
from tests.integrations.sync.test_outbound import (  # noqa: F401 - the firm and its helpers
    _account_codes,
    _approve_time,
    xero,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_mapping_cache() -> Iterator[None]:
    mapping_cache_clear()
    yield
    mapping_cache_clear()


def _text(response: Any) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


def test_an_account_code_changed_in_the_editor_reaches_the_next_invoice_xero_receives(
    xero: Connection,  # noqa: F811
    sandbox: Sandbox,  # noqa: F811
    django_capture_on_commit_callbacks: Any,
) -> None:
    _approve_time(2, 3)
    assert billing_run().invoices == 1
    assert outbox_dispatch(connection_id=xero.pk, worker="test").done == 1
    first = Invoice.objects.get()
    assert _account_codes(sandbox, first) == ["200", "200"]  # the map's default: "Sales"

    admin = Client()
    admin.force_login(UserFactory.create(username="ada", role=INTEGRATION_ADMIN))
    editor = reverse("console:mapping", args=[xero.pk, "Invoices"])

    def post(name: str, data: dict[str, str] | None = None, *args: Any) -> Any:
        address = reverse(f"console:{name}", args=[xero.pk, "Invoices", *args])
        response = admin.post(address, {"tab": "out", **(data or {})})
        assert response.status_code == 302, _text(response)
        return response

    page = _text(admin.get(editor, {"direction": "out"}))
    assert "Recent Invoices sent to Xero" in page
    assert "xero_sales_account" in page
    assert "Looked up by Concord's value; gives the value sent to Xero." in page

    post("mapping_draft")
    post("mapping_entry", {"vendor_value": "UK01", "canonical_value": "260"}, "xero_sales_account")

    # Before publishing: the invoice last sent, rendered by the draft, beside what was sent.
    page = _text(admin.get(editor, {"direction": "out"}))
    assert "v2 would send it differently from the published v1:" in page
    assert (
        '<tr class="mapping-changed"><td><code>LineItems.0.AccountCode</code></td><td>200</td>'
        "<td>260</td></tr>"
    ) in page
    assert ValueMap.objects.get(name="xero_sales_account").entries.count() == 0  # not yet

    with django_capture_on_commit_callbacks(execute=True):
        post("mapping_publish")
    published = MappingSet.objects.get(connection=xero, object_type="Invoices", status="published")
    assert published.version == 2
    assert published.value_maps["xero_sales_account"] == {
        "entries": {"UK01": "260"},
        "default": "200",
    }
    audit = AuditEvent.objects.filter(object_type="valuemap", actor_label="ada").get()
    assert audit.changes["entries"] == [{}, {"UK01": "260"}]

    _approve_time(4)
    assert billing_run().invoices == 1
    assert outbox_dispatch(connection_id=xero.pk, worker="test").done == 1
    second = Invoice.objects.exclude(pk=first.pk).get()
    assert _account_codes(sandbox, second) == ["260"]
    assert _account_codes(sandbox, first) == ["200", "200"]  # what was sent stays as sent
