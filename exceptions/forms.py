"""The fix-in-place forms, one per `fix_form` the catalogue names (exceptions/catalogue.py).

A form only parses and checks what a person typed; the fix itself (the record edit through the
write path and the ownership rules, the write to the owning system, the retry) is
`integrations.workflows.fixes.fix_apply`. Every form carries the case's `revision` as the person
saw it, so a fix made on an old page is refused with who changed the case since.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.db.models import Model
from django.urls import reverse
from stdnum import get_cc_module
from stdnum.exceptions import ValidationError as NumberError
from stdnum.util import clean

from exceptions.catalogue import CaseType
from integrations.models import (
    Connection,
    Contract,
    LegalEntity,
    MappingSet,
    Project,
    SystemRole,
)
from integrations.workflows.fixes import FixActions

# A tax number's first two letters that are not the ISO code of their country (Greece's VAT
# numbers start with EL; a UK number is often written with UK).
VAT_PREFIXES = {"EL": "GR", "UK": "GB"}


class FixForm(forms.Form):
    """`target`: what the fix works on (integrations.workflows.fixes.FixTarget): a form may
    narrow its choices to it (a project's contracts are its customer's)."""

    revision = forms.IntegerField(widget=forms.HiddenInput, min_value=0)

    def __init__(self, *args: Any, target: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target = target
        if target is not None:
            self.narrow(target)

    def narrow(self, target: Any) -> None:
        """Limit the choices to what fits the target (nothing by default)."""

    def values(self) -> dict[str, Any]:
        """The record's fields as cleaned (the revision left out)."""
        return {k: v for k, v in self.cleaned_data.items() if k != "revision"}

    @classmethod
    def initial_of(cls, target: Any, revision: int) -> dict[str, Any]:
        """The form's fields as the target's record holds them now (or the target's own
        starting values, for a form that adds a record), and the case's revision."""
        names = [n for n in cls.base_fields if n != "revision"]
        initial = {n: v for n, v in target.initial.items() if n in names}
        record = target.record
        if record is not None:
            initial.update({n: getattr(record, n) for n in names if hasattr(record, n)})
        return {**initial, "revision": revision}


def _vat_module(country: str) -> Any:
    """python-stdnum's tax number module of a country (VAT, ABN, BN...), None if it has none."""
    try:
        return get_cc_module(country.lower(), "vat")
    except ImportError:
        return None


def tax_number_checked(number: str, country: str) -> str:
    """The tax number in its standard form ("de 811 907 980" -> "DE811907980"), checked with
    python-stdnum for the country its prefix names, else the customer's country, where that
    country has a VAT scheme stdnum knows; elsewhere it is kept as typed (trimmed). Raises
    forms.ValidationError with what is wrong, in words."""
    text = clean(number, " -./,:").upper().strip()
    if not text:
        return ""
    prefix = VAT_PREFIXES.get(text[:2], text[:2]) if text[:2].isalpha() else ""
    module = _vat_module(prefix) if prefix else None
    if module is not None:
        where = prefix
    else:
        where, module = country.upper(), _vat_module(country) if country else None
    if module is None:
        return number.strip()
    try:
        compact = str(module.validate(text))
    except NumberError as exc:
        raise forms.ValidationError(
            f"{number.strip()} is not a valid {where} tax number: {exc}", code="invalid"
        ) from exc
    # Written with its country prefix, it keeps it (how an EU VAT number is quoted on invoices).
    if module is not None and prefix == where and not compact[:2].isalpha():
        return text[:2] + compact
    return compact


class CustomerBillingProfileForm(FixForm):
    """The customer's legal billing profile (the ERP owns it): what an ERP refuses an invoice
    for. Initial values are the customer's current ones."""

    tax_number = forms.CharField(
        max_length=64,
        required=False,
        help_text="The VAT or tax number, with its country prefix (DE811907980).",
    )
    # Checked in clean_country, in words a person reads (not "at most 2 characters").
    country = forms.CharField(
        max_length=60, required=False, help_text="ISO 3166 code of the customer's country (DE)."
    )
    billing_email = forms.EmailField(required=False, label="Billing e-mail")
    billing_address = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 3}), label="Billing address"
    )

    field_order = ["tax_number", "country", "billing_email", "billing_address", "revision"]

    def clean_country(self) -> str:
        country = str(self.cleaned_data.get("country") or "").strip().upper()
        if country and not (len(country) == 2 and country.isalpha()):
            raise forms.ValidationError("Give the two-letter country code (DE, GB, FR).")
        return country

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        current = getattr(getattr(self.target, "record", None), "tax_number", None)
        if data.get("tax_number") == current:
            return data  # not changed here: a fix of the e-mail is not held up by it
        if "tax_number" in data and "country" in data:
            try:
                data["tax_number"] = tax_number_checked(data["tax_number"], data["country"])
            except forms.ValidationError as exc:
                self.add_error("tax_number", exc)
        return data


class ProjectLegalEntityForm(FixForm):
    """The legal entity the project's time is invoiced from."""

    legal_entity = forms.ModelChoiceField(
        queryset=LegalEntity.objects.order_by("code"), label="Legal entity"
    )


