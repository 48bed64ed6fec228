"""A realistic professional-services firm, built deterministically in all three systems.

``seed(scale=N, seed=S, anchor=D)`` gives the same records for the same (N, S, D). Per unit
of scale: 12 customers (US 40%, UK 35%, DE 25%), two opportunities each (one closed-won with
a contract and a project), 10 people, about 1,000 time entries over the 8 weeks before the
anchor date and one expense per 20 time entries. ``scale=100`` is 100,000 time entries, built
in a few seconds because rows are stored compact and nothing is validated or announced.

Entities: Concord Consulting Inc. (US, USD) and Concord Beratung GmbH (DE, EUR) post to the
legacy Xero tenant; Concord Consulting Ltd (UK, GBP) posts to the new one.

Some records are flawed on purpose (listed in the response under ``flawed``) so Concord's
exception handling has something to find: a customer with no VAT number invoiced under
reverse charge, time on an archived project, a customer billed in a currency the ERP lacks,
an account with no legal entity, a won opportunity with no contract, a person whose role has
no rate card, and a completed milestone whose contract has no payment terms. The engagements
with such a flaw are small ones (half an engagement's time), so most approved time bills
cleanly. Each provisioned engagement's account names its PSA client and ERP contact
(``PSA_Client_Id__c``, ``ERP_Customer_Id__c``), as provisioning writes them back.

It is also the firm's near future: per unit of scale, four prospects with a deal in
negotiation and a contract drafted for it (``Seeder.pipeline``). The response's ``later``
lists the changes the firm's sales people make once its systems are connected (the deals
closing, each a ``PATCH /_control/records/...`` body with ``after_s`` and ``what``): `make run`
plays them, so their webhooks start Concord's provisioning; one contract is still a draft.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .harvest import Harvest
    from .salesforce import Salesforce
    from .xero import Xero

from .xero import LEGACY, NEW
from .xero.formats import day_to_ts

WEEKS = 8
ENTRIES_PER_SCALE = 1000


@dataclass(frozen=True)
class Entity:
    code: str
    name: str
    country: str
    currency: str
    tenant: str
    tax_type: str  # default sales tax type in the tenant
    reverse_charge: str  # tax type for cross-border B2B services (needs the customer's VAT id)


ENTITIES = (
    Entity("US01", "Concord Consulting Inc.", "United States", "USD", LEGACY.id, "NONE", "NONE"),
    Entity(
        "UK01",
        "Concord Consulting Ltd",
        "United Kingdom",
        "GBP",
        NEW.id,
        "OUTPUT2",
        "ECZROUTPUTSERVICES",
    ),
    Entity("DE01", "Concord Beratung GmbH", "Germany", "EUR", LEGACY.id, "OUTPUT", "TAX002"),
)
ENTITY_WEIGHTS = (40, 35, 25)
ROLES = {  # role -> (USD, GBP, EUR) bill rate, cost share of the bill rate
    "Partner": ((420.0, 330.0, 380.0), 0.45),
    "Project Manager": ((210.0, 165.0, 190.0), 0.42),
    "Senior Consultant": ((240.0, 190.0, 215.0), 0.40),
    "Consultant": ((175.0, 140.0, 160.0), 0.40),
    "Engineer": ((190.0, 150.0, 170.0), 0.42),
    "Designer": ((160.0, 125.0, 145.0), 0.40),
}
PROJECT_KINDS = ("Platform", "Migration", "Analytics", "Redesign")
MILESTONES = ("Discovery", "Design sign-off", "Build complete", "Go-live")
ACTIVITIES = ("Workshop", "Build", "Review", "Planning", "Support")
UNRATED_ROLE = "Data Scientist"  # deliberately missing from the rate card
TASKS = (
    ("Development", True),
    ("Design", True),
    ("Project Management", True),
    ("Consulting", True),
    ("Internal", False),
)
CATEGORIES = (
    ("Travel", None, None),
    ("Accommodation", None, None),
    ("Meals", None, None),
    ("Mileage", "miles", 0.58),
)
FIRST = (
    "Ava",
    "Ben",
    "Chloe",
    "Daniel",
    "Elena",
    "Felix",
    "Grace",
    "Hugo",
    "Isla",
    "Jonas",
    "Kira",
    "Liam",
    "Mia",
    "Noah",
)
LAST = (
    "Adler",
    "Brooks",
    "Costa",
    "Dietrich",
    "Evans",
    "Fischer",
    "Garcia",
    "Hughes",
    "Ivanova",
    "Jensen",
    "Keller",
    "Lopez",
)
NAME_A = (
    "North",
    "Blue",
    "Silver",
    "Summit",
    "Harbor",
    "Granite",
    "Cedar",
    "Bright",
    "Iron",
    "Maple",
    "Polar",
    "Crown",
)
NAME_B = (
    "Logistics",
    "Health",
    "Analytics",
    "Foods",
    "Energy",
    "Retail",
    "Media",
    "Robotics",
    "Finance",
    "Motors",
)
SUFFIX = {"US01": "Inc.", "UK01": "Ltd", "DE01": "GmbH"}
# Prospects whose deals close once the firm's systems are connected (Seeder.pipeline): name,
# legal entity, billing model, payment terms, contract status when the deal is won.
PROSPECTS = (
    ("Quartz Dynamics Inc.", "US01", "Time and Materials", "Net 30", "Activated"),
    ("Riverside Pharma Ltd", "UK01", "Fixed Fee", "Net 30", "Activated"),
    ("Sonnenberg Maschinenbau GmbH", "DE01", "Retainer", "Net 45", "Activated"),
    ("Tidewater Shipping Ltd", "UK01", "Time and Materials", "Net 30", "Draft"),
)
CITIES = {
    "US01": ("New York", "NY", "10001"),
    "UK01": ("London", "", "EC1A 1BB"),
    "DE01": ("Berlin", "", "10115"),
}


def _ts(day: date, hour: int = 17, second: int = 0) -> float:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC).timestamp() + second


class Seeder:
    def __init__(
        self,
        salesforce: Salesforce,
        harvest: Harvest,
        xero: Xero,
        scale: int,
        seed: int,
        anchor: date,
    ) -> None:
        self.sf, self.hv, self.xero = salesforce, harvest, xero
        self.scale, self.rng, self.anchor = scale, random.Random(seed), anchor  # noqa: S311 - reproducible data, not secrets
        self.rng_seed = seed
        self.start = anchor - timedelta(weeks=WEEKS)
        self.flawed: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self._uuid_rng = random.Random(seed + 1)  # noqa: S311 - reproducible ids
        self._vat_flaw_done = False
        self._small_projects: set[Any] = set()

    def uuid(self) -> str:
        return str(uuid.UUID(int=self._uuid_rng.getrandbits(128), version=4))

    def flaw(
        self, system: str, obj: str, key: Any, problem: str, tenant: str | None = None
    ) -> None:
        entry: dict[str, Any] = {"system": system, "object": obj, "id": key, "flaw": problem}
        if tenant:
            entry["tenant"] = tenant
        self.flawed.append(entry)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    # -----------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        began = time.perf_counter()
        at = _ts(self.start - timedelta(days=30), 9)
        tasks = self.tasks(at)
        categories = self.categories(at)
        self.rate_cards(at)
        people = self.people(at)
        categories_rows = self.tracking(at)
        customers = self.customers(at)
        for n, customer in enumerate(customers):
            self.engagement(n, customer, tasks, people, categories_rows, at)
        self.work(tasks, categories)
        later = self.pipeline(people, at)
        return {
            "scale": self.scale,
            "anchor": self.anchor.isoformat(),
            "counts": dict(sorted(self.counts.items())),
            "flawed": self.flawed,
            "later": later,
            "seconds": round(time.perf_counter() - began, 3),
        }

    def tasks(self, at: float) -> dict[str, int]:
        out = {}
        for name, billable in TASKS:
            row = self.hv.insert(
                "tasks",
                {
                    "name": name,
                    "billable_by_default": billable,
                    "default_hourly_rate": None,
                    "is_default": True,
                    "is_active": True,
                },
                at=at,
                seeded=True,
            )
            out[name] = int(row.key)
        self.count("harvest.tasks", len(out))
        return out

    def categories(self, at: float) -> list[int]:
        out = []
        for name, unit_name, unit_price in CATEGORIES:
            row = self.hv.insert(
                "expense_categories",
                {"name": name, "unit_name": unit_name, "unit_price": unit_price, "is_active": True},
                at=at,
                seeded=True,
            )
            out.append(int(row.key))
        self.count("harvest.expense_categories", len(out))
        return out

    def rate_cards(self, at: float) -> None:
        for role, (rates, _) in ROLES.items():
            for currency, rate in zip(("USD", "GBP", "EUR"), rates, strict=True):
                self.hv.insert(
                    "x_rate_cards",
                    {
                        "role": role,
                        "currency": currency,
                        "hourly_rate": rate,
                        "starts_on": self.start.replace(month=1, day=1).isoformat(),
                        "ends_on": None,
                    },
                    at=at,
                    seeded=True,
                )
                self.count("harvest.x_rate_cards")

    def people(self, at: float) -> list[dict[str, Any]]:
        people: list[dict[str, Any]] = []
        roles = list(ROLES)
        for n in range(10 * self.scale):
            entity = self.rng.choices(ENTITIES, ENTITY_WEIGHTS)[0]
            role = roles[n % len(roles)]
            if n == 7:
                role = UNRATED_ROLE
            rates, cost_share = ROLES.get(role, ((180.0, 145.0, 165.0), 0.4))
            bill = rates[("USD", "GBP", "EUR").index(entity.currency)]
            first, last = FIRST[n % len(FIRST)], LAST[(n // len(FIRST) + n) % len(LAST)]
            data = {
                "first_name": first,
                "last_name": f"{last}{'' if n < len(FIRST) * len(LAST) else n}",
                "email": f"{first.lower()}.{last.lower()}{n}@concord.example",
                "telephone": "",
                "timezone": {
                    "US01": "America/New_York",
                    "UK01": "Europe/London",
                    "DE01": "Europe/Berlin",
                }[entity.code],
                "is_contractor": n % 9 == 8,
                "is_active": True,
                "weekly_capacity": 144000,
                "default_hourly_rate": bill,
                "cost_rate": round(bill * cost_share, 2),
                "roles": [role, entity.code],
                "access_roles": ["member"],
                "has_access_to_all_future_projects": False,
            }
            row = self.hv.insert("users", data, at=at, seeded=True)
            if role == UNRATED_ROLE:
                self.flaw(
                    "harvest",
                    "users",
                    row.key,
                    f"role '{UNRATED_ROLE}' has no rate card entry (x_rate_cards)",
                )
            people.append(
                {
                    "id": int(row.key),
                    "entity": entity,
                    "role": role,
                    "bill": bill,
                    "cost": data["cost_rate"],
                    "email": data["email"],
                }
            )
        by_role: dict[str, list[int]] = {}
        for person in people:
            by_role.setdefault(person["role"], []).append(person["id"])
        for role, ids in by_role.items():
            self.hv.insert("roles", {"name": role, "user_ids": ids}, at=at, seeded=True)
        self.count("harvest.users", len(people))
        return people

    def tracking(self, at: float) -> dict[str, Any]:
        out = {}
        for tenant in (LEGACY.id, NEW.id):
            row = self.xero.store.insert(
                "xero",
                "TrackingCategories",
                self.uuid(),
                {"Name": "Project", "Status": "ACTIVE", "Options": []},
                tenant,
                at=at,
                seeded=True,
            )
            out[tenant] = row
        return out

    def customers(self, at: float) -> list[dict[str, Any]]:
        customers = []
        for n in range(12 * self.scale):
            entity = self.rng.choices(ENTITIES, ENTITY_WEIGHTS)[0]
            name = f"{NAME_A[n % len(NAME_A)]} {NAME_B[(n // len(NAME_A) + n) % len(NAME_B)]}"
            if n >= len(NAME_A) * len(NAME_B):
                name += f" {n}"
            customers.append(
                {
                    "n": n,
                    "name": f"{name} {SUFFIX[entity.code]}",
                    "entity": entity,
                    "currency": entity.currency,
                }
            )
        # Flaw: a Swiss customer billed in CHF, which neither Xero tenant is subscribed to.
        if customers:
            chf = customers[min(3, len(customers) - 1)]
            chf.update(name="Alpenglow Systems AG", currency="CHF", flaw_currency=True)
        self.count("customers", len(customers))
        return customers

    def engagement(
        self,
        n: int,
        c: dict[str, Any],
        tasks: dict[str, int],
        people: list[dict[str, Any]],
        tracking: dict[str, Any],
        at: float,
    ) -> None:
        rng, entity = self.rng, c["entity"]
        created = at + n * 60
        city, state, postcode = CITIES[entity.code]
        vat = None if entity.code == "US01" else f"{entity.code[:2]}{rng.randrange(10**8, 10**9)}"
        if entity.code == "US01":
            vat = f"{rng.randrange(10, 99)}-{rng.randrange(10**6, 10**7)}"
        # Flaw: the first UK/DE customer has no VAT number in the ERP.
        missing_vat = entity.code != "US01" and not self._vat_flaw_done
        if missing_vat:
            vat, self._vat_flaw_done = None, True
        account = self.sf.insert(
            "Account",
            {
                "Name": c["name"],
                "Type": "Customer",
                "Industry": "Technology",
                "BillingCity": city,
                "BillingState": state or None,
                "BillingPostalCode": postcode,
                "BillingCountry": entity.country,
                "CurrencyIsoCode": c["currency"],
                "Legal_Entity__c": None if n == 5 else entity.code,
                "Region__c": {"US01": "Americas", "UK01": "EMEA", "DE01": "EMEA"}[entity.code],
                "Tax_Number__c": vat,
                "External_Id__c": f"CUST-{n + 1:05d}",
            },
            at=created,
            seeded=True,
        )
        if n == 5:
            self.flaw(
                "salesforce",
                "Account",
                account.key,
                "account has no legal entity (Legal_Entity__c is empty)",
            )
        self.count("salesforce.Account")
        model = ("Time and Materials", "Fixed Fee", "Retainer")[
            0 if n % 4 in (0, 1) else (1 if n % 4 == 2 else 2)
        ]
        budget = float(rng.randrange(40, 400) * 1000)
        close = self.start - timedelta(days=rng.randrange(5, 60))
        won = self.sf.insert(
            "Opportunity",
            {
                "Name": f"{c['name']} - Delivery {close.year}",
                "AccountId": account.key,
                "StageName": "Closed Won",
                "CloseDate": close.isoformat(),
                "Amount": budget,
                "Probability": 100.0,
                "CurrencyIsoCode": c["currency"],
                "Billing_Model__c": model,
                "Legal_Entity__c": entity.code,
                "External_Id__c": f"OPP-{n + 1:05d}-1",
            },
            at=created + 10,
            seeded=True,
        )
        self.sf.insert(
            "Opportunity",
            {
                "Name": f"{c['name']} - Expansion",
                "AccountId": account.key,
                "StageName": (
                    "Prospecting",
                    "Qualification",
                    "Proposal/Price Quote",
                    "Negotiation/Review",
                )[n % 4],
                "CloseDate": (self.anchor + timedelta(days=rng.randrange(10, 90))).isoformat(),
                "Amount": float(rng.randrange(20, 200) * 1000),
                "Probability": 30.0,
                "CurrencyIsoCode": c["currency"],
                "Billing_Model__c": model,
                "Legal_Entity__c": entity.code,
                "External_Id__c": f"OPP-{n + 1:05d}-2",
            },
            at=created + 20,
            seeded=True,
        )
        self.count("salesforce.Opportunity", 2)
        no_terms = model == "Fixed Fee" and not any(
            f["flaw"].startswith("contract has no payment terms") for f in self.flawed
        )
        if n == 6:
            self.flaw(
                "salesforce", "Opportunity", won.key, "closed-won opportunity has no contract"
            )
        else:
            contract = self.sf.insert(
                "Contract",
                {
                    "AccountId": account.key,
                    "Opportunity__c": won.key,
                    "Status": "Activated",
                    "StartDate": close.isoformat(),
                    "ContractTerm": 12,
                    "CurrencyIsoCode": c["currency"],
                    "Billing_Model__c": model,
                    "Payment_Terms__c": None if no_terms else "Net 30",
                    # Reverse charge (zero-rated EC services, which need the customer's VAT
                    # number) for some of the UK company's customers; the rest standard.
                    "Tax_Profile__c": "reverse-charge"
                    if entity.code == "UK01" and n % 3 == 1
                    else "standard",
                    "Budget__c": budget,
                    "Legal_Entity__c": entity.code,
                    "External_Id__c": f"CTR-{n + 1:05d}",
                },
                at=created + 30,
                seeded=True,
            )
            self.count("salesforce.Contract")
            if no_terms:
                self.flaw(
                    "salesforce",
                    "Contract",
                    contract.key,
                    "contract has no payment terms (its completed milestone cannot be invoiced)",
                )
        # PSA: client, project, assignments, milestones.
        client = self.hv.insert(
            "clients",
            {
                "name": c["name"],
                "is_active": True,
                "address": f"{city}\n{entity.country}",
                "currency": c["currency"],
                "statement_key": f"{n:032x}",
            },
            at=created + 40,
            seeded=True,
        )
        if c.get("flaw_currency"):
            self.flaw(
                "harvest",
                "clients",
                client.key,
                "client bills in CHF; no Xero tenant is subscribed to CHF",
            )
        code = f"P{entity.code[:2]}-{n + 1:04d}"
        archived = n == 4
        project = self.hv.insert(
            "projects",
            {
                "client_id": client.key,
                "name": f"{c['name'].split(' ')[0]} {PROJECT_KINDS[n % 4]}",
                "code": code,
                "is_active": not archived,
                "is_billable": True,
                "is_fixed_fee": model == "Fixed Fee",
                "bill_by": "People" if model != "Fixed Fee" else "none",
                "hourly_rate": None,
                "budget": None,
                "budget_by": "project_cost",
                "budget_is_monthly": model == "Retainer",
                "notify_when_over_budget": True,
                "over_budget_notification_percentage": 80.0,
                "show_budget_to_all": False,
                "cost_budget": budget,
                "cost_budget_include_expenses": False,
                "fee": budget if model == "Fixed Fee" else None,
                "notes": f"Opportunity {won.key}; legal entity {entity.code}",
                "starts_on": close.isoformat(),
                "ends_on": (self.anchor - timedelta(days=10)).isoformat() if archived else None,
            },
            at=created + 50,
            seeded=True,
        )
        self.count("harvest.projects")
        if archived or n == 6 or no_terms or c.get("flaw_currency"):
            self._small_projects.add(project.key)
        for name, task_id in tasks.items():
            self.hv.insert(
                "task_assignments",
                {
                    "project_id": project.key,
                    "task_id": task_id,
                    "is_active": True,
                    "billable": dict(TASKS)[name],
                    "hourly_rate": None,
                    "budget": None,
                },
                at=created + 51,
                seeded=True,
            )
        local = [p for p in people if p["entity"] is entity] or people
        team = rng.sample(local, k=min(len(local), rng.randrange(3, 7)))
        for i, person in enumerate(team):
            self.hv.insert(
                "user_assignments",
                {
                    "project_id": project.key,
                    "user_id": person["id"],
                    "is_active": True,
                    "is_project_manager": i == 0,
                    "use_default_rates": True,
                    "hourly_rate": None,
                    "budget": None,
                },
                at=created + 52,
                seeded=True,
            )
        if model == "Fixed Fee":
            for m in range(4):
                due = self.start + timedelta(weeks=2 * m + 1)
                status = (
                    "invoiced"
                    if m == 0
                    else ("complete" if due < self.anchor and m == 1 else "open")
                )
                milestone = self.hv.insert(
                    "x_milestones",
                    {
                        "project_id": project.key,
                        "name": f"Milestone {m + 1}: {MILESTONES[m]}",
                        "amount": round(budget / 4, 2),
                        "currency": c["currency"],
                        "due_on": due.isoformat(),
                        "status": status,
                        "completed_at": None
                        if status == "open"
                        else f"{due.isoformat()}T16:00:00Z",
                        "notes": None,
                        "external_reference": None,
                    },
                    at=_ts(min(due, self.anchor - timedelta(days=1))),
                    seeded=True,
                )
                self.count("harvest.x_milestones")
                if no_terms and status == "complete":
                    self.flaw(
                        "harvest",
                        "x_milestones",
                        milestone.key,
                        "milestone complete but its contract has no payment terms",
                    )
        # ERP: the customer's contact and the project's tracking option in its tenant.
        tenant = entity.tenant
        contact_data: dict[str, Any] = {
            "Name": c["name"],
            "ContactNumber": f"CUST-{n + 1:05d}",
            "ContactStatus": "ACTIVE",
            "EmailAddress": f"billing@{c['name'].split(' ')[0].lower()}{n}.example",
            "Addresses": [
                {
                    "AddressType": "STREET",
                    "AddressLine1": f"{rng.randrange(1, 200)} Main Street",
                    "City": city,
                    "PostalCode": postcode,
                    "Country": entity.country,
                }
            ],
            "Phones": [],
            "DefaultCurrency": c["currency"] if c["currency"] != "CHF" else None,
            "IsCustomer": True,
        }
        if vat:
            contact_data["TaxNumber"] = vat
        contact = self.xero.insert(
            "Contacts", self.uuid(), contact_data, tenant, at=created + 60, seeded=True
        )
        self.count("xero.Contacts")
        if missing_vat:
            self.flaw(
                "xero",
                "Contacts",
                contact.key,
                f"no VAT number (TaxNumber): invoices under reverse charge "
                f"({entity.reverse_charge}) are refused",
                tenant,
            )
        self.xero.add_option(tracking[tenant], code, tenant, seeded=True, option_id=self.uuid())
        # The engagement was provisioned before: the account names its PSA client and ERP
        # contact, as project provisioning writes them back (how the three are one customer).
        account.data.update(PSA_Client_Id__c=str(client.key), ERP_Customer_Id__c=contact.key)
        c.update(
            project=project,
            client=client,
            team=team,
            contact=contact,
            code=code,
            archived=archived,
            model=model,
        )

    def work(self, tasks: dict[str, int], categories: list[int]) -> None:
        """Time entries and expenses over the 8 weeks before the anchor, then a few invoices."""
        projects = [
            (p.key, p.data)
            for p in self.hv.store.rows("harvest", "projects")
            if p.data.get("is_billable") is not None
        ]
        if not projects:
            return
        rng = self.rng
        team_of: dict[Any, list[tuple[int, float, float]]] = {}
        users = {u.key: u.data for u in self.hv.store.rows("harvest", "users")}
        for ua in self.hv.store.rows("harvest", "user_assignments"):
            user = users[ua.data["user_id"]]
            team_of.setdefault(ua.data["project_id"], []).append(
                (ua.data["user_id"], user["default_hourly_rate"], user["cost_rate"])
            )
        task_ids = list(tasks.values())
        billable_task = {tid: dict(TASKS)[name] for name, tid in tasks.items()}
        workdays = [
            self.start + timedelta(days=d)
            for d in range(WEEKS * 7)
            if (self.start + timedelta(days=d)).weekday() < 5
        ]
        last_week = self.anchor - timedelta(days=7)
        archived_key = next((k for k, d in projects if not d["is_active"]), None)
        archived_end = next((d["ends_on"] for k, d in projects if not d["is_active"]), None)
        total = ENTRIES_PER_SCALE * self.scale
        flagged_archived = False
        # The engagements with a flaw (an archived project, a customer without a contract or
        # without payment terms, or billed in CHF) are small ones, half an engagement's time:
        # most approved time is on engagements that bill cleanly, as at a real firm.
        weights = [0.5 if key in self._small_projects else 1.0 for key, _ in projects]
        per_weight = total / sum(weights)
        made = 0
        for index, (project_id, data) in enumerate(projects):
            team = team_of.get(project_id) or []
            if not team:
                continue
            count = (
                max(1, int(per_weight * weights[index]))
                if index < len(projects) - 1
                else total - made
            )
            for i in range(count):
                day = workdays[(i * 7 + index) % len(workdays)]
                user_id, bill, cost = team[i % len(team)]
                task_id = task_ids[i % 4] if i % 17 else task_ids[4]
                approved = day < last_week
                billable = (billable_task[task_id] and data["bill_by"] != "none") or (
                    billable_task[task_id] and data["is_fixed_fee"]
                )
                entry = {
                    "user_id": user_id,
                    "project_id": project_id,
                    "task_id": task_id,
                    "spent_date": day.isoformat(),
                    "hours": rng.choice((1.0, 2.0, 2.5, 3.0, 4.0, 6.0, 7.5, 8.0)),
                    "notes": f"{ACTIVITIES[i % 5]} ({data['code']})",
                    "billable": billable,
                    "billable_rate": bill if billable and data["bill_by"] == "People" else None,
                    "cost_rate": cost,
                    "approval_status": "approved"
                    if approved
                    else ("submitted" if i % 3 else "unsubmitted"),
                    "is_billed": False,
                    "is_running": False,
                    "timer_started_at": None,
                    "started_time": None,
                    "ended_time": None,
                    "external_reference": None,
                    "invoice": None,
                }
                stamp = _ts(day + timedelta(days=7 if approved else 0), 18, i % 3600)
                row = self.hv.insert(
                    "time_entries", entry, at=min(stamp, time.time() - 1), seeded=True
                )
                made += 1
                if (
                    project_id == archived_key
                    and archived_end
                    and day.isoformat() > archived_end
                    and not flagged_archived
                ):
                    flagged_archived = True
                    self.flaw(
                        "harvest",
                        "time_entries",
                        row.key,
                        "time entry on an archived (closed) project, after its end date",
                    )
                if i % 20 == 0:
                    category = categories[(i // 20) % len(categories)]
                    expense = {
                        "user_id": user_id,
                        "project_id": project_id,
                        "expense_category_id": category,
                        "spent_date": day.isoformat(),
                        "notes": "Client visit"
                        if category == categories[0]
                        else "Engagement expense",
                        "units": 120 if category == categories[3] else None,
                        "total_cost": round(120 * 0.58, 2)
                        if category == categories[3]
                        else float(rng.randrange(20, 600)),
                        "billable": True,
                        "approval_status": "approved" if approved else "submitted",
                        "is_billed": False,
                        "receipt": None,
                        "invoice": None,
                    }
                    self.hv.insert(
                        "expenses", expense, at=min(stamp + 1, time.time() - 1), seeded=True
                    )
                    self.count("harvest.expenses")
        if archived_key is not None and not flagged_archived:
            # Guarantee the flaw exists even at tiny scales.
            team = team_of.get(archived_key) or [(self.hv.admin_id(), 150.0, 60.0)]
            day = self.anchor - timedelta(days=3)
            row = self.hv.insert(
                "time_entries",
                {
                    "user_id": team[0][0],
                    "project_id": archived_key,
                    "task_id": task_ids[0],
                    "spent_date": day.isoformat(),
                    "hours": 4.0,
                    "notes": "Late work on an archived project",
                    "billable": True,
                    "billable_rate": team[0][1],
                    "cost_rate": team[0][2],
                    "approval_status": "approved",
                    "is_billed": False,
                    "is_running": False,
                    "timer_started_at": None,
                    "started_time": None,
                    "ended_time": None,
                    "external_reference": None,
                    "invoice": None,
                },
                at=min(_ts(day, 18), time.time() - 1),
                seeded=True,
            )
            made += 1
            self.flaw(
                "harvest",
                "time_entries",
                row.key,
                "time entry on an archived (closed) project, after its end date",
            )
        self.count("harvest.time_entries", made)
        self.invoices()

    def invoices(self) -> None:
        """One historic invoice per provisioned customer (first month's work), half of them paid."""
        for n, contact in enumerate(list(self._contacts())):
            tenant, row = contact
            currency = row.data.get("DefaultCurrency")
            if not currency:
                continue
            entity = (
                next(e for e in ENTITIES if e.currency == currency)
                if currency in ("USD", "GBP", "EUR")
                else None
            )
            if entity is None:
                continue
            tax_type = (
                entity.tax_type if row.data.get("TaxNumber") or entity.code == "US01" else "NONE"
            )
            day = self.start + timedelta(days=3)
            amount = float(self.rng.randrange(5, 60) * 500)
            line = {
                "Description": f"Services {self.start} to {self.start + timedelta(days=27)}",
                "Quantity": 1.0,
                "UnitAmount": amount,
                "AccountCode": "200",
                "TaxType": tax_type,
            }
            tenant_obj = LEGACY if tenant == LEGACY.id else NEW
            number_seq = "InvoiceNumber:" + tenant
            data: dict[str, Any] = {
                "TenantID": tenant,
                "Type": "ACCREC",
                "ContactID": row.key,
                "InvoiceNumber": f"INV-{self.xero.store.next_id('xero', number_seq, 1):05d}",
                "Reference": f"SEED-{row.data['ContactNumber']}-M1",
                "CurrencyCode": currency,
                "LineAmountTypes": "Exclusive",
                "Date": day.isoformat(),
                "DueDate": (day + timedelta(days=30)).isoformat(),
                "Status": "AUTHORISED",
                "AmountPaid": 0.0,
                "PaymentIDs": [],
                "LineItems": [self.xero._line(line, "Exclusive", tenant_obj)],
            }
            data.update(self.xero.totals(data["LineItems"]))
            invoice = self.xero.insert(
                "Invoices", self.uuid(), data, tenant, at=_ts(day, 12), seeded=True
            )
            self.count("xero.Invoices")
            if n % 2 == 0:
                paid_on = day + timedelta(days=20)
                payment = {
                    "InvoiceID": invoice.key,
                    "AccountCode": "090",
                    "Date": paid_on.isoformat(),
                    "Amount": data["Total"],
                    "Reference": f"Bank transfer {data['InvoiceNumber']}",
                    "CurrencyRate": None,
                    "Status": "AUTHORISED",
                    "TenantID": tenant,
                }
                p = self.xero.insert(
                    "Payments",
                    self.uuid(),
                    payment,
                    tenant,
                    at=day_to_ts(paid_on.isoformat()),
                    seeded=True,
                )
                invoice.data.update(
                    Status="PAID",
                    AmountPaid=data["Total"],
                    PaymentIDs=[p.key],
                    FullyPaidOnDate=paid_on.isoformat(),
                )
                invoice.updated = p.updated
                self.count("xero.Payments")

    def _contacts(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for tenant in (LEGACY.id, NEW.id):
            out.extend((tenant, row) for row in self.xero.store.rows("xero", "Contacts", tenant))
        return out

    def pipeline(self, people: list[dict[str, Any]], at: float) -> list[dict[str, Any]]:
        """Per unit of scale, four prospects (an account, a contract drafted for the deal and
        an opportunity in negotiation; no PSA client or ERP contact yet) whose deals close
        once the firm's systems are connected: the changes are returned as ``later``, each
        the out-of-band change a sales person makes in Salesforce
        (``PATCH /_control/records/...``), ``after_s`` seconds after the caller is ready.
        Three close cleanly; the fourth's contract is still a draft when the deal is won
        (flawed: its billing terms are not activated). Built last and from a random
        generator of its own, so the rest of the firm is the same with or without them."""
        rng = random.Random(self.rng_seed + 2)  # noqa: S311 - reproducible data, not secrets
        later: list[dict[str, Any]] = []
        for n in range(len(PROSPECTS) * self.scale):
            name, code, model, terms, status = PROSPECTS[n % len(PROSPECTS)]
            if n >= len(PROSPECTS):
                name = f"{name} {n // len(PROSPECTS) + 1}"
            entity = next(e for e in ENTITIES if e.code == code)
            city, state, postcode = CITIES[code]
            region = {"US01": "Americas", "UK01": "EMEA", "DE01": "EMEA"}[code]
            vat = (
                f"{rng.randrange(10, 99)}-{rng.randrange(10**6, 10**7)}"
                if code == "US01"
                else f"{code[:2]}{rng.randrange(10**8, 10**9)}"
            )
            created = at + 86_400 + n * 60
            account = self.sf.insert(
                "Account",
                {
                    "Name": name,
                    "Type": "Prospect",
                    "Industry": "Technology",
                    "BillingCity": city,
                    "BillingState": state or None,
                    "BillingPostalCode": postcode,
                    "BillingCountry": entity.country,
                    "CurrencyIsoCode": entity.currency,
                    "Legal_Entity__c": code,
                    "Region__c": region,
                    "Tax_Number__c": vat,
                    "External_Id__c": f"PROS-{n + 1:05d}",
                },
                at=created,
                seeded=True,
            )
            budget = float(rng.randrange(60, 300) * 1000)
            local = [p for p in people if p["entity"] is entity] or people
            team = [str(p["email"]) for p in local]
            opportunity = self.sf.insert(
                "Opportunity",
                {
                    "Name": f"{name} - {PROJECT_KINDS[n % len(PROJECT_KINDS)]}",
                    "AccountId": account.key,
                    "StageName": "Negotiation/Review",
                    "CloseDate": self.anchor.isoformat(),
                    "Amount": budget,
                    "Probability": 80.0,
                    "CurrencyIsoCode": entity.currency,
                    "Billing_Model__c": model,
                    "Legal_Entity__c": code,
                    "Region__c": region,
                    "External_Id__c": f"PROS-{n + 1:05d}-1",
                    "Delivery_Lead__c": team[0] if team else None,
                    "Delivery_Team__c": ";".join(team[1:3]) or None,
                },
                at=created + 10,
                seeded=True,
            )
            contract = self.sf.insert(
                "Contract",
                {
                    "AccountId": account.key,
                    "Opportunity__c": opportunity.key,
                    "Status": status,
                    "StartDate": self.anchor.isoformat(),
                    "ContractTerm": 12,
                    "CurrencyIsoCode": entity.currency,
                    "Billing_Model__c": model,
                    "Payment_Terms__c": terms,
                    "Tax_Profile__c": "standard",
                    "Budget__c": budget,
                    "Legal_Entity__c": code,
                    "External_Id__c": f"PROS-CTR-{n + 1:05d}",
                },
                at=created + 20,
                seeded=True,
            )
            self.count("prospects")
            self.count("salesforce.Account")
            self.count("salesforce.Opportunity")
            self.count("salesforce.Contract")
            if status != "Activated":
                self.flaw(
                    "salesforce",
                    "Contract",
                    contract.key,
                    f"contract still {status} when its opportunity is won "
                    "(billing terms not activated)",
                )
            later.append(
                {
                    "system": "salesforce",
                    "object": "Opportunity",
                    "id": opportunity.key,
                    "changes": {"StageName": "Closed Won", "Probability": 100.0},
                    "after_s": 5 * n,
                    "what": f"{name} signs: opportunity {opportunity.key} closed won",
                }
            )
        return later


def default_anchor() -> date:
    return datetime.now(UTC).date()
