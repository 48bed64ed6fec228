from __future__ import annotations

import pytest

from integrations.mapping.errors import PathError
from integrations.mapping.paths import (
    MISSING,
    compile_path,
    get_path,
    require_path,
    set_path,
    split_list_path,
)

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


def test_a_list_path_splits_into_the_list_and_the_item_path() -> None:
    assert split_list_path("LineItems[].Tracking.0.Name") == ("LineItems", "Tracking.0.Name")
    assert split_list_path("Contact.Name") is None


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("A[].B[].C", "path 'A[].B[].C' has '[]' twice: lists inside lists are not supported"),
        ("[].Quantity", "path '[].Quantity' must read <list>[].<item path>"),
        ("LineItems[]", "path 'LineItems[]' must read <list>[].<item path>"),
        ("LineItems[]Quantity", "path 'LineItems[]Quantity' must read <list>[].<item path>"),
        ("Lines..X[].Y", "path 'Lines..X' has an empty segment"),
    ],
)
def test_a_list_path_that_does_not_read_list_then_item_is_refused(path: str, message: str) -> None:
    with pytest.raises(PathError) as caught:
        split_list_path(path)
    assert caught.value.message.startswith(message)
