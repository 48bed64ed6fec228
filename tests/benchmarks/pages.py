"""The exception queue pages at scale: `queue_list_p95_ms` and `case_detail_p95_ms`.

A database of its own (`<bench database>_pages`, e.g. `concord_bench_pages`, about 9 GB) holds
1,000,000 cases (10% open, the newest; 4 queues, P1-P4, 3 currencies, 2% in two), 5,000,000
blocked records (ten cases hold 50,000 each), 1,100,000 outbox rows parked on the cases of the
outbound types and 10,000,000 sync attempts on them (the huge cases' rows: 200), seeded by
set-based SQL (INSERT ... SELECT ... FROM generate_series) in about 6.5 minutes on this VM, then
VACUUM ANALYZE. It is kept between runs: a marker table names the seed's version, and a run
that finds it complete (after migrating whatever migrations came since) measures straight away;
a run that finds none (or another version) drops the database and seeds it afresh.

Each figure is the server time of the real views (exceptions/views/queues.py `case_list`,
exceptions/views/cases.py `case_detail`) through Django's test Client in this process (the whole
middleware stack, a signed-in user's session; no network), over a mix of requests, p95 of at
least 200 each; target 50 ms.
"""

# The seed's SQL is built from this module's constants and ids it read itself, never input.
# ruff: noqa: S608

from __future__ import annotations

import html
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import psycopg
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import connection as db
from django.test import Client
from django.urls import reverse

from exceptions import selectors, tally_sql
from exceptions.models import ExceptionCase
from exceptions.services import work_queues_ensure
from integrations import roles
from integrations.services.connections import connection_create

Figure = dict[str, Any]

# Bump when the seed below changes: a kept database of another version is seeded afresh.
SEED_VERSION = "pages-2"
CASES = 1_000_000
# Blocked records: 1 + a geometric count per case (mean 4.5) and HUGE cases of 50,000 each.
HUGE = 10
HUGE_RECORDS = 50_000
ATTEMPTS = 10_000_000
# The huge cases of the outbound types have 50 outbox rows of 4 attempts each: 200 attempts.
HUGE_OUTBOX_ROWS = 50
HUGE_ATTEMPTS_PER_ROW = 4
CUSTOMERS = 21_000  # multiples of the 3 legal entities: customer c belongs to 1 + (c - 1) % 3
PROJECTS = 63_000
INVOICES = 525_000
ASSIGNEES_PER_QUEUE = 10
REQUESTS = 240  # per figure, after a warm-up
WARMUP = 30
# Deep pages: Next followed this many times, then the next page timed.
DEEP_PAGES = 50
TARGET_MS = 50

QUEUE_GROUPS = {
    "finance": roles.FINANCE,
    "pmo": roles.PMO,
    "sales_ops": roles.SALES_OPS,
    "integration_admin": roles.INTEGRATION_ADMIN,
}


# --- The database ------------------------------------------------------------------------------


def _pages_url() -> str:
    return os.environ["DATABASE_URL"] + "_pages"


def _marker_ok(url: str) -> bool:
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT version FROM bench_seed WHERE version = %s", (SEED_VERSION,)
            ).fetchone()
            return row is not None
    except psycopg.Error:
        return False


