"""Factories for the canonical records, connections and users the tests need."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import factory
from django.contrib.auth.models import Group, User

from integrations import models as m
from integrations.services.connections import connection_create


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("correct horse battery staple")

    @factory.post_generation
    def role(self, create: bool, extracted: str | None, **kwargs: object) -> None:
        if create and extracted:
            self.groups.add(Group.objects.get(name=extracted))  # type: ignore[attr-defined]


class LegalEntityFactory(factory.django.DjangoModelFactory[m.LegalEntity]):
    class Meta:
        model = m.LegalEntity

    code = factory.Sequence(lambda n: f"LE{n:02d}")
    name = factory.Sequence(lambda n: f"Concord Entity {n}")
    country = "DE"
    base_currency = "EUR"


class CustomerFactory(factory.django.DjangoModelFactory[m.Customer]):
    class Meta:
        model = m.Customer

    name = factory.Sequence(lambda n: f"Customer {n}")
    legal_entity = factory.SubFactory(LegalEntityFactory)
    country = "DE"
    tax_number = factory.Sequence(lambda n: f"DE{n:09d}")
    currency = "EUR"


class ContractFactory(factory.django.DjangoModelFactory[m.Contract]):
    class Meta:
        model = m.Contract

    number = factory.Sequence(lambda n: f"C-{n}")
    customer = factory.SubFactory(CustomerFactory)
    legal_entity = factory.SelfAttribute("customer.legal_entity")
    billing_model = m.Contract.BillingModel.TIME_AND_MATERIALS
    currency = "EUR"
    total_value = Decimal("100000")


class ProjectFactory(factory.django.DjangoModelFactory[m.Project]):
    class Meta:
        model = m.Project

    code = factory.Sequence(lambda n: f"P-{n}")
    name = factory.Sequence(lambda n: f"Project {n}")
    customer = factory.SubFactory(CustomerFactory)
    legal_entity = factory.SelfAttribute("customer.legal_entity")
    region = m.Project.Region.EMEA
    currency = "EUR"
    status = m.Project.Status.ACTIVE


class ResourceFactory(factory.django.DjangoModelFactory[m.Resource]):
    class Meta:
        model = m.Resource

    name = factory.Sequence(lambda n: f"Worker {n}")
    email = factory.Sequence(lambda n: f"worker{n}@example.invalid")
    role = "Consultant"
    cost_rate = Decimal("70")
    cost_currency = "EUR"


class TimeEntryFactory(factory.django.DjangoModelFactory[m.TimeEntry]):
    class Meta:
        model = m.TimeEntry

    resource = factory.SubFactory(ResourceFactory)
    project = factory.SubFactory(ProjectFactory)
    date = date(2026, 11, 2)
    hours = Decimal("7.50")
    approval_state = m.ApprovalState.APPROVED


def make_connection(**overrides: object) -> m.Connection:
    fields: dict[str, object] = {
        "name": "Xero (new)",
        "role": "erp",
        "vendor": "xero",
        "base_url": "http://127.0.0.1:8100/xero/api.xro/2.0",
        "credentials": {"client_id": "cid", "client_secret": "s3cr3t-value-for-tests"},
    }
    fields.update(overrides)
    return connection_create(**fields)  # type: ignore[arg-type]
