"""The SQL that keeps CaseTally (exceptions/models.py): PostgreSQL only, installed by migration
0009. Kept here, in one place, so the migration, the compaction and the tests read the same text.
The statements are built from this module's constants only, never from input.
"""

# ruff: noqa: S608

from __future__ import annotations

DIMENSIONS = "queue, process, case_type, legal_entity_id, region, assignee_id, kind, currency"

# One case's contribution as rows (kind, currency, cases, amount); see CaseTally's docstring.
_CONTRIBUTION = f"""
    IF c.currency <> '' THEN
        INSERT INTO exceptions_casetallydelta ({DIMENSIONS}, cases, amount)
        VALUES (c.queue, c.process, c.case_type, coalesce(c.legal_entity_id, 0), c.region,
                coalesce(c.assignee_id, 0), 's', c.currency, sign, sign * c.amount_blocked);
    ELSIF c.amounts IS NOT NULL AND c.amounts <> '{{}}'::jsonb THEN
        INSERT INTO exceptions_casetallydelta ({DIMENSIONS}, cases, amount)
        VALUES (c.queue, c.process, c.case_type, coalesce(c.legal_entity_id, 0), c.region,
                coalesce(c.assignee_id, 0), 'm', '', sign, 0);
        INSERT INTO exceptions_casetallydelta ({DIMENSIONS}, cases, amount)
        SELECT c.queue, c.process, c.case_type, coalesce(c.legal_entity_id, 0), c.region,
               coalesce(c.assignee_id, 0), 'c', e.key, sign, sign * e.value::numeric
        FROM jsonb_each_text(c.amounts) AS e;
    ELSE
        INSERT INTO exceptions_casetallydelta ({DIMENSIONS}, cases, amount)
        VALUES (c.queue, c.process, c.case_type, coalesce(c.legal_entity_id, 0), c.region,
                coalesce(c.assignee_id, 0), 'n', '', sign, 0);
    END IF;
"""

INSTALL = f"""
CREATE OR REPLACE FUNCTION exceptions_case_tally_add(c exceptions_exceptioncase, sign integer)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
{_CONTRIBUTION}
END $$;

CREATE OR REPLACE FUNCTION exceptions_case_tally() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The common change, a join or a clear moving the amount of an open case in one currency:
    -- one row of the difference instead of the old contribution out and the new one in.
    IF TG_OP = 'UPDATE' AND OLD.status = 'open' AND NEW.status = 'open'
       AND OLD.currency <> '' AND NEW.currency = OLD.currency
       AND NEW.queue = OLD.queue AND NEW.process = OLD.process
       AND NEW.case_type = OLD.case_type AND NEW.region = OLD.region
       AND NEW.legal_entity_id IS NOT DISTINCT FROM OLD.legal_entity_id
       AND NEW.assignee_id IS NOT DISTINCT FROM OLD.assignee_id THEN
        INSERT INTO exceptions_casetallydelta ({DIMENSIONS}, cases, amount)
        VALUES (NEW.queue, NEW.process, NEW.case_type, coalesce(NEW.legal_entity_id, 0),
                NEW.region, coalesce(NEW.assignee_id, 0), 's', NEW.currency, 0,
                NEW.amount_blocked - OLD.amount_blocked);
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status = 'open' THEN
        PERFORM exceptions_case_tally_add(OLD, -1);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status = 'open' THEN
        PERFORM exceptions_case_tally_add(NEW, 1);
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS case_tally_insert_delete ON exceptions_exceptioncase;
CREATE TRIGGER case_tally_insert_delete AFTER INSERT OR DELETE ON exceptions_exceptioncase
FOR EACH ROW EXECUTE FUNCTION exceptions_case_tally();

-- Most updates (a join's last seen and occurrences, a message, a revision) change nothing the
-- tally counts: the WHEN clause skips them without calling the function.
DROP TRIGGER IF EXISTS case_tally_update ON exceptions_exceptioncase;
CREATE TRIGGER case_tally_update AFTER UPDATE ON exceptions_exceptioncase
FOR EACH ROW WHEN (
    (OLD.status = 'open' OR NEW.status = 'open') AND (
        OLD.status IS DISTINCT FROM NEW.status
        OR OLD.queue IS DISTINCT FROM NEW.queue
        OR OLD.process IS DISTINCT FROM NEW.process
        OR OLD.case_type IS DISTINCT FROM NEW.case_type
        OR OLD.legal_entity_id IS DISTINCT FROM NEW.legal_entity_id
        OR OLD.region IS DISTINCT FROM NEW.region
        OR OLD.assignee_id IS DISTINCT FROM NEW.assignee_id
        OR OLD.currency IS DISTINCT FROM NEW.currency
        OR OLD.amount_blocked IS DISTINCT FROM NEW.amount_blocked
        OR OLD.amounts IS DISTINCT FROM NEW.amounts
    )
)
EXECUTE FUNCTION exceptions_case_tally();

-- TRUNCATE (the tests' flush) empties the tally with the cases.
CREATE OR REPLACE FUNCTION exceptions_case_tally_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM exceptions_casetallydelta;
    DELETE FROM exceptions_casetally;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS case_tally_truncate ON exceptions_exceptioncase;
CREATE TRIGGER case_tally_truncate AFTER TRUNCATE ON exceptions_exceptioncase
FOR EACH STATEMENT EXECUTE FUNCTION exceptions_case_tally_truncate();
"""

