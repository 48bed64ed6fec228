"""The workflows speak canonical: no Xero field name and no vendor operation name appears in
integrations/workflows/ (the sync layer renders payloads with the published mappings and takes
operations from the vendor registry)."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

from integrations.sync import steps
from integrations.vendors import VENDORS

WORKFLOWS = Path(__file__).resolve().parents[3] / "integrations" / "workflows"
PLAIN_NOUNS = frozenset({"Invoice"})


def _xero_field_names() -> set[str]:
    """Every field name the Xero default mappings read or write (path segments, no indexes)."""
    names = set()
    for mapping in VENDORS["xero"].mappings:
        specs = [*mapping.fields, *mapping.replaces]
        paths = [mapping.external_id_path, mapping.version_path, *(s.vendor_path for s in specs)]
        paths += [str(p) for s in specs for p in s.options.get("paths", [])]
        for path in paths:
            for segment in path.replace("[]", "").split("."):
                if segment and not segment.isdigit():
                    names.add(segment)
    # A payment's ``Invoice.InvoiceID`` makes "Invoice" a path segment; it is also the English
    # noun of Concord's own labels ("Invoice 42 (Acme, UK01)"). ``InvoiceID`` is still found.
    return names - PLAIN_NOUNS


def _operation_names() -> set[str]:
    return {op.name for entry in VENDORS.values() for op in entry.operations.values()}


def _findings(source: str, names: set[str], operations: set[str]) -> list[str]:
    """Vendor names in one module's text: any string literal naming a Xero field (``"Status"``,
    ``"Contact.ContactID"``), any CamelCase Xero field or operation name anywhere, comments
    included. A plain word such as Status is only a finding inside quotes: ``Invoice.Status``
    is Concord's own TextChoices."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.STRING:
            words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", token.string))
            found += [f"{token.start[0]}: {n} in a string" for n in sorted(words & names)]
    distinctive = {n for n in names if re.search(r"[a-z][A-Z]", n)} | operations
    for number, line in enumerate(source.splitlines(), start=1):
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", line))
        found += [f"{number}: {n}" for n in sorted(words & distinctive)]
    return found


def test_the_check_finds_a_payload_built_by_hand() -> None:
    # So the test below can fail: this is what _xero_invoice used to look like.
    sample = (
        'payload = {"Type": "ACCREC", "LineItems": [{"AccountCode": code}]}\n'
        'operation = "put_invoices"  # LineAmountTypes are Exclusive\n'
    )
    found = _findings(sample, _xero_field_names(), _operation_names())
    assert sorted(found) == [
        "1: AccountCode",
        "1: AccountCode in a string",
        "1: LineItems",
        "1: LineItems in a string",
        "1: Type in a string",
        "2: LineAmountTypes",
        "2: put_invoices",
    ]


def test_no_vendor_field_or_operation_name_in_the_workflows() -> None:
    names, operations = _xero_field_names(), _operation_names()
    assert {"LineItems", "AccountCode", "Reference", "Contact", "ContactID"} <= names
    assert {"put_invoices", "put_contacts", "create_client", "create_account"} <= operations
    # A workflow's own step names are Concord's: billing's "post_invoice" step happens to share
    # its name with Xero's invoice-update operation, which no workflow writes.
    own_steps = {step for _, step in steps._handlers}
    assert operations & own_steps == {"post_invoice"}
    operations -= own_steps
    modules = sorted(WORKFLOWS.rglob("*.py"))
    assert modules, "no workflow modules found"
    found = {
        str(path.relative_to(WORKFLOWS)): hits
        for path in modules
        if (hits := _findings(path.read_text(), names, operations))
    }
    assert found == {}