def _recreate(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


class PagesDatabase:
    """Points Django's default connection at the pages database for the figures, and back."""

    def __enter__(self) -> PagesDatabase:
        url = _pages_url()
        self.kept = _marker_ok(url)
        if not self.kept:
            _recreate(url)
        self.saved = db.settings_dict["NAME"]
        db.close()
        db.settings_dict["NAME"] = url.rsplit("/", 1)[1]
        # Whatever migrations came since the seed (an index) apply to the kept database too.
        call_command("migrate", interactive=False, verbosity=0)
        if not self.kept:
            started = time.perf_counter()
            _seed()
            self.seed_s = time.perf_counter() - started
        else:
            self.seed_s = 0.0
        _say(
            f"pages database {db.settings_dict['NAME']}: "
            + (f"kept (seed {SEED_VERSION})" if self.kept else f"seeded in {self.seed_s:.0f} s")
        )
        return self

    def __exit__(self, *exc: object) -> None:
        db.close()
        db.settings_dict["NAME"] = self.saved


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- The seed ----------------------------------------------------------------------------------

# Case types per queue with their share of the queue, process, step, the records they hold and
# whether they park outbox rows (the outbound failures); from exceptions/catalogue.py.
IA = "integration_admin"
KINDS = [
    # queue, case type, share of its queue, process, step, record type, outbound (parks rows)
    ("finance", "vendor_validation", 0.60, "time_to_erp", "post_invoice", "invoice", True),
    ("finance", "missing_exchange_rate", 0.20, "time_to_erp", "validate", "timeentry", False),
    ("finance", "erp_record_invalid", 0.20, "inbound", "store", "inboundmessage", False),
    ("pmo", "time_on_inactive_project", 0.40, "time_to_erp", "validate", "timeentry", False),
    ("pmo", "project_without_legal_entity", 0.25, "time_to_erp", "validate", "timeentry", False),
    ("pmo", "project_without_contract", 0.20, "time_to_erp", "validate", "timeentry", False),
    ("pmo", "psa_record_invalid", 0.15, "inbound", "store", "inboundmessage", False),
    ("sales_ops", "missing_rate", 0.70, "time_to_erp", "validate", "timeentry", False),
    ("sales_ops", "crm_record_invalid", 0.30, "inbound", "store", "inboundmessage", False),
    (IA, "retries_exhausted", 0.30, "time_to_erp", "post_invoice", "invoice", True),
    (IA, "permanent_error", 0.25, "time_to_erp", "post_invoice", "invoice", True),
    (IA, "mapping_error", 0.30, "inbound", "map", "inboundmessage", False),
    (IA, "outbound_mapping_error", 0.15, "time_to_erp", "render", "timeentry", False),
]
QUEUE_SHARES = [("finance", 0.35), ("pmo", 0.30), ("sales_ops", 0.15), ("integration_admin", 0.20)]


def _kinds_values() -> str:
    rows = []
    cumulative = {q: 0.0 for q, _ in QUEUE_SHARES}
    for queue, case_type, share, process, step, record_type, outbound in KINDS:
        lo = cumulative[queue]
        cumulative[queue] = hi = lo + share
        rows.append(
            f"('{queue}', '{case_type}', {lo:.4f}, {1.0001 if hi > 0.9999 else hi:.4f}, "
            f"'{process}', '{step}', '{record_type}', {str(outbound).lower()})"
        )
    return ", ".join(rows)


def _queue_case() -> str:
    parts, lo = [], 0.0
    for queue, share in QUEUE_SHARES:
        lo += share
        parts.append(f"WHEN r_queue < {lo:.4f} THEN '{queue}'")
    return "CASE " + " ".join(parts[:-1]) + f" ELSE '{QUEUE_SHARES[-1][0]}' END"


def _seed() -> None:
    """The whole seed, each table by one set-based statement, foreign-key triggers off during
    the load (session_replication_role), then ANALYZE."""
    work_queues_ensure()
    users = _users()
    xero, harvest, salesforce = _connections()
    steps: list[tuple[str, str]] = _seed_sql(users, xero=xero, harvest=harvest, crm=salesforce)
    db.close()
    with psycopg.connect(_pages_url(), autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '256MB'")
        conn.execute("SET work_mem = '64MB'")
        for label, sql in steps:
            started = time.perf_counter()
            conn.execute(sql)
            _say(f"  seed {label}: {time.perf_counter() - started:.1f} s")
        # The load ran with triggers off (replica role): the open cases' tally is counted once.
        started = time.perf_counter()
        conn.execute(tally_sql.REBUILD)
        _say(f"  seed case tally: {time.perf_counter() - started:.1f} s")
        # VACUUM too: it sets the visibility map, which index-only scans (the totals) need, as
        # autovacuum would have on a live database.
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        _say(f"  seed vacuum analyze: {time.perf_counter() - started:.1f} s")
        conn.execute(
            "CREATE TABLE bench_seed (version text PRIMARY KEY, seeded_at timestamptz NOT NULL)"
        )
        conn.execute("INSERT INTO bench_seed VALUES (%s, now())", (SEED_VERSION,))


def _users() -> dict[str, list[int]]:
    """Per queue, the ids of ASSIGNEES_PER_QUEUE people in its role group (the first is the one
    the benchmark signs in as), and an integration admin."""
    out: dict[str, list[int]] = {}
    for queue, group_name in QUEUE_GROUPS.items():
        group = Group.objects.get(name=group_name)
        ids = []
        for n in range(ASSIGNEES_PER_QUEUE):
            user = User.objects.create_user(username=f"bench_{queue}_{n}", password=None)
            user.groups.add(group)
            ids.append(user.pk)
        out[queue] = ids
    return out


def _connections() -> tuple[int, int, int]:
    made = [
        connection_create(name=name, role=role, vendor=vendor, base_url=url, credentials={})
        for name, role, vendor, url in (
            ("Xero", "erp", "xero", "https://xero.example/api.xro/2.0"),
            ("Harvest", "psa", "harvest", "https://harvest.example/v2"),
            ("Salesforce", "crm", "salesforce", "https://sf.example/services/data/v60.0"),
        )
    ]
    return made[0].pk, made[1].pk, made[2].pk


def _content_type(model: str) -> int:
    return ContentType.objects.get(app_label="integrations", model=model).pk


def _seed_sql(users: dict[str, list[int]], *, xero: int, harvest: int, crm: int) -> list[Any]:
    ct_invoice, ct_customer, ct_project = (
        _content_type(m) for m in ("invoice", "customer", "project")
    )
    assignees = {q: "ARRAY[" + ",".join(map(str, ids)) + "]" for q, ids in users.items()}
    canonical = "'concord', 1, '{}'::jsonb, now() - interval '400 days', now() - interval '1 day'"
    sla_hours = "(ARRAY[4, 24, 72, 336])[c.priority]"
    steps = [
        (
            "legal entities",
            f"""INSERT INTO integrations_legalentity (id, source_system, source_version,
                field_sources, created_at, updated_at, code, name, country, base_currency,
                tax_number)
            VALUES (1, {canonical}, 'UK01', 'Concord UK Ltd', 'GB', 'GBP', 'GB123456789'),
                   (2, {canonical}, 'US01', 'Concord Inc', 'US', 'USD', '12-3456789'),
                   (3, {canonical}, 'DE01', 'Concord GmbH', 'DE', 'EUR', 'DE123456789');
            SELECT setval(pg_get_serial_sequence('integrations_legalentity', 'id'), 3)""",
        ),
        (
            "customers",
            f"""INSERT INTO integrations_customer (id, source_system, source_version,
                field_sources, created_at, updated_at, name, country, tax_number, billing_email,
                billing_address, currency, active, legal_entity_id)
            SELECT g, {canonical},
                (ARRAY['Acme','Globex','Initech','Umbrella','Stark','Wayne','Wonka','Tyrell',
                       'Cyberdyne','Hooli','Vandelay','Soylent','Aperture','Oscorp',
                       'Gringotts','Massive Dynamic'])[1 + g % 16]
                || ' ' || (ARRAY['Holdings','Group','Labs','Industries','Partners','Systems',
                           'Logistics','Foods','Media','Energy'])[1 + (g / 16) % 10]
                || ' ' || lpad(g::text, 5, '0'),
                (ARRAY['GB','US','DE'])[1 + (g - 1) % 3],
                CASE WHEN g % 7 = 0 THEN '' ELSE 'TX' || g END,
                'billing' || g || '@example.com', g || ' High Street',
                (ARRAY['GBP','USD','EUR'])[1 + (g - 1) % 3], true, 1 + (g - 1) % 3
            FROM generate_series(1, {CUSTOMERS}) g;
            SELECT setval(pg_get_serial_sequence('integrations_customer', 'id'), {CUSTOMERS})""",
        ),
        (
            "contracts",
            f"""INSERT INTO integrations_contract (id, source_system, source_version,
                field_sources, created_at, updated_at, number, billing_model, currency,
                total_value, payment_terms_days, status, customer_id, legal_entity_id)
            SELECT g, {canonical}, 'C-' || lpad(g::text, 6, '0'), 'tm',
                (ARRAY['GBP','USD','EUR'])[1 + (g - 1) % 3], 100000, 30, 'active', g,
                1 + (g - 1) % 3
            FROM generate_series(1, {CUSTOMERS}) g;
            SELECT setval(pg_get_serial_sequence('integrations_contract', 'id'), {CUSTOMERS})""",
        ),
        (
            "projects",
            f"""INSERT INTO integrations_project (id, source_system, source_version,
                field_sources, created_at, updated_at, code, name, region, currency, budget,
                status, customer_id, contract_id, legal_entity_id)
            SELECT g, {canonical}, 'P-' || lpad(g::text, 5, '0'), 'Project ' || g,
                CASE (g - 1) % 3 WHEN 1 THEN 'americas'
                    ELSE CASE WHEN g % 10 < 3 THEN 'apac' ELSE 'emea' END END,
                (ARRAY['GBP','USD','EUR'])[1 + (g - 1) % 3], 50000,
                (ARRAY['active','active','active','on_hold','closed'])[1 + g % 5],
                1 + (g - 1) % {CUSTOMERS}, 1 + (g - 1) % {CUSTOMERS}, 1 + (g - 1) % 3
            FROM generate_series(1, {PROJECTS}) g;
            SELECT setval(pg_get_serial_sequence('integrations_project', 'id'), {PROJECTS})""",
        ),
        (
            "invoices",
            f"""INSERT INTO integrations_invoice (id, source_system, source_version,
                field_sources, created_at, updated_at, number, status, currency, issue_date,
                due_date, subtotal, tax_total, total, amount_due, customer_id, contract_id,
                legal_entity_id)
            SELECT g, {canonical}, 'INV-' || lpad(g::text, 7, '0'),
                (ARRAY['draft','submitted','authorised','paid'])[1 + g % 4],
                (ARRAY['GBP','USD','EUR'])[1 + (g - 1) % 3],
                current_date - (g % 400), current_date - (g % 400) + 30,
                1000 + g % 9000, 200, 1200 + g % 9000, 1200 + g % 9000,
                1 + (g - 1) % {CUSTOMERS}, 1 + (g - 1) % {CUSTOMERS}, 1 + (g - 1) % 3
            FROM generate_series(1, {INVOICES}) g;
            SELECT setval(pg_get_serial_sequence('integrations_invoice', 'id'), {INVOICES})""",
        ),
        (
            "cross-references",
            f"""INSERT INTO integrations_crossreference (object_id, external_id, external_version,
                last_synced_at, created_at, connection_id, content_type_id)
            SELECT g, md5('inv' || g)::uuid::text, '1', now(), now(), {xero}, {ct_invoice}
            FROM generate_series(1, {INVOICES}) g
            UNION ALL
            SELECT g, md5('cus' || g)::uuid::text, '1', now(), now(), {xero}, {ct_customer}
            FROM generate_series(1, {CUSTOMERS}) g
            UNION ALL
            SELECT g, '001' || lpad(g::text, 15, '0'), '1', now(), now(), {crm}, {ct_customer}
            FROM generate_series(1, {CUSTOMERS}) g
            UNION ALL
            SELECT g, (4000000 + g)::text, '1', now(), now(), {harvest}, {ct_project}
            FROM generate_series(1, {PROJECTS}) g""",
        ),
        (
            "case draws",
            f"""SELECT setseed(0.42);
            CREATE TABLE bench_case_draw AS
            SELECT g AS id, random() AS r_status, random() AS r_queue, random() AS r_type,
                random() AS r_prio, random() AS r_time, random() AS r_amt, random() AS r_cur,
                random() AS r_cnt, random() AS r_asg, random() AS r_ent, random() AS r_pick
            FROM generate_series(1, {CASES}) g;
            CREATE TABLE bench_kind (queue text, case_type text, lo float, hi float,
                process text, step text, record_type text, outbound boolean);
            INSERT INTO bench_kind VALUES {_kinds_values()};
            CREATE TABLE bench_case_raw AS
            SELECT d.id AS draw, q.queue, k.case_type, k.process, k.step, k.record_type,
                k.outbound,
                CASE WHEN d.r_status < 0.10 THEN 'open'
                     WHEN d.r_status < 0.82 THEN 'resolved' ELSE 'waived' END AS status,
                CASE WHEN d.r_prio < 0.05 THEN 1 WHEN d.r_prio < 0.25 THEN 2
                     WHEN d.r_prio < 0.85 THEN 3 ELSE 4 END AS priority,
                1 + floor(d.r_ent * 3)::int AS le,
                1 + floor(-ln(1 - d.r_cnt) * 4)::int AS n,
                round((10 + exp(d.r_amt * 9))::numeric, 2) AS a,
                d.r_cur < 0.02 AS mixed,
                d.r_time, d.r_asg, d.r_pick
            FROM bench_case_draw d
            CROSS JOIN LATERAL (SELECT {_queue_case()} AS queue) q
            JOIN bench_kind k ON k.queue = q.queue AND d.r_type >= k.lo AND d.r_type < k.hi;
            -- Ids in the order the cases were first seen, as a live database assigns them: the
            -- open cases (due from 10 days ago to 10 days ahead) are the newest, the resolved
            -- and waived ones (due 10 to 375 days ago) older.
            CREATE TABLE bench_case AS
            SELECT row_number() OVER (ORDER BY t.first_seen, r.draw) AS id, r.*, t.due,
                t.first_seen
            FROM bench_case_raw r
            CROSS JOIN LATERAL (
                SELECT due, due - make_interval(hours => (ARRAY[4, 24, 72, 336])[r.priority])
                    AS first_seen
                FROM (SELECT CASE WHEN r.status = 'open'
                    THEN now() + make_interval(secs => (r.r_time * 20 - 10) * 86400)
                    ELSE now() - make_interval(secs => (10 + r.r_time * 365) * 86400) END
                    AS due) x
            ) t;
            -- HUGE open cases hold 50,000 records each: the first open ones of the finance,
            -- PMO and integration admin queues, alternately.
            UPDATE bench_case SET n = {HUGE_RECORDS} WHERE id IN (
                SELECT id FROM (
                    SELECT id, row_number() OVER (PARTITION BY queue ORDER BY id) AS rn
                    FROM bench_case WHERE status = 'open'
                      AND case_type IN ('vendor_validation', 'time_on_inactive_project',
                                        'retries_exhausted')
                ) x WHERE rn <= {HUGE // 3 + 1} ORDER BY rn, id LIMIT {HUGE});
            -- A mixed-currency case holds at least two records (one in each currency).
            UPDATE bench_case SET n = greatest(n, 2) WHERE mixed;
            ALTER TABLE bench_case ADD PRIMARY KEY (id)""",
        ),
        (
            "cases",
            f"""INSERT INTO exceptions_exceptioncase (id, fingerprint, process, step, case_type,
                queue, priority, status, message, vendor_message, amount_blocked, currency,
                hours_blocked, first_seen_at, last_seen_at, occurrences, sla_due_at,
                resolved_at, resolution_note, assignee_id, connection_id, amounts,
                record_count, subject, customer_id, group_key, legal_entity_id, project_id,
                region, revision)
            SELECT c.id, md5('case' || c.id), c.process, c.step, c.case_type, c.queue,
                c.priority, c.status,
                c.n || ' ' || CASE c.record_type WHEN 'invoice' THEN 'invoices'
                    WHEN 'timeentry' THEN 'approved time entries' ELSE 'records' END
                || CASE WHEN amounts = '{{}}'::jsonb THEN ''
                   ELSE ' (' || (SELECT string_agg(key || ' ' || to_char(value::numeric,
                        'FM999,999,999,990.00'), ' + ' ORDER BY key)
                        FROM jsonb_each_text(amounts)) || ')' END
                || CASE c.case_type
                    WHEN 'vendor_validation' THEN ' for ' || cu.name
                        || ' cannot be sent: Xero says: '
                        || (ARRAY['TaxNumber is required', 'Account code is not valid',
                                  'Contact is archived'])[1 + c.id % 3]
                    WHEN 'missing_rate' THEN ' for the role Consultant on contract C-'
                        || lpad(cu.id::text, 6, '0')
                        || ' cannot be invoiced: no bill rate for the role Consultant.'
                    ELSE ' on project ' || p.code || ' cannot be processed: '
                        || replace(c.case_type, '_', ' ') || '.' END,
                CASE WHEN c.outbound THEN 'ValidationException: A validation exception occurred'
                     ELSE '' END,
                CASE WHEN cur.one <> '' THEN c.a * c.n ELSE 0 END, cur.one,
                CASE WHEN c.record_type = 'timeentry' THEN c.n * 7.5 ELSE 0 END,
                t.first_seen, t.first_seen + (least(t.closed, now()) - t.first_seen) * c.r_pick,
                c.n + (c.id % 3), t.due, t.resolved,
                CASE c.status WHEN 'waived' THEN 'not billable: written off'
                              WHEN 'resolved' THEN 'billed' ELSE '' END,
                CASE WHEN c.r_asg < CASE c.status WHEN 'open' THEN 0.3 ELSE 0.5 END
                    THEN ({assignees["finance"]} || {assignees["pmo"]}
                          || {assignees["sales_ops"]} || {assignees["integration_admin"]})
                         [1 + (array_position(ARRAY['finance', 'pmo', 'sales_ops',
                               'integration_admin'], c.queue) - 1) * {ASSIGNEES_PER_QUEUE}
                          + (c.id % {ASSIGNEES_PER_QUEUE})::int] END,
                CASE WHEN c.outbound THEN {xero} WHEN c.process = 'inbound' THEN {harvest} END,
                amounts, c.n,
                jsonb_build_object('project_id', p.id, 'project', p.code || ' ' || p.name,
                    'status', 'closed', 'about', cu.name, 'vendor', 'Xero', 'noun', 'invoice',
                    'complaint', 'TaxNumber is required', 'customer_id', cu.id),
                cu.id, md5(c.case_type || (c.id % 997)), c.le, p.id,
                CASE c.le WHEN 2 THEN 'americas'
                    ELSE CASE WHEN c.id % 10 < 3 THEN 'apac' ELSE 'emea' END END,
                CASE c.status WHEN 'open' THEN c.id % 3 ELSE 1 + c.id % 3 END
            FROM bench_case c
            CROSS JOIN LATERAL (
                SELECT 1 + 3 * ((c.id::bigint * 7919) % ({PROJECTS} / 3)) + (c.le - 1) AS project
            ) pick
            JOIN integrations_project p ON p.id = pick.project
            JOIN integrations_customer cu ON cu.id = p.customer_id
            CROSS JOIN LATERAL (
                SELECT (ARRAY['GBP','USD','EUR'])[c.le] AS main,
                       (ARRAY['EUR','GBP','USD'])[c.le] AS other
            ) money
            CROSS JOIN LATERAL (
                SELECT CASE WHEN c.record_type = 'inboundmessage' THEN '{{}}'::jsonb
                    WHEN c.mixed THEN jsonb_build_object(
                        money.main, (c.a * ((c.n + 1) / 2))::numeric(14, 2)::text,
                        money.other, (c.a * (c.n / 2))::numeric(14, 2)::text)
                    ELSE jsonb_build_object(money.main, (c.a * c.n)::numeric(14, 2)::text)
                    END AS amounts
            ) am
            CROSS JOIN LATERAL (
                SELECT CASE WHEN c.record_type = 'inboundmessage' OR c.mixed THEN ''
                            ELSE money.main END AS one
            ) cur
            CROSS JOIN LATERAL (
                SELECT c.first_seen, c.due,
                    CASE WHEN c.status = 'open' THEN NULL
                         ELSE c.first_seen
                              + make_interval(hours => {sla_hours}) * c.r_pick * 1.6 END
                        AS resolved,
                    CASE WHEN c.status = 'open' THEN now() ELSE c.due END AS closed
            ) t
            ORDER BY c.id;
            -- One case in a hundred is from before SLAs: no due date.
            UPDATE exceptions_exceptioncase SET sla_due_at = NULL WHERE id % 100 = 0;
            SELECT setval(pg_get_serial_sequence('exceptions_exceptioncase', 'id'), {CASES})""",
        ),
        (
            "blocked records",
            f"""INSERT INTO exceptions_blockedrecord (case_id, record_type, record_id, label,
                amount, currency, hours)
            SELECT c.id, b.record_type, r.record_id,
                CASE b.record_type WHEN 'invoice' THEN 'INV-' || lpad(r.record_id::text, 7, '0')
                    WHEN 'timeentry' THEN 'TE-' || r.record_id || ' 2026-11-02 Ada Byron (7.50 h)'
                    ELSE 'message ' || r.record_id END,
                CASE WHEN b.record_type = 'inboundmessage' THEN 0 ELSE b.a END,
                CASE WHEN b.record_type = 'inboundmessage' THEN ''
                     WHEN b.mixed AND s % 2 = 0 THEN (ARRAY['EUR','GBP','USD'])[b.le]
                     ELSE (ARRAY['GBP','USD','EUR'])[b.le] END,
                CASE WHEN b.record_type = 'timeentry' THEN 7.5 ELSE 0 END
            FROM bench_case b
            JOIN exceptions_exceptioncase c ON c.id = b.id
            CROSS JOIN LATERAL generate_series(1, b.n) s
            CROSS JOIN LATERAL (
                SELECT CASE b.record_type
                    -- the customer's own invoices first (25 each), then ids past the table
                    WHEN 'invoice' THEN c.customer_id + {CUSTOMERS}::bigint * (s - 1)
                    ELSE b.id * 100000::bigint + s END AS record_id
            ) r
            ORDER BY c.id, s""",
        ),
        (
            "outbox rows",
            f"""CREATE TABLE bench_outbox AS
            SELECT row_number() OVER (ORDER BY fixed DESC, case_id, s) AS id, *
            FROM (
                SELECT b.id AS case_id, s, b.status,
                    CASE WHEN b.n = {HUGE_RECORDS} THEN {HUGE_ATTEMPTS_PER_ROW} ELSE 0 END AS fixed
                FROM bench_case b
                CROSS JOIN LATERAL generate_series(1, CASE WHEN b.n = {HUGE_RECORDS}
                    THEN {HUGE_OUTBOX_ROWS} ELSE least(b.n, 6) END) s
                WHERE b.outbound
            ) o;
            CREATE TABLE bench_attempt_plan AS
            SELECT count(*) FILTER (WHERE fixed > 0) AS fixed_rows,
                   coalesce(sum(fixed), 0) AS fixed_attempts, count(*) AS rows
            FROM bench_outbox;
            -- The huge cases' rows (ids 1..fixed_rows) take their 4 attempts each; the rest of
            -- the 10,000,000 spread over the other rows in id order, about 10 each.
            CREATE TABLE bench_attempt AS
            SELECT a AS id,
                CASE WHEN a <= p.fixed_attempts THEN 1 + (a - 1) / {HUGE_ATTEMPTS_PER_ROW}
                     ELSE p.fixed_rows + 1 + ((a - p.fixed_attempts - 1)
                          * (p.rows - p.fixed_rows)) / ({ATTEMPTS} - p.fixed_attempts)
                END AS outbox_id
            FROM bench_attempt_plan p, generate_series(1::bigint, {ATTEMPTS}) a;
            CREATE TABLE bench_attempt_count AS
            SELECT outbox_id, count(*) AS n FROM bench_attempt GROUP BY outbox_id;
            INSERT INTO integrations_outboxmessage (id, process, step, operation, object_id,
                record_version, payload, group_key, idempotency_key, state, attempts,
                next_attempt_at, claimed_at, claimed_by, last_error, error_class, result,
                created_at, updated_at, done_at, connection_id, content_type_id,
                exception_case_id, replay_of_id, context, needs_lookup, first_attempt_at)
            SELECT o.id, 'time_to_erp',
                'post_invoice', 'put_invoices', c.customer_id + {CUSTOMERS}::bigint * (o.s - 1),
                1,
                jsonb_build_object('Type', 'ACCREC', 'Contact', jsonb_build_object('Name',
                    'Customer ' || c.customer_id), 'CurrencyCode', c.currency, 'Status',
                    'DRAFT', 'Reference', 'CONCORD-INV-' || (c.customer_id + o.s),
                    'LineItems', jsonb_build_array(jsonb_build_object('Description',
                    'Consulting, November', 'Quantity', 7.5, 'UnitAmount', 140,
                    'AccountCode', '200'))),
                '', 'bench-' || o.case_id || '-' || o.s,
                CASE o.status WHEN 'open' THEN 'parked' ELSE 'done' END, coalesce(n.n, 0),
                c.first_seen_at, NULL, '',
                'A validation exception occurred: TaxNumber is required', 'business',
                '{{}}'::jsonb, c.first_seen_at, c.last_seen_at,
                CASE WHEN o.status <> 'open' THEN c.resolved_at END, {xero}, {ct_invoice},
                c.id, NULL,
                jsonb_build_object('label', 'INV draft', 'amount', '1050.00', 'currency',
                    c.currency), false, c.first_seen_at
            FROM bench_outbox o
            JOIN exceptions_exceptioncase c ON c.id = o.case_id
            LEFT JOIN bench_attempt_count n ON n.outbox_id = o.id
            ORDER BY o.id;
            SELECT setval(pg_get_serial_sequence('integrations_outboxmessage', 'id'),
                (SELECT max(id) FROM integrations_outboxmessage))""",
        ),
        (
            "sync attempts",
            f"""INSERT INTO integrations_syncattempt (id, operation, started_at, latency_ms,
                status_code, outcome, error, vendor_response, connection_id)
            SELECT a.id, 'put_invoices',
                now() - interval '400 days' + make_interval(secs => a.id * 3.0),
                180 + a.id % 700, 400, 'business', 'ValidationException',
                '{{"ErrorNumber":10,"Type":"ValidationException","Elements":[{{"ValidationErrors":'
                || '[{{"Message":"TaxNumber is required"}}]}}]}}',
                {xero}
            FROM bench_attempt a ORDER BY a.id;
            SELECT setval(pg_get_serial_sequence('integrations_syncattempt', 'id'), {ATTEMPTS})""",
        ),
        (
            "attempts of the outbox rows",
            f"""INSERT INTO integrations_syncattempt_messages (syncattempt_id, outboxmessage_id)
            SELECT id, outbox_id FROM bench_attempt ORDER BY id;
            SELECT setval(pg_get_serial_sequence('integrations_syncattempt_messages', 'id'),
                {ATTEMPTS})""",
        ),
        (
            "audit trail and comments",
            """INSERT INTO exceptions_caseevent (at, actor_label, action, revision, before,
                after, actor_id, case_id)
            SELECT first_seen_at, 'Concord', 'opened', 0, '{}'::jsonb,
                jsonb_build_object('queue', queue, 'priority', priority, 'records',
                    record_count), NULL::integer, id
            FROM exceptions_exceptioncase
            UNION ALL
            SELECT resolved_at, 'Concord', status, revision, '{"status": "open"}'::jsonb,
                jsonb_build_object('status', status, 'note', resolution_note), NULL::integer, id
            FROM exceptions_exceptioncase WHERE status <> 'open'
            ORDER BY 8, 1;
            INSERT INTO exceptions_casecomment (case_id, author_id, at, text)
            SELECT id, assignee_id, last_seen_at,
                'Asked the customer for their tax number; waiting for an answer.'
            FROM exceptions_exceptioncase WHERE assignee_id IS NOT NULL AND id % 5 = 0""",
        ),
        (
            "drop the draws",
            "DROP TABLE bench_case_draw, bench_kind, bench_case_raw, bench_case, bench_outbox, "
            "bench_attempt_plan, bench_attempt, bench_attempt_count",
        ),
    ]
    return steps


# --- The figures -------------------------------------------------------------------------------

NEXT = re.compile(r'<a href="([^"]+)"[^>]*rel="next"')


def queue_list(sandbox: Any = None, **_: Any) -> Iterator[Figure]:
    """The queue list under filters, sorts, searches and deep pages."""
    with PagesDatabase() as pages:
        yield _figure("queue_list_p95_ms", _queue_list_requests(), pages)


def case_detail(sandbox: Any = None, **_: Any) -> Iterator[Figure]:
    """Case pages: small cases, and huge ones (50,000 blocked records, 200 attempts)."""
    with PagesDatabase() as pages:
        yield _figure("case_detail_p95_ms", _case_detail_requests(), pages)


# (what, signed-in client, URL)
Request = tuple[str, Client, str]


def _client(username: str) -> Client:
    client = Client()
    client.force_login(User.objects.get(username=username))
    return client


def _get(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return response.content.decode()


def _deep(client: Client, url: str) -> str:
    """The URL of page DEEP_PAGES + 1 of the list at `url`, by following its Next link."""
    for _ in range(DEEP_PAGES):
        found = NEXT.search(_get(client, url))
        assert found, f"no next page after {url}"
        url = html.unescape(found[1])
    return url


def _queue_list_requests() -> list[Request]:
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    finance = _client("bench_finance_0")
    admin = _client("bench_integration_admin_0")
    base = reverse("exceptions:queue")

    def q(**params: Any) -> str:
        return f"{base}?{urlencode(params, doseq=True)}" if params else base

    with db.cursor() as cursor:
        # Business ids a finance person has in hand: an invoice number an open finance case
        # holds, its customer's name, a project code and a time entry id of open cases.
        cursor.execute(
            "SELECT i.number, cu.name FROM exceptions_blockedrecord b "
            "JOIN exceptions_exceptioncase c ON c.id = b.case_id "
            "JOIN integrations_invoice i ON i.id = b.record_id "
            "JOIN integrations_customer cu ON cu.id = i.customer_id "
            "WHERE c.queue = 'finance' AND c.status = 'open' AND b.record_type = 'invoice' "
            "ORDER BY c.id LIMIT 5"
        )
        invoices = cursor.fetchall()
        cursor.execute(
            "SELECT p.code, b.record_id FROM exceptions_exceptioncase c "
            "JOIN integrations_project p ON p.id = c.project_id "
            "JOIN exceptions_blockedrecord b ON b.case_id = c.id AND b.record_type = 'timeentry' "
            "WHERE c.queue = 'finance' AND c.status = 'open' ORDER BY c.id LIMIT 5"
        )
        projects = cursor.fetchall()
        # Cursors far into the set: the 30,000th open case (of 100,000) by SLA due, the
        # 100,000th resolved finance case (of 250,000) by amount.
        cursor.execute(
            "SELECT id, sla_due_at FROM exceptions_exceptioncase WHERE status = 'open' "
            "AND sla_due_at IS NOT NULL ORDER BY sla_due_at, id OFFSET %s LIMIT 1",
            [CASES * 3 // 100],
        )
        far_id, far_due = cursor.fetchone()
        cursor.execute(
            "SELECT id, amount_blocked FROM exceptions_exceptioncase WHERE status = 'resolved' "
            "AND queue = 'finance' ORDER BY amount_blocked DESC, id DESC OFFSET %s LIMIT 1",
            [CASES // 10],
        )
        deep_id, deep_amount = cursor.fetchone()
    far = selectors.cursor_encode("sla", far_due, far_id)
    deep_resolved = selectors.cursor_encode("amount", deep_amount, deep_id)
    names = [name for _, name in invoices]
    mix: list[Request] = [
        ("default", finance, q()),
        *((f"sort {s}", finance, q(sort=s)) for s in ("sla", "amount", "age")),
        ("queue", finance, q(queue="finance")),
        ("resolved", finance, q(status="resolved")),
        ("resolved by amount", finance, q(status="resolved", sort="amount")),
        ("waived by age", finance, q(status="waived", sort="age")),
        ("breached", finance, q(sla="breached")),
        ("due soon", finance, q(sla="due_soon")),
        ("amount range", finance, q(amount_min=1000, amount_max=5000, sort="amount")),
        ("assignee me", finance, q(assignee="me")),
        ("unassigned", finance, q(assignee="none")),
        ("case type", finance, q(case_type="vendor_validation")),
        ("legal entity", finance, q(legal_entity=2, region="americas")),
        *((f"search invoice {n}", finance, q(q=number)) for n, (number, _) in enumerate(invoices)),
        *((f"search customer {n}", finance, q(q=name)) for n, name in enumerate(names[:3])),
        ("search part of a name", finance, q(q=names[0].split()[0])),
        *((f"search project {n}", finance, q(q=code)) for n, (code, _) in enumerate(projects[:2])),
        *((f"search TE {n}", finance, q(q=f"TE-{te}")) for n, (_, te) in enumerate(projects[:2])),
        ("admin default", admin, q()),
        ("admin every queue", admin, q(queue="")),
        ("admin every queue by amount", admin, q(queue="", sort="amount")),
        ("admin resolved everywhere", admin, q(queue="", status="resolved")),
        ("admin finance breached", admin, q(queue="finance", sla="breached")),
        ("cursor far", admin, q(queue="", cursor=far)),
        (
            "cursor deep resolved",
            finance,
            q(status="resolved", sort="amount", cursor=deep_resolved),
        ),
    ]
    started = time.perf_counter()
    for label, client, url in [
        ("page 51 sla", finance, q()),
        ("page 51 amount", finance, q(sort="amount")),
        ("page 51 age resolved", finance, q(status="resolved", sort="age")),
        ("page 51 every queue", admin, q(queue="", sort="amount")),
    ]:
        mix.append((label, client, _deep(client, url)))
    _say(f"  followed Next 4 x {DEEP_PAGES} times in {time.perf_counter() - started:.1f} s")
    return mix


def _case_detail_requests() -> list[Request]:
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    clients = {q: _client(f"bench_{q}_0") for q in QUEUE_GROUPS}
    rng = random.Random(7)
    mix: list[Request] = []
    huge = list(
        ExceptionCase.objects.filter(record_count=HUGE_RECORDS)
        .order_by("id")
        .values_list("id", "queue")
    )
    assert huge, "no huge case in the seed"
    for case_id, queue in huge:
        mix.append((f"huge {queue}", clients[queue], reverse("exceptions:case", args=[case_id])))
    for queue in QUEUE_GROUPS:
        ids = list(
            ExceptionCase.objects.filter(queue=queue, pk__lte=CASES, pk__gt=0)
            .filter(pk__in=[rng.randrange(1, CASES) for _ in range(4000)])
            .values_list("id", flat=True)[:12]
        )
        for case_id in ids:
            mix.append(
                (f"small {queue}", clients[queue], reverse("exceptions:case", args=[case_id]))
            )
    # The integration admins see every queue's cases.
    mix += [
        (f"admin {label}", clients["integration_admin"], url)
        for label, _, url in mix
        if not label.endswith("integration_admin")
    ][:12]
    return mix


def _figure(name: str, mix: list[Request], pages: PagesDatabase) -> Figure:
    for _, client, url in mix[:WARMUP]:
        _get(client, url)
    timings: dict[str, list[float]] = {}
    all_ms: list[float] = []
    for n in range(max(REQUESTS, len(mix))):
        label, client, url = mix[n % len(mix)]
        started = time.perf_counter()
        response = client.get(url)
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status_code == 200, (label, url, response.status_code)
        timings.setdefault(label, []).append(elapsed)
        all_ms.append(elapsed)
    p = statistics.quantiles(all_ms, n=100)
    worst = sorted(((max(v), k) for k, v in timings.items()), reverse=True)[:5]
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM exceptions_exceptioncase), "
            "(SELECT reltuples::bigint FROM pg_class WHERE relname = 'exceptions_blockedrecord'), "
            "(SELECT reltuples::bigint FROM pg_class WHERE relname = 'integrations_syncattempt')"
        )
        cases, blocked, attempts = cursor.fetchone()
    return {
        "name": name,
        "value": round(p[94], 2),
        "unit": "ms (p95 server time of the page)",
        "target": TARGET_MS,
        "requests": len(all_ms),
        "kinds": len(timings),
        "p50": round(p[49], 2),
        "max": round(max(all_ms), 2),
        "slowest": {k: round(v, 1) for v, k in worst},
        "cases": cases,
        "blocked_records": blocked,
        "attempts": attempts,
        "seeded_s": round(pages.seed_s, 1) if not pages.kept else "kept",
    }