UNINSTALL = """
DROP TRIGGER IF EXISTS case_tally_truncate ON exceptions_exceptioncase;
DROP TRIGGER IF EXISTS case_tally_update ON exceptions_exceptioncase;
DROP TRIGGER IF EXISTS case_tally_insert_delete ON exceptions_exceptioncase;
DROP FUNCTION IF EXISTS exceptions_case_tally_truncate();
DROP FUNCTION IF EXISTS exceptions_case_tally();
DROP FUNCTION IF EXISTS exceptions_case_tally_add(exceptions_exceptioncase, integer);
"""

# Every open case counted afresh (the migration's first fill; a repair after a restore).
REBUILD = f"""
DELETE FROM exceptions_casetallydelta;
DELETE FROM exceptions_casetally;
INSERT INTO exceptions_casetally ({DIMENSIONS}, cases, amount)
SELECT queue, process, case_type, legal_entity_id, region, assignee_id, kind, currency,
       sum(cases), sum(amount)
FROM (
    SELECT queue, process, case_type, coalesce(legal_entity_id, 0) AS legal_entity_id, region,
           coalesce(assignee_id, 0) AS assignee_id,
           CASE WHEN currency <> '' THEN 's' WHEN amounts <> '{{}}'::jsonb THEN 'm' ELSE 'n' END
               AS kind,
           currency, 1 AS cases,
           CASE WHEN currency <> '' THEN amount_blocked ELSE 0 END AS amount
    FROM exceptions_exceptioncase WHERE status = 'open'
    UNION ALL
    SELECT queue, process, case_type, coalesce(legal_entity_id, 0), region,
           coalesce(assignee_id, 0), 'c', e.key, 1, e.value::numeric
    FROM exceptions_exceptioncase, jsonb_each_text(amounts) AS e
    WHERE status = 'open' AND currency = '' AND amounts <> '{{}}'::jsonb
) AS contributions
GROUP BY queue, process, case_type, legal_entity_id, region, assignee_id, kind, currency;
"""

# Fold the deltas into the tally: one statement, so a reader sees the deltas or their sum, never
# both or neither. The advisory lock keeps two compactions from doing the same work.
COMPACT = f"""
WITH moved AS (
    DELETE FROM exceptions_casetallydelta RETURNING {DIMENSIONS}, cases, amount
), summed AS (
    SELECT {DIMENSIONS}, sum(cases) AS cases, sum(amount) AS amount
    FROM moved GROUP BY {DIMENSIONS}
)
INSERT INTO exceptions_casetally ({DIMENSIONS}, cases, amount)
SELECT {DIMENSIONS}, cases, amount FROM summed
ON CONFLICT ({DIMENSIONS}) DO UPDATE
SET cases = exceptions_casetally.cases + EXCLUDED.cases,
    amount = exceptions_casetally.amount + EXCLUDED.amount
"""
COMPACT_LOCK = 7_301_101
PRUNE = "DELETE FROM exceptions_casetally WHERE cases = 0 AND amount = 0"
