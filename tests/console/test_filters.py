"""The filter form above every console table is one include (`console/_filters.html`): each
list page shows every field of its FilterSet, keeps what was asked, sends the form to its own
list and has htmx swap the results region that is really on the page. A template that writes
the form out again by hand is refused, so a change to the form is made once."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from integrations.roles import INTEGRATION_ADMIN
from tests.factories import UserFactory, make_connection

pytestmark = pytest.mark.django_db


class _Page(HTMLParser):
    """The filter section's form, its fields (name -> value kept) and the ids on the page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.forms: list[dict[str, str | None]] = []
        self.fields: dict[str, str] = {}
        self._in_filters = 0
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "section":
            if self._in_filters:
                self._in_filters += 1
            elif "console-filters" in (a.get("class") or "").split():
                self._in_filters = 1
        if not self._in_filters:
            return
        if tag == "form":
            self.forms.append(a)
        elif tag == "input" and a.get("name"):
            self.fields[str(a["name"])] = a.get("value") or ""
        elif tag == "select" and a.get("name"):
            self._select = str(a["name"])
            self.fields[self._select] = ""
        elif tag == "option" and self._select and "selected" in a:
            self.fields[self._select] = a.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "section" and self._in_filters:
            self._in_filters -= 1


@pytest.fixture
def admin() -> Client:
    client = Client()
    client.force_login(UserFactory.create(username="ada", role=INTEGRATION_ADMIN))
    return client


PAGES = [
    # list path, a filter asked for, the region its results are in, every filter field
    ("/config/connections/", {"vendor": "xero"}, "connections-results", "q vendor role enabled"),
    ("/config/schedules/", {"kind": "polling"}, "schedules-results", "q kind enabled connection"),
    (
        "/config/rules/ownership/",
        {"owner_role": "crm"},
        "rule-results",
        "object_type owner_role scope",
    ),
    (
        "/config/rules/case-routing/",
        {"priority": "1"},
        "rule-results",
        "case_type queue priority legal_entity",
    ),
    ("/config/rules/erp-routing/", {"q": "DE"}, "rule-results", "q connection"),
]


@pytest.mark.parametrize(("path", "asked", "region", "names"), PAGES)
def test_every_console_list_shows_its_filters_through_the_one_form(
    admin: Client, path: str, asked: dict[str, str], region: str, names: str
) -> None:
    make_connection()
    response = admin.get(path, asked)
    assert response.status_code == 200
    page = _Page()
    page.feed(response.content.decode())
    [form] = page.forms
    assert form["method"] == "get"
    assert form["action"] == form["hx-get"] == path
    assert form["hx-target"] == f"#{region}"
    assert region in page.ids
    assert set(names.split()) <= set(page.fields)
    for name, value in asked.items():
        assert page.fields[name] == value


def test_no_console_template_writes_the_filter_form_out_again() -> None:
    folder = Path(settings.BASE_DIR) / "templates" / "console"
    by_hand = [
        p.name
        for p in sorted(folder.glob("*.html"))
        if p.name != "_filters.html" and "filterset.form %}" in p.read_text()
    ]
    assert by_hand == []
    users = [
        p.name for p in sorted(folder.glob("*.html")) if '"console/_filters.html"' in p.read_text()
    ]
    assert users == ["connections.html", "rules.html", "schedules.html"]
