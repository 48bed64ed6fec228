from __future__ import annotations

import pytest

from integrations.mapping.errors import PathError
from integrations.mapping.paths import MISSING, compile_path, get_path, require_path, set_path

INVOICE = {
    "InvoiceID": "inv-1",
    "Contact": {"ContactID": "c-1", "Name": None},
    "LineItems": [
        {"Description": "a", "Tracking": []},
        {"Description": "b", "Tracking": [{"Name": "Region", "Option": "EMEA"}]},
    ],
}


def test_get_nested_keys_and_list_indexes() -> None:
    assert get_path(INVOICE, "InvoiceID") == "inv-1"
    assert get_path(INVOICE, "Contact.ContactID") == "c-1"
    assert get_path(INVOICE, "LineItems.1.Tracking.0.Option") == "EMEA"
    assert get_path(INVOICE, "LineItems.-1.Description") == "b"


def test_missing_is_distinct_from_an_explicit_null() -> None:
    assert get_path(INVOICE, "Contact.Name") is None
    assert get_path(INVOICE, "Contact.Email") is MISSING
    assert get_path(INVOICE, "LineItems.5.Description") is MISSING
    assert get_path(INVOICE, "LineItems.0.Tracking.0.Option") is MISSING
    assert get_path(INVOICE, "InvoiceID.0") is MISSING  # a string is not a container
    assert get_path(INVOICE, "Contact.Email", default="") == ""


def test_require_says_where_the_path_broke() -> None:
    with pytest.raises(PathError, match=r"LineItems.0.Tracking has 0 item\(s\), no index 0"):
        require_path(INVOICE, "LineItems.0.Tracking.0.Option")
    with pytest.raises(PathError, match="Contact has no 'Email'"):
        require_path(INVOICE, "Contact.Email")
    with pytest.raises(PathError, match="InvoiceID is a str, not an object"):
        require_path(INVOICE, "InvoiceID.Sub")
    with pytest.raises(PathError, match="the payload has no 'Nope'"):
        require_path(INVOICE, "Nope")
    assert require_path(INVOICE, "Contact.Name") is None


def test_set_creates_objects_and_lists_on_the_way() -> None:
    out: dict[str, object] = {}
    set_path(out, "Contact.ContactID", "c-1")
    set_path(out, "LineItems.2.Tracking.0.Option", "EMEA")
    set_path(out, "LineItems.0.Description", "first")
    assert out == {
        "Contact": {"ContactID": "c-1"},
        "LineItems": [
            {"Description": "first"},
            None,
            {"Tracking": [{"Option": "EMEA"}]},
        ],
    }


def test_set_refuses_to_write_through_a_scalar() -> None:
    out = {"Name": "Acme"}
    with pytest.raises(PathError, match=r"cannot write 'Name\.First'"):
        set_path(out, "Name.First", "x")


@pytest.mark.parametrize("bad", ["", "  ", "a..b", ".a", "a."])
def test_malformed_paths_are_refused(bad: str) -> None:
    with pytest.raises(PathError):
        compile_path(bad)


def test_paths_are_compiled_once() -> None:
    assert compile_path("Addresses.0.City") is compile_path("Addresses.0.City")
    assert compile_path("Addresses.0.City").steps == (
        ("Addresses", None),
        ("0", 0),
        ("City", None),
    )