class ProjectContractForm(FixForm):
    """The contract that gives the project its billing terms: one of its customer's."""

    contract = forms.ModelChoiceField(queryset=Contract.objects.order_by("number"))

    def narrow(self, target: Any) -> None:
        project = target.record
        if project is not None:
            field = self.fields["contract"]
            assert isinstance(field, forms.ModelChoiceField)  # noqa: S101 - declared above
            field.queryset = Contract.objects.filter(customer_id=project.customer_id).order_by(
                "number"
            )


class ProjectStatusForm(FixForm):
    """A planned, on-hold or closed project's time is not billed; active bills it."""

    status = forms.ChoiceField(choices=Project.Status.choices)


class ExchangeRateForm(FixForm):
    """What one unit of the project's currency is worth in the legal entity's base currency on
    a date (the billing run uses a rate of the last FX_RECENT_DAYS days)."""

    date = forms.DateField(help_text="The day the rate is for (YYYY-MM-DD).")
    rate = forms.DecimalField(
        max_digits=18,
        decimal_places=8,
        min_value=Decimal("0.00000001"),
        help_text="How much one unit of the currency is in the base currency (1.17).",
    )


class RateCardForm(FixForm):
    """The bill rate of the case's role and currency on the case's contract."""

    bill_rate = forms.DecimalField(
        max_digits=14,
        decimal_places=2,
        min_value=Decimal("0"),
        label="Bill rate",
        help_text="Per hour, in the contract's currency.",
    )


class RoutingRuleForm(FixForm):
    """The ERP connection that invoices the case's legal entity."""

    connection = forms.ModelChoiceField(
        queryset=Connection.objects.filter(role=SystemRole.ERP, enabled=True).order_by("name"),
        label="ERP connection",
    )


class RecordMergeForm(FixForm):
    """Two records that are one: which to keep (the other is merged into it and goes)."""

    keep = forms.TypedChoiceField(coerce=int, choices=(), label="Keep", widget=forms.RadioSelect)
    note = forms.CharField(
        required=False, max_length=400, help_text="Why they are one (kept with the merge)."
    )

    def narrow(self, target: Any) -> None:
        field = self.fields["keep"]
        assert isinstance(field, forms.TypedChoiceField)  # noqa: S101 - declared above
        field.choices = target.initial["choices"]


class RecordFieldsForm(FixForm):
    """The fields a case names of a record a system sent that could not be stored, as the
    record's model defines them (its own validation, its choices)."""

    def narrow(self, target: Any) -> None:
        record = target.record
        if record is not None:
            self.fields.update(
                forms.fields_for_model(type(record), fields=target.initial["fields"])
            )

    @classmethod
    def initial_of(cls, target: Any, revision: int) -> dict[str, Any]:
        record = target.record
        names = target.initial.get("fields", [])
        values = {n: getattr(record, n) for n in names} if record is not None else {}
        # A relation's initial value is its key, as a form field takes it.
        for name in names:
            value = values.get(name)
            if isinstance(value, Model):
                values[name] = value.pk
        return {**values, "revision": revision}


class OwnershipDecisionForm(FixForm):
    """A system changed a field another system owns: take its value, or keep the owner's."""

    decision = forms.ChoiceField(
        choices=(("accept", "Accept the incoming value"), ("keep", "Keep the owner's value")),
        widget=forms.RadioSelect,
    )
    note = forms.CharField(required=False, max_length=400, help_text="Why (kept on the case).")


# The fixes that are a link to where the cause is fixed (an admin page) plus Retry, not a form.
# "reconciliation": a gap between the PSA, Concord's billing and the ERP, fixed where it lives
# (integrations/workflows/reconciliation.py); its retry reconciles again now.
LINK_FORMS = frozenset(
    {"outbox_replay", "inbound_replay", "connection_settings", "mapping_edit", "reconciliation"}
)


def fix_admin_path(kind: CaseType, found: FixActions) -> str | None:
    """The page a link fix's cause is fixed in (the connection's admin page; the mapping
    editor of the configuration console, on the mapping's connection and object), as the page
    and the API link it; None when the case names none."""
    if kind.fix_form == "connection_settings" and found.connection_id is not None:
        return reverse("admin:integrations_connection_change", args=[found.connection_id])
    if kind.fix_form == "mapping_edit" and found.mapping_set_id is not None:
        where = (
            MappingSet.objects.filter(pk=found.mapping_set_id)
            .values_list("connection_id", "object_type")
            .first()
        )
        return reverse("console:mapping", args=list(where)) if where else None
    return None


# fix_form (catalogue) -> the form. Every catalogue fix is here or in LINK_FORMS (a test checks).
FIX_FORMS: dict[str, type[FixForm]] = {
    "customer_billing_profile": CustomerBillingProfileForm,
    "project_legal_entity": ProjectLegalEntityForm,
    "project_contract": ProjectContractForm,
    "project_status": ProjectStatusForm,
    "exchange_rate": ExchangeRateForm,
    "rate_card": RateCardForm,
    "routing_rule": RoutingRuleForm,
    "record_merge": RecordMergeForm,
    "ownership_decision": OwnershipDecisionForm,
    "contract": RecordFieldsForm,
    "project": RecordFieldsForm,
}
