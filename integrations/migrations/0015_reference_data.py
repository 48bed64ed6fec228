"""Reference data on a schedule (issue 11 item 6).

- Rate cards: the firm's default bill rate per role and currency is read from the PSA (the
  sandbox's Harvest ``x_rate_cards``), so the PSA owns ``ratecard``; a contract's negotiated
  rate is commercial terms, so the ``contract`` field stays the CRM's. Applied only where the
  seeded rule (0002) still stands: an admin's own decision is kept.
- Tax rates: the match rule that makes one tax rate of the same code from every ERP
  organisation (integrations/sync/identity.py ``DEFAULT_MATCH_RULES``), with the keys of the
  tax rates kept so far, so a polled rate links to a hand-made one of its code.

Existing connections start reading the new objects (Harvest ``x_rate_cards``, Xero
``TaxRates``) once their default mappings are published: ``manage.py mapping_defaults_install``
(which also upgrades the Harvest users mapping: no default cost rate of 0).
"""

from django.db import migrations

from integrations.sync.identity import CONCORD, match_rules_install_defaults, name_key

SEEDED = ("crm", "Commercial terms: negotiated rates")
RATECARD = ("psa", "The firm's default rate card: read from the PSA (x_rate_cards)")
CONTRACT_RATE = ("crm", "A contract's negotiated rates are commercial terms")


def forward(apps, schema_editor):  # type: ignore[no-untyped-def]
    OwnershipRule = apps.get_model("integrations", "OwnershipRule")
    rule = OwnershipRule.objects.filter(object_type="ratecard", field="").first()
    if rule is None or (rule.owner_role, rule.note) == SEEDED:
        OwnershipRule.objects.update_or_create(
            object_type="ratecard",
            field="",
            defaults={"owner_role": RATECARD[0], "note": RATECARD[1]},
        )
        OwnershipRule.objects.get_or_create(
            object_type="ratecard",
            field="contract",
            defaults={"owner_role": CONTRACT_RATE[0], "note": CONTRACT_RATE[1]},
        )
    match_rules_install_defaults(registry=apps)
    MatchRule = apps.get_model("integrations", "MatchRule")
    MatchKey = apps.get_model("integrations", "MatchKey")
    TaxRate = apps.get_model("integrations", "TaxRate")
    _key_rate_cards(apps)
    code_rule = MatchRule.objects.filter(object_type="taxrate", name="tax_type_code").first()
    if code_rule is None:
        return
    keyed = MatchKey.objects.filter(rule=code_rule).values_list("object_id", flat=True)
    MatchKey.objects.bulk_create(
        MatchKey(
            rule=code_rule,
            object_type="taxrate",
            object_id=pk,
            connection=None,
            vendor=CONCORD,
            value=name_key(code)[:255],
        )
        for pk, code in TaxRate.objects.exclude(pk__in=keyed).values_list("pk", "code")
        if name_key(code)
    )


def _key_rate_cards(apps):  # type: ignore[no-untyped-def]
    """The keys of the rate cards kept so far (role, currency, contract), so the PSA's default
    rate for a role links to a hand-made one instead of being refused as a duplicate."""
    MatchRule = apps.get_model("integrations", "MatchRule")
    MatchKey = apps.get_model("integrations", "MatchKey")
    RateCard = apps.get_model("integrations", "RateCard")
    rule = MatchRule.objects.filter(object_type="ratecard", name="role_currency_contract").first()
    if rule is None:
        return
    keyed = MatchKey.objects.filter(rule=rule).values_list("object_id", flat=True)
    cards = RateCard.objects.exclude(pk__in=keyed).values_list("pk", "role", "currency", "contract")
    MatchKey.objects.bulk_create(
        MatchKey(
            rule=rule,
            object_type="ratecard",
            object_id=pk,
            connection=None,
            vendor=CONCORD,
            value=name_key(f"{role}|{currency}|{contract or ''}")[:255],
        )
        for pk, role, currency, contract in cards
    )


def backward(apps, schema_editor):  # type: ignore[no-untyped-def]
    OwnershipRule = apps.get_model("integrations", "OwnershipRule")
    if OwnershipRule.objects.filter(
        object_type="ratecard", field="", owner_role=RATECARD[0], note=RATECARD[1]
    ).exists():
        OwnershipRule.objects.filter(object_type="ratecard", field="").update(
            owner_role=SEEDED[0], note=SEEDED[1]
        )
        OwnershipRule.objects.filter(
            object_type="ratecard", field="contract", note=CONTRACT_RATE[1]
        ).delete()
    MatchRule = apps.get_model("integrations", "MatchRule")
    MatchRule.objects.filter(object_type="taxrate", name="tax_type_code").delete()
    MatchRule.objects.filter(object_type="ratecard", name="role_currency_contract").delete()


class Migration(migrations.Migration):
    dependencies = [("integrations", "0014_resource_role_optional")]
    operations = [migrations.RunPython(forward, backward)]
