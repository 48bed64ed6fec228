"""Projects that predate Concord: their contract and legal entity, from what the PSA project
carries, or a PMO case that asks for them.

Provisioning links the projects it creates. A project that was in the PSA before Concord
arrives (by poll or webhook) with its client only: Harvest has no contract field. Billing needs
both links (integrations/workflows/time_to_erp.py), so they are taken from what the project
carries:

- contract: the PSA client is the CRM account (identity resolution makes them one customer),
  so the customer's one contract in the project's currency that has not ended. None, or
  several: a ``project_link_missing`` case for PMO naming the project and why, fixed with the
  ``project_contract`` form (its retry links the legal entity that comes with the contract).
- legal entity: the contract's, else the customer's, else a legal entity's code written in
  the PSA project itself (its notes: "Opportunity ...; legal entity UK01"), found as a whole
  word in the project's last kept payload. None: left to billing, whose
  ``project_without_legal_entity`` case (with its own fix form) names the time it blocks.

Whichever arrives last (the project from the PSA, its customer's contract from the CRM)
completes the link: ``projects_link`` runs after every poll of a connection and after a
webhook's project or contract is applied. It writes as the one write path writes a person's
edit (``record_update``'s steps, audited as Concord's), a batch of projects at a time, and never
replaces a link someone made.

One case per project, not two: billing opens ``project_without_contract`` for approved time on
a project without a contract. A project such an open case names gets no case here, and one
held here leaves this case as soon as billing's names it (the case closes when it holds no
project), so PMO is asked once, by the case that also counts the time it blocks.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import Q

from exceptions.models import BlockedRecord, ExceptionCase
from exceptions.retry import RetryResult, retry_handler_register
from exceptions.services import Blocked, case_open_or_join, case_records_clear
from integrations.mapping.ownership import load_ownership_rules
from integrations.models import (
    AuditEvent,
    Contract,
    CrossReference,
    InboundMessage,
    LegalEntity,
    MappingSet,
    Project,
    SystemRole,
)
from integrations.models.base import with_sources
from integrations.services.audit import field_changes
from integrations.sync.identity import match_keys_refresh
from integrations.sync.records import PERSON, owner_split, person_source, records_store, row_errors

logger = logging.getLogger(__name__)

PROCESS, STEP = "reference_data", "project_link"
CASE_TYPE = "project_link_missing"
# Billing's case for the same missing link (time_to_erp's validation).
BILLING_CASE = "project_without_contract"
OPEN = ExceptionCase.Status.OPEN
# Projects linked per transaction: their rows locked together (in id order), written by one
# UPDATE and audited by one INSERT. A firm's first poll links every project it has (1,200 in
# the demo firm at scale 100): one write path call per project took 20 s there.
LINK_BATCH = 500
# The links the step writes, by attname: the field names the audit and the ownership rules use.
LINK_FIELDS = {"contract_id": "contract", "legal_entity_id": "legal_entity"}


@dataclass
class LinkReport:
    linked: int = 0  # projects given a contract or a legal entity
    unlinked: int = 0  # projects still without a contract
    cases: set[int] = field(default_factory=set)


def projects_link(
    *,
    project_ids: Collection[int] | None = None,
    payloads: Mapping[int, Mapping[str, Any]] | None = None,
) -> LinkReport:
    """Link the projects without a contract or legal entity (only ``project_ids``, when
    given) to what they carry; open the PMO case of those still without a contract; take the
    projects linked since (or named by billing's case) off it. ``payloads``: a project's PSA
    record by project id, when the caller has it (a webhook's), instead of its kept one."""
    report = LinkReport()
    wanted = Project.objects.filter(Q(contract__isnull=True) | Q(legal_entity__isnull=True))
    if project_ids is not None:
        wanted = wanted.filter(pk__in=list(project_ids))
    projects = list(wanted.select_related("customer", "contract").order_by("pk"))
    if projects:
        _link(projects, report, payloads or {})
    _clear_cases(project_ids)
    return report


def projects_link_applied(
    *, canonical_model: str, record_id: int, payload: Mapping[str, Any] | None = None
) -> LinkReport | None:
    """After a webhook's record was applied: a project is linked at once; a contract links
    the projects of its customer that wait for one. Other records: nothing (no query)."""
    if canonical_model == "project":
        return projects_link(
            project_ids=[record_id], payloads={record_id: payload} if payload else None
        )
    if canonical_model == "contract":
        customers = Contract.objects.filter(pk=record_id).values("customer_id")
        waiting = Project.objects.filter(customer_id__in=customers).filter(
            Q(contract__isnull=True) | Q(legal_entity__isnull=True)
        )
        ids = list(waiting.values_list("pk", flat=True))
        return projects_link(project_ids=ids) if ids else None
    return None


def _link(
    projects: list[Project], report: LinkReport, payloads: Mapping[int, Mapping[str, Any]]
) -> None:
    contracts = _contracts_by_customer({p.customer_id for p in projects})
    entity_ids = dict(LegalEntity.objects.values_list("code", "pk"))
    codes = set(entity_ids)
    kept = _kept_payloads([p for p in projects if p.pk not in payloads], codes)
    unlinked: list[tuple[Project, str]] = []
    links: dict[int, dict[str, int]] = {}
    for project in projects:
        changes: dict[str, int] = {}
        contract = project.contract
        why = ""
        if contract is None:
            contract, why = _contract_for(project, contracts.get(project.customer_id, []))
            if contract is not None:
                changes["contract_id"] = contract.pk
        if project.legal_entity_id is None:
            entity_id = (contract.legal_entity_id if contract is not None else None) or (
                project.customer.legal_entity_id
            )
            if entity_id is None:
                code = _code_in(payloads.get(project.pk) or kept.get(project.pk), codes)
                entity_id = entity_ids.get(code) if code else None
            if entity_id is not None:
                changes["legal_entity_id"] = entity_id
        if changes:
            links[project.pk] = changes
        if contract is None:
            unlinked.append((project, why))
    report.linked = _links_write(links)
    report.unlinked = len(unlinked)
    _open_cases(unlinked, report)


def _links_write(links: Mapping[int, Mapping[str, int]]) -> int:
    """Write the links found (``{project id: {attname: id}}``) as the one write path writes a
    person's edit (``record_update``: the rows read under a lock, validated, stamped, stored,
    their match keys refreshed, each audited with its old and new values and the owners of the
    fields it overrode, as Concord's, actor None), a batch of projects per transaction instead
    of one each. A link someone set since the projects were read is left as they set it (the
    step never replaces a link). Returns how many projects were linked."""
    if not links:
        return 0
    rules = load_ownership_rules()
    linked = 0
    ids = sorted(links)
    for start in range(0, len(ids), LINK_BATCH):
        with transaction.atomic():
            locked = Project.objects.select_for_update().filter(
                pk__in=ids[start : start + LINK_BATCH]
            )
            written: list[tuple[Project, dict[str, Any]]] = []
            for project in locked.order_by("pk"):
                applied = {
                    attname: value
                    for attname, value in links[project.pk].items()
                    if getattr(project, attname) is None
                }
                if not applied:
                    continue
                before = {attname: getattr(project, attname) for attname in applied}
                allowed, _ = owner_split(
                    rules, Project, source_role=PERSON, values=applied, current=before
                )
                owned = {
                    LINK_FIELDS[a]: rules.owner_of("project", LINK_FIELDS[a]) or ""
                    for a in applied
                    if a not in allowed
                }
                errors = row_errors(Project, applied, creating=False, instance=project)
                if errors:
                    logger.warning("project %s not linked: %s", project.pk, errors)
                    continue
                for attname, value in applied.items():
                    setattr(project, attname, value)
                project.field_sources = with_sources(
                    project.field_sources, applied, person_source(None)
                )
                changes: dict[str, Any] = field_changes(
                    {LINK_FIELDS[a]: v for a, v in before.items()},
                    {LINK_FIELDS[a]: v for a, v in applied.items()},
                )
                if owned:
                    changes["owned_by"] = [None, dict(sorted(owned.items()))]
                written.append((project, changes))
            if not written:
                continue
            stored = records_store(
                Project,
                creates=[],
                updates=[project for project, _ in written],
                update_fields=[*LINK_FIELDS, "field_sources"],
            )
            kept = [written[i] for i in stored.updated]
            for i in {i for kind, i in stored.refused if kind == "update"}:
                logger.warning(
                    "project %s not linked: %s", written[i][0].pk, stored.refused[("update", i)]
                )
            match_keys_refresh(records=[project for project, _ in kept])
            AuditEvent.objects.bulk_create(
                [
                    AuditEvent(
                        actor=None,
                        actor_label="system",
                        action=AuditEvent.Action.UPDATE,
                        object_type="project",
                        object_id=str(project.pk),
                        object_repr=str(project)[:200],
                        changes=changes,
                    )
                    for project, changes in kept
                ]
            )
            linked += len(kept)
    return linked


def _contracts_by_customer(customer_ids: Iterable[int]) -> dict[int, list[Contract]]:
    found: dict[int, list[Contract]] = defaultdict(list)
    for contract in (
        Contract.objects.filter(customer_id__in=list(customer_ids))
        .exclude(status=Contract.Status.ENDED)
        .order_by("number")
    ):
        found[contract.customer_id].append(contract)
    return found


def _contract_for(project: Project, contracts: list[Contract]) -> tuple[Contract | None, str]:
    """The customer's one live contract in the project's currency, or None and why."""
    customer = project.customer.name
    if not contracts:
        return None, f"its customer {customer} has no contract in Concord"
    same = [c for c in contracts if not project.currency or c.currency == project.currency]
    if len(same) == 1:
        return same[0], ""
    if not same:
        numbers = ", ".join(c.number for c in contracts)
        return None, (
            f"its customer {customer} has no contract in {project.currency} (only {numbers})"
        )
    numbers = ", ".join(c.number for c in same)
    return None, (
        f"its customer {customer} has {len(same)} contracts in {project.currency} ({numbers}) "
        "and the project names none of them"
    )


def _kept_payloads(projects: list[Project], codes: set[str]) -> dict[int, Mapping[str, Any]]:
    """The last record each project's PSA sent (its kept raw payload), for the projects whose
    legal entity nothing else gives: a few queries, only when there are such projects."""
    needing = [
        p
        for p in projects
        if p.legal_entity_id is None and p.customer.legal_entity_id is None and codes
    ]
    if not needing:
        return {}
    project_type = ContentType.objects.get_for_model(Project)
    xrefs = CrossReference.objects.filter(
        content_type=project_type,
        object_id__in=[p.pk for p in needing],
        connection__role=SystemRole.PSA,
    ).values_list("object_id", "connection_id", "external_id")
    by_source = {(connection_id, external_id): pk for pk, connection_id, external_id in xrefs}
    if not by_source:
        return {}
    object_types = MappingSet.objects.filter(
        connection_id__in={c for c, _ in by_source},
        canonical_model="project",
        status=MappingSet.Status.PUBLISHED,
    ).values_list("object_type", flat=True)
    found: dict[int, Mapping[str, Any]] = {}
    for connection_id, external_id, payload in (
        InboundMessage.objects.filter(
            connection_id__in={c for c, _ in by_source},
            object_type__in=list(object_types),
            external_id__in=[e for _, e in by_source],
        )
        .order_by("pk")
        .values_list("connection_id", "external_id", "payload")
    ):
        pk = by_source.get((connection_id, external_id))
        if pk is not None and isinstance(payload, dict):
            found[pk] = payload  # the newest (by pk) wins
    return found


def _code_in(payload: Mapping[str, Any] | None, codes: set[str]) -> str | None:
    """The one legal entity code written as a whole word in the payload's text values (its
    notes, its name), or None when there is none or more than one."""
    if not payload:
        return None
    texts = [value for value in payload.values() if isinstance(value, str)]
    seen = {code for code in codes for text in texts if re.search(rf"\b{re.escape(code)}\b", text)}
    return seen.pop() if len(seen) == 1 else None


def _open_cases(unlinked: list[tuple[Project, str]], report: LinkReport) -> None:
    """The PMO case of each project still without a contract, unless billing's case or one
    here holds it already (a poll every two minutes would otherwise count an occurrence every
    time)."""
    if not unlinked:
        return
    ids = [project.pk for project, _ in unlinked]
    asked = set(
        ExceptionCase.objects.filter(
            case_type=BILLING_CASE, status=OPEN, project_id__in=ids
        ).values_list("project_id", flat=True)
    )
    asked |= set(
        BlockedRecord.objects.filter(
            case__case_type=CASE_TYPE,
            case__status=OPEN,
            record_type="project",
            record_id__in=ids,
        ).values_list("record_id", flat=True)
    )
    for project, why in unlinked:
        if project.pk in asked:
            continue
        label = f"{project.code} {project.name}"
        case = case_open_or_join(
            case_type=CASE_TYPE,
            subject={"project_id": project.pk, "project": label, "why": why},
            records=[Blocked(record_type="project", record_id=project.pk, label=label)],
            process=PROCESS,
            step=STEP,
        )
        report.cases.add(case.pk)


def _clear_cases(project_ids: Collection[int] | None) -> None:
    """Projects held here that have a contract now leave the case; so do those billing's case
    names (it asks for the same link, and counts the time it blocks)."""
    held = BlockedRecord.objects.filter(
        case__case_type=CASE_TYPE, case__status=OPEN, record_type="project"
    )
    if project_ids is not None:
        held = held.filter(record_id__in=list(project_ids))
    ids = list(held.values_list("record_id", flat=True))
    if not ids:
        return
    linked = list(
        Project.objects.filter(pk__in=ids, contract__isnull=False).values_list("pk", flat=True)
    )
    if linked:
        case_records_clear(
            records=[("project", pk) for pk in linked],
            case_types=[CASE_TYPE],
            note="Closed automatically: the project is linked to its contract.",
        )
    billing = list(
        ExceptionCase.objects.filter(
            case_type=BILLING_CASE, status=OPEN, project_id__in=set(ids) - set(linked)
        ).values_list("project_id", "pk")
    )
    for project_id, case_id in billing:
        case_records_clear(
            records=[("project", project_id)],
            case_types=[CASE_TYPE],
            note=f"Closed automatically: billing's case #{case_id} asks for the same contract "
            "and counts the time it blocks.",
        )


def project_link_case_retry(case: ExceptionCase) -> RetryResult:
    """Retry a ``project_link_missing`` case (exceptions/retry.py): link its projects again
    (after the fix form set the contract, its legal entity follows)."""
    held = list(
        BlockedRecord.objects.filter(case=case, record_type="project").values_list(
            "record_id", flat=True
        )
    )
    report = projects_link(project_ids=held)
    return RetryResult(
        count=len(held),
        summary=f"linked {report.linked} of {len(held)} project(s)"
        + (f"; {report.unlinked} still without a contract" if report.unlinked else ""),
    )


retry_handler_register(case_types=(CASE_TYPE,), handler=project_link_case_retry, process=PROCESS)
