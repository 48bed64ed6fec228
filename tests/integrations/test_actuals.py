"""Actuals for forecasting (integrations/actuals.py, GET /api/v1/actuals/, /actuals/): figures
checked by hand on a small firm, missing exchange rates shown as missing, filters, CSV = JSON,
who may read them, and a query count that does not grow with the firm."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from integrations import actuals
from integrations import models as m
from integrations.roles import FINANCE, INTEGRATION_ADMIN, PMO, SALES_OPS, VIEWER
from integrations.workflows import time_to_erp
from tests.factories import (
    ContractFactory,
    CustomerFactory,
    LegalEntityFactory,
    ProjectFactory,
    ResourceFactory,
    TimeEntryFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

JAN_FEB: dict[str, Any] = {"from": "2026-01-01", "to": "2026-02-28"}


@dataclass
class Firm:
    de: m.LegalEntity
    us: m.LegalEntity
    acme: m.Customer
    globex: m.Customer
    pa: m.Project  # EUR, DE01, time and materials
    pg: m.Project  # USD, US01, time and materials


def small_firm() -> Firm:
    """Two projects in two currencies, two workers with different cost rates (one in EUR, one in
    USD), time on both sides of the January/February boundary, one exchange rate (EUR/USD 1.25
    on 10 January: it counts for January, and is too old for February)."""
    de = LegalEntityFactory.create(code="DE01", base_currency="EUR")
    us = LegalEntityFactory.create(code="US01", base_currency="USD", country="US")
    acme = CustomerFactory.create(name="Acme GmbH", legal_entity=de)
    globex = CustomerFactory.create(name="Globex Inc", legal_entity=us, currency="USD")
    c_a = ContractFactory.create(number="C-A", customer=acme, currency="EUR")
    c_g = ContractFactory.create(number="C-G", customer=globex, currency="USD")
    m.RateCard.objects.create(contract=c_a, role="Consultant", currency="EUR", bill_rate=120)
    m.RateCard.objects.create(contract=c_g, role="Consultant", currency="USD", bill_rate=150)
    # Firm defaults: the Engineer has no contract rate anywhere.
    m.RateCard.objects.create(contract=None, role="Engineer", currency="EUR", bill_rate=100)
    m.RateCard.objects.create(contract=None, role="Engineer", currency="USD", bill_rate=140)
    pa = ProjectFactory.create(
        code="PA", name="Acme rollout", customer=acme, contract=c_a, currency="EUR"
    )
    pg = ProjectFactory.create(
        code="PG",
        name="Globex audit",
        customer=globex,
        contract=c_g,
        currency="USD",
        region=m.Project.Region.AMERICAS,
    )
    ada = ResourceFactory.create(
        name="Ada", role="Consultant", cost_rate=Decimal("60"), cost_currency="EUR"
    )
    bob = ResourceFactory.create(
        name="Bob", role="Engineer", cost_rate=Decimal("50"), cost_currency="USD"
    )

    def time(project: m.Project, who: m.Resource, day: date, hours: str, **kw: Any) -> None:
        TimeEntryFactory.create(project=project, resource=who, date=day, hours=Decimal(hours), **kw)

    time(pa, ada, date(2026, 1, 30), "8.00")
    time(pa, ada, date(2026, 1, 31), "4.00", billable=False)
    time(pa, ada, date(2026, 1, 30), "5.00", approval_state=m.ApprovalState.SUBMITTED)
    time(pa, bob, date(2026, 2, 2), "6.00")
    time(pg, bob, date(2026, 1, 15), "10.00")
    time(pg, ada, date(2026, 1, 20), "2.00")
    m.Expense.objects.create(
        resource=ada,
        project=pa,
        date=date(2026, 1, 29),
        category="Travel",
        amount=Decimal("100.00"),
        currency="EUR",
        approval_state=m.ApprovalState.APPROVED,
    )
    m.ExchangeRate.objects.create(
        base_currency="EUR", quote_currency="USD", date=date(2026, 1, 10), rate=Decimal("1.25")
    )
    return Firm(de=de, us=us, acme=acme, globex=globex, pa=pa, pg=pg)


def _report(**params: Any) -> actuals.ActualsReport:
    today = params.pop("today", date(2026, 3, 15))
    filterset = actuals.ActualsFilterSet(params, queryset=m.Project.objects.all())
    assert filterset.is_valid(), filterset.errors
    return actuals.actuals_report(filterset=filterset, today=today)


def _rows(report: actuals.ActualsReport) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (row["project_code"], row["period"]): row
        for row in (actuals.actuals_row_data(r) for r in report.rows)
    }


def test_monthly_figures_match_the_hand_count() -> None:
    small_firm()
    report = _report(**JAN_FEB)
    rows = _rows(report)
    assert list(rows) == [("PA", "2026-01"), ("PG", "2026-01"), ("PA", "2026-02")]

    jan_pa = rows[("PA", "2026-01")]
    # 8 h billable at C-A's Consultant rate 120 = 960, plus a billable expense of 100 = 1,060;
    # cost: 12 h (the 4 non-billable too; the submitted 5 h not at all) x 60 = 720 + 100 = 820.
    assert jan_pa["billable_hours"] == "8.00"
    assert jan_pa["non_billable_hours"] == "4.00"
    assert jan_pa["hours"] == "12.00"
    assert jan_pa["time_revenue"] == "960.00"
    assert jan_pa["expense_revenue"] == "100.00"
    assert jan_pa["revenue"] == "1060.00"
    assert jan_pa["labour_cost"] == "720.00"
    assert jan_pa["expense_cost"] == "100.00"
    assert jan_pa["cost"] == "820.00"
    assert jan_pa["margin"] == "240.00"
    assert jan_pa["margin_pct"] == "22.6"  # 240 / 1,060
    assert jan_pa["base_currency"] == "EUR"
    assert (jan_pa["revenue_base"], jan_pa["cost_base"], jan_pa["margin_base"]) == (
        "1060.00",
        "820.00",
        "240.00",
    )
    assert jan_pa["missing_rates"] == []

    jan_pg = rows[("PG", "2026-01")]
    # Bob 10 h at the firm's default Engineer rate in USD (140) = 1,400; Ada 2 h at C-G's
    # Consultant rate 150 = 300. Cost: Bob 10 x 50 USD = 500; Ada 2 x 60 EUR = 120 EUR x 1.25
    # = 150 USD.
    assert jan_pg["billable_hours"] == "12.00"
    assert jan_pg["currency"] == "USD"
    assert jan_pg["revenue"] == "1700.00"
    assert jan_pg["cost"] == "650.00"
    assert jan_pg["margin"] == "1050.00"
    assert jan_pg["margin_pct"] == "61.8"
    assert jan_pg["revenue_base"] == "1700.00"
    assert jan_pg["unpriced_hours"] == "0.00"

    feb_pa = rows[("PA", "2026-02")]
    # Bob 6 h at the default Engineer EUR rate 100 = 600. His cost is 300 USD, and the only
    # USD/EUR rate (10 January) is older than 35 days before 28 February: missing, not 0.
    assert feb_pa["revenue"] == "600.00"
    assert feb_pa["revenue_base"] == "600.00"
    assert feb_pa["labour_cost"] is None
    assert feb_pa["cost"] is None
    assert feb_pa["margin"] is None
    assert feb_pa["margin_pct"] is None
    assert feb_pa["cost_base"] is None
    assert feb_pa["margin_base"] is None
    assert feb_pa["missing_rates"] == ["USD/EUR"]

    totals = {t["base_currency"]: t for t in map(actuals.actuals_total_data, report.totals)}
    assert totals["EUR"] == {
        "base_currency": "EUR",
        "rows": 2,
        "rows_missing": 1,  # February: its money is not in the totals, its hours are
        "billable_hours": "14.00",
        "non_billable_hours": "4.00",
        "hours": "18.00",
        "unpriced_hours": "0.00",
        "revenue_base": "1060.00",
        "cost_base": "820.00",
        "margin_base": "240.00",
        "margin_pct": "22.6",
    }
    assert totals["USD"]["revenue_base"] == "1700.00"
    assert totals["USD"]["margin_pct"] == "61.8"


def test_a_rate_within_35_days_of_the_period_end_fills_in_the_missing_figures() -> None:
    small_firm()
    # The inverse direction counts too (the billing run's rule): 1 USD = 0.8 EUR.
    m.ExchangeRate.objects.create(
        base_currency="USD", quote_currency="EUR", date=date(2026, 2, 20), rate=Decimal("0.8")
    )
    feb_pa = _rows(_report(**JAN_FEB))[("PA", "2026-02")]
    assert feb_pa["labour_cost"] == "240.00"  # 300 USD x 0.8
    assert feb_pa["cost"] == "240.00"
    assert feb_pa["margin"] == "360.00"
    assert feb_pa["margin_pct"] == "60.0"
    assert feb_pa["missing_rates"] == []
    assert actuals.FX_RECENT_DAYS == time_to_erp.FX_RECENT_DAYS


def test_quarters_and_weeks_group_the_same_entries() -> None:
    small_firm()
    q1 = _rows(_report(period="quarter", **JAN_FEB))
    assert list(q1) == [("PA", "2026-Q1"), ("PG", "2026-Q1")]
    assert q1[("PA", "2026-Q1")]["billable_hours"] == "14.00"
    assert q1[("PA", "2026-Q1")]["time_revenue"] == "1560.00"  # 960 + 600
    # The quarter closes on 31 March: the January rate is too old for it, so USD cost is missing.
    assert q1[("PA", "2026-Q1")]["missing_rates"] == ["USD/EUR"]
    assert q1[("PG", "2026-Q1")]["missing_rates"] == ["EUR/USD"]
    weeks = _report(period="week", **{"from": "2026-01-28", "to": "2026-02-03"})
    assert (weeks.start, weeks.end) == (date(2026, 1, 26), date(2026, 2, 8))
    assert [(r.project.code, r.period) for r in weeks.rows] == [
        ("PA", "2026-W05"),
        ("PA", "2026-W06"),
    ]
    assert weeks.rows[0].billable_hours == Decimal("8.00")
    assert weeks.rows[0].non_billable_hours == Decimal("4.00")


def test_billed_waived_fixed_fee_milestones_and_no_contract() -> None:
    firm = small_firm()
    pa_entry = m.TimeEntry.objects.get(project=firm.pa, hours=Decimal("8.00"))
    # A billing run took the 8 h at the old rate of 110: the billed amount stands, not 960.
    m.BillingEvent.objects.create(
        source=m.BillingEvent.Source.TIME,
        time_entry=pa_entry,
        project=firm.pa,
        contract=firm.pa.contract,
        legal_entity=firm.de,
        description="TE",
        quantity=Decimal("8"),
        unit_amount=Decimal("110"),
        amount=Decimal("880.00"),
        currency="EUR",
    )
    pg_entry = m.TimeEntry.objects.get(project=firm.pg, hours=Decimal("2.00"))
    m.BillingEvent.objects.create(
        source=m.BillingEvent.Source.TIME,
        time_entry=pg_entry,
        project=firm.pg,
        contract=firm.pg.contract,
        legal_entity=firm.us,
        description="TE",
        unit_amount=Decimal("150"),
        amount=Decimal("300.00"),
        currency="USD",
        status=m.BillingEvent.Status.WAIVED,
    )
    fixed = ContractFactory.create(
        number="C-F", customer=firm.acme, billing_model=m.Contract.BillingModel.FIXED_FEE
    )
    pf = ProjectFactory.create(code="PF", customer=firm.acme, contract=fixed, currency="EUR")
    worker = m.Resource.objects.get(name="Ada")
    TimeEntryFactory.create(project=pf, resource=worker, date=date(2026, 1, 12), hours=5)
    m.Milestone.objects.create(
        project=pf,
        name="Design signed off",
        amount=Decimal("5000.00"),
        currency="EUR",
        due_date=date(2026, 3, 31),
        status=m.Milestone.Status.COMPLETE,
        completed_at=datetime(2026, 1, 20, 10, tzinfo=UTC),
    )
    m.Milestone.objects.create(
        project=pf, name="Build", amount=Decimal("9000"), currency="EUR", due_date=date(2026, 1, 5)
    )
    pn = ProjectFactory.create(code="PN", customer=firm.acme, contract=None, currency="EUR")
    TimeEntryFactory.create(project=pn, resource=worker, date=date(2026, 1, 12), hours=3)

    rows = _rows(_report(**JAN_FEB))
    assert rows[("PA", "2026-01")]["time_revenue"] == "880.00"
    assert rows[("PG", "2026-01")]["time_revenue"] == "1400.00"  # the waived 300 earns nothing
    pf_jan = rows[("PF", "2026-01")]
    # Fixed fee: 5 h earn nothing by the hour and cost 300; the complete milestone earns 5,000
    # in the month it was completed; the planned one nothing.
    assert pf_jan["time_revenue"] == "0.00"
    assert pf_jan["milestone_revenue"] == "5000.00"
    assert pf_jan["cost"] == "300.00"
    assert pf_jan["margin"] == "4700.00"
    assert pf_jan["unpriced_hours"] == "0.00"
    pn_jan = rows[("PN", "2026-01")]
    # No contract: the 3 billable hours cannot be priced yet; they are flagged, not valued.
    assert pn_jan["unpriced_hours"] == "3.00"
    assert pn_jan["revenue"] == "0.00"
    assert pn_jan["cost"] == "180.00"


def test_a_project_with_no_legal_entity_has_no_base_figures() -> None:
    firm = small_firm()
    firm.pg.legal_entity = None
    firm.pg.save()
    row = _rows(_report(**JAN_FEB))[("PG", "2026-01")]
    assert row["revenue"] == "1700.00"
    assert row["base_currency"] is None
    assert row["revenue_base"] is None
    report = _report(**JAN_FEB)
    assert [t.base_currency for t in report.totals] == ["EUR", None]


def test_filters_choose_projects_and_dates() -> None:
    firm = small_firm()

    def codes(**params: Any) -> list[tuple[str, str]]:
        return [(r.project.code, r.period) for r in _report(**JAN_FEB, **params).rows]

    assert codes(legal_entity=firm.de.pk) == [("PA", "2026-01"), ("PA", "2026-02")]
    assert codes(region="americas") == [("PG", "2026-01")]
    assert codes(customer=firm.globex.pk) == [("PG", "2026-01")]
    assert codes(project="PA") == [("PA", "2026-01"), ("PA", "2026-02")]
    assert codes(project="PA", region="americas") == []
    assert [(r.project.code, r.period) for r in _report(**{"from": "2026-02-10"}).rows] == [
        ("PA", "2026-02")
    ]
    # Widened to whole months.
    report = _report(**{"from": "2026-01-20", "to": "2026-01-21"})
    assert (report.start, report.end) == (date(2026, 1, 1), date(2026, 1, 31))
    # Default: the 12 months up to today.
    report = _report(today=date(2026, 2, 14))
    assert (report.start, report.end) == (date(2025, 3, 1), date(2026, 2, 28))
    assert len(report.rows) == 3


def _api(role: str) -> APIClient:
    client = APIClient()
    client.force_authenticate(UserFactory.create(role=role))
    return client


def test_api_json_and_csv_hold_the_same_rows() -> None:
    small_firm()
    client = _api(FINANCE)
    answer = client.get("/api/v1/actuals/", {**JAN_FEB, "format": "json"})
    assert answer.status_code == 200
    body = answer.json()
    assert (body["period"], body["from"], body["to"]) == ("month", "2026-01-01", "2026-02-28")
    assert len(body["rows"]) == 3
    assert body["rows"][2]["cost"] is None
    assert body["rows"][2]["missing_rates"] == ["USD/EUR"]

    csv_answer = client.get("/api/v1/actuals/", {**JAN_FEB, "format": "csv"})
    assert csv_answer.status_code == 200
    assert csv_answer["Content-Type"].startswith("text/csv")
    assert "actuals-month-20260101-20260228.csv" in csv_answer["Content-Disposition"]
    text = b"".join(csv_answer.streaming_content).decode()  # type: ignore[attr-defined]
    lines = list(csv.DictReader(io.StringIO(text)))
    assert list(lines[0]) == actuals.COLUMNS
    as_csv = [
        {c: actuals.actuals_csv_cell(c, row[c]) for c in actuals.COLUMNS} for row in body["rows"]
    ]
    assert lines == as_csv
    assert lines[2]["cost"] == ""
    assert lines[2]["missing_rates"] == "USD/EUR"

    # The page's downloads are the same files.
    page = Client()
    page.force_login(UserFactory.create(role=PMO))
    download = page.get("/actuals/", {**JAN_FEB, "format": "csv"})
    assert b"".join(download.streaming_content).decode() == text  # type: ignore[attr-defined]
    as_json = page.get("/actuals/", {**JAN_FEB, "format": "json"})
    assert "attachment" in as_json["Content-Disposition"]
    assert json.loads(as_json.content) == body


def test_api_refuses_bad_filters_in_words() -> None:
    client = _api(FINANCE)
    answer = client.get("/api/v1/actuals/", {"from": "2026-03-01", "to": "2026-01-01"})
    assert answer.status_code == 400
    assert answer.json() == {"to": ["The end date is before the start date."]}
    assert client.get("/api/v1/actuals/", {"period": "year"}).status_code == 400
    answer = client.get("/api/v1/actuals/", {"from": "2020-01-01", "to": "2026-01-01"})
    assert answer.json() == {"to": ["Choose at most three years at a time."]}
    csv_refusal = client.get("/api/v1/actuals/", {"project": "NOPE", "format": "csv"})
    assert csv_refusal.status_code == 400
    assert csv_refusal.content.decode().startswith("field,message")
    assert "project,Select a valid choice." in csv_refusal.content.decode()


@pytest.mark.parametrize(
    ("role", "status"),
    [(FINANCE, 200), (PMO, 200), (INTEGRATION_ADMIN, 200), (SALES_OPS, 403), (VIEWER, 403)],
)
def test_who_may_read_actuals(role: str, status: int) -> None:
    assert _api(role).get("/api/v1/actuals/").status_code == status
    page = Client()
    page.force_login(UserFactory.create(role=role))
    assert page.get("/actuals/").status_code == status
    assert page.get("/actuals/", {"format": "csv"}).status_code == status


def test_anonymous_callers_are_turned_away() -> None:
    assert APIClient().get("/api/v1/actuals/").status_code == 401
    answer = Client().get("/actuals/")
    assert answer.status_code == 302
    assert answer["Location"].startswith("/login/")


def test_page_shows_rows_totals_missing_rates_and_download_links() -> None:
    firm = small_firm()
    page = Client()
    page.force_login(UserFactory.create(role=FINANCE))
    answer = page.get("/actuals/", {**JAN_FEB, "legal_entity": firm.de.pk})
    assert answer.status_code == 200
    html = answer.content.decode()
    assert "1,060.00 EUR" in html
    assert "No exchange rate for USD/EUR in the 35 days to 28 Feb 2026" in html
    assert "1 row missing an exchange rate" in html
    assert "Globex" not in html.split('id="actuals-results"')[1]
    assert (
        f"?from=2026-01-01&amp;to=2026-02-28&amp;legal_entity={firm.de.pk}&amp;format=csv" in html
    )

    empty = page.get("/actuals/", {"from": "2025-01-01", "to": "2025-01-31"})
    assert "No approved time, complete milestones or approved expenses" in empty.content.decode()

    fragment = page.get("/actuals/", JAN_FEB, headers={"HX-Request": "true"})
    assert fragment.content.decode().lstrip().startswith('<section id="actuals-results"')

    refused = page.get("/actuals/", {"from": "2026-03-01", "to": "2026-01-01"})
    assert refused.status_code == 400
    assert "The end date is before the start date." in refused.content.decode()


def _count(call: Callable[[], Any]) -> int:
    with CaptureQueriesContext(connection) as queries:
        call()
    return len(queries)


def test_query_count_does_not_grow_with_the_firm() -> None:
    firm = small_firm()
    finance = Client()
    finance.force_login(UserFactory.create(role=FINANCE))
    api = _api(FINANCE)

    def calls() -> tuple[int, int, int]:
        return (
            _count(lambda: _report(**JAN_FEB)),
            _count(lambda: finance.get("/actuals/", JAN_FEB)),
            _count(lambda: api.get("/api/v1/actuals/", JAN_FEB)),
        )

    calls()  # the first call caches the user's permissions on the user object
    small = calls()
    assert small[0] == 6
    for n in range(8):
        customer = CustomerFactory.create(legal_entity=firm.de)
        contract = ContractFactory.create(customer=customer)
        project = ProjectFactory.create(customer=customer, contract=contract)
        for day in (5, 6, 7, 40):
            worker = ResourceFactory.create(role="Consultant" if n % 2 else "Engineer")
            TimeEntryFactory.create(
                project=project, resource=worker, date=date(2026, 1, 1 + day % 28)
            )
        m.Milestone.objects.create(
            project=project,
            name="M",
            amount=Decimal("10"),
            currency="EUR",
            status=m.Milestone.Status.COMPLETE,
            completed_at=datetime(2026, 2, 3, tzinfo=UTC),
        )
    assert len(_report(**JAN_FEB).rows) == 3 + 16
    assert calls() == small


def test_page_pages_the_rows_and_keeps_the_filters() -> None:
    entity = LegalEntityFactory.create(code="DE01")
    worker = ResourceFactory.create()
    for n in range(9):
        project = ProjectFactory.create(code=f"Q{n}", customer=CustomerFactory(legal_entity=entity))
        m.TimeEntry.objects.bulk_create(
            m.TimeEntry(
                project=project,
                resource=worker,
                date=date(2025, month, 3),
                hours=Decimal("1.00"),
                approval_state=m.ApprovalState.APPROVED,
            )
            for month in range(1, 13)
        )
    page = Client()
    page.force_login(UserFactory.create(role=FINANCE))
    year: dict[str, Any] = {"from": "2025-01-01", "to": "2025-12-31", "legal_entity": entity.pk}
    first = page.get("/actuals/", year).content.decode()
    assert first.count('<tr id="row-') == 100
    assert "Page 1 of 2 (108 rows)" in first
    # The totals cover every page.
    assert '<td class="num">108</td>' in first
    next_link = f"?from=2025-01-01&amp;to=2025-12-31&amp;legal_entity={entity.pk}&amp;page=2"
    assert f'href="{next_link}"' in first
    second = page.get("/actuals/", {**year, "page": 2}).content.decode()
    assert second.count('<tr id="row-') == 8
