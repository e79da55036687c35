-- The store's SQL views. Loaded into every query connection (store/query.py).
--
-- They read two relations the query engine brings up to date before each query:
--   _events_raw    every event: open segments (read incrementally) + Parquet,
--                  with ts_us = UTC microseconds since the epoch (exact, BIGINT)
--   _workflow_defs one row per registered workflow version: definition (JSON)
-- and the lookup tables generated from store/statuses.py (_run_status,
-- _attempt_end, _attempt_end_by_reason, _task_status, _attempt_open_status),
-- which hold every event-type -> status decision: no status is decided here.
-- The only words this file compares with are the runs.tasks_* bucket names and
-- the event types that select rows ('RunStarted', 'TaskStarted'); the tests
-- check those against kernelflow.events.

-- events: one row per event, as appended.
CREATE OR REPLACE VIEW events AS
SELECT event_id, run_id, seq, make_timestamp(ts_us) AS ts, type, workflow, workflow_version,
       task_id, attempt, payload, actor
FROM _events_raw;

-- runs: one row per run.
CREATE OR REPLACE VIEW runs AS
WITH per_run AS (
    SELECT run_id,
           arg_min(workflow, seq) AS workflow,
           arg_min(workflow_version, seq) AS workflow_version,
           min(ts_us) AS first_us,
           count(*) AS events,
           max(seq) AS last_seq
    FROM _events_raw
    GROUP BY run_id
),
run_level AS (
    -- The last run-level event decides: a resumed run is 'running' again.
    SELECT e.run_id,
           arg_max(s.status, e.seq) AS status,
           arg_max(CASE WHEN s.ends_run THEN e.ts_us END, e.seq) AS ended_us
    FROM _events_raw e
    JOIN _run_status s ON s.type = e.type
    GROUP BY e.run_id
),
started AS (
    -- The latest RunStarted, as the reducer keeps it (a resume starts again).
    SELECT run_id,
           arg_max(ts_us, seq) AS started_us,
           arg_max(payload, seq) AS payload,
           arg_max(actor, seq) AS actor
    FROM _events_raw
    WHERE type = 'RunStarted'
    GROUP BY run_id
),
task_status AS (
    -- A task's status is its last task-level event's, as in the reducer, so a
    -- task a resumed run re-ran counts once, as it is now.
    SELECT e.run_id,
           e.task_id,
           arg_max(t.bucket, e.seq) AS bucket
    FROM _events_raw e
    JOIN _task_status t ON t.type = e.type
    WHERE e.task_id IS NOT NULL
    GROUP BY e.run_id, e.task_id
),
task_counts AS (
    SELECT run_id,
           count(*) FILTER (WHERE bucket = 'succeeded') AS tasks_succeeded,
           count(*) FILTER (WHERE bucket = 'failed') AS tasks_failed,
           count(*) FILTER (WHERE bucket = 'skipped') AS tasks_skipped
    FROM task_status
    GROUP BY run_id
)
SELECT p.run_id,
       p.workflow,
       p.workflow_version,
       r.status,
       make_timestamp(coalesce(s.started_us, p.first_us)) AS started_at,
       make_timestamp(r.ended_us) AS ended_at,
       (r.ended_us - coalesce(s.started_us, p.first_us)) / 1e6 AS duration_s,
       s.payload -> 'inputs' AS inputs,
       CAST(json_array_length(s.payload -> 'tasks') AS BIGINT) AS tasks_total,
       coalesce(c.tasks_succeeded, 0) AS tasks_succeeded,
       coalesce(c.tasks_failed, 0) AS tasks_failed,
       coalesce(c.tasks_skipped, 0) AS tasks_skipped,
       s.actor,
       s.payload ->> 'notebook' AS notebook,
       p.events,
       p.last_seq
FROM per_run p
LEFT JOIN run_level r USING (run_id)
LEFT JOIN started s USING (run_id)
LEFT JOIN task_counts c USING (run_id)
ORDER BY started_at, run_id;

-- task_attempts: one row per (run_id, task_id, attempt).
CREATE OR REPLACE VIEW task_attempts AS
WITH attempts AS (
    SELECT run_id,
           task_id,
           attempt,
           arg_min(workflow, seq) AS workflow,
           arg_min(workflow_version, seq) AS workflow_version,
           min(ts_us) FILTER (WHERE type = 'TaskStarted') AS started_us,
           bool_or(type = 'TaskStarted') AS started
    FROM _events_raw
    WHERE attempt IS NOT NULL AND task_id IS NOT NULL
    GROUP BY run_id, task_id, attempt
),
ends AS (
    -- Exactly one ending event per attempt is the contract; if a bug ever
    -- wrote two, the last one by seq is what the reducer would keep too.
    SELECT e.run_id,
           e.task_id,
           e.attempt,
           arg_max(e.type, e.seq) AS type,
           arg_max(e.ts_us, e.seq) AS ended_us,
           arg_max(e.payload, e.seq) AS payload
    FROM _events_raw e
    SEMI JOIN _attempt_end m ON m.type = e.type
    WHERE e.attempt IS NOT NULL AND e.task_id IS NOT NULL
    GROUP BY e.run_id, e.task_id, e.attempt
)
SELECT a.run_id,
       a.workflow,
       a.workflow_version,
       a.task_id,
       a.attempt,
       coalesce(br.status, m.status, o.status) AS status,
       coalesce(m.will_retry, false) AS will_retry,
       make_timestamp(a.started_us) AS started_at,
       make_timestamp(n.ended_us) AS ended_at,
       -- The executor's own measure when it reports one, else the event gap.
       coalesce(TRY_CAST(n.payload ->> 'duration_ms' AS DOUBLE),
                (n.ended_us - a.started_us) / 1e3) AS duration_ms,
       n.payload -> 'error' ->> 'exc_type' AS error_type,
       n.payload -> 'error' ->> 'message' AS error_message
FROM attempts a
LEFT JOIN ends n USING (run_id, task_id, attempt)
LEFT JOIN _attempt_end m ON m.type = n.type
LEFT JOIN _attempt_end_by_reason br ON br.type = n.type AND br.reason = n.payload ->> 'reason'
LEFT JOIN _attempt_open_status o ON o.started = a.started
ORDER BY a.run_id, a.started_us NULLS LAST, a.task_id, a.attempt;

-- workflows: one row per registered (name, version).
CREATE OR REPLACE VIEW workflows AS
WITH usage AS (
    SELECT workflow, workflow_version, count(*) AS runs, max(started_at) AS last_run_at
    FROM runs
    GROUP BY workflow, workflow_version
)
SELECT d.definition ->> 'name' AS name,
       d.definition ->> 'version' AS version,
       TRY_CAST(d.definition ->> 'registered_at' AS TIMESTAMP) AS registered_at,
       CAST(json_array_length(d.definition -> 'tasks') AS BIGINT) AS tasks,
       d.definition,
       coalesce(u.runs, 0) AS runs,
       u.last_run_at
FROM _workflow_defs d
LEFT JOIN usage u
       ON u.workflow = d.definition ->> 'name' AND u.workflow_version = d.definition ->> 'version'
ORDER BY registered_at, name, version;

-- dead_letters: runs that failed for good and wait for a decision (kf.dlq()):
-- failed, not interrupted (those are resumed, not retried), not a sub-workflow's
-- child run (its parent step failed with it), and neither retried nor discarded.
CREATE OR REPLACE VIEW dead_letters AS
WITH failed AS (
    SELECT run_id, arg_max(payload, seq) AS payload, arg_max(ts_us, seq) AS failed_us
    FROM _events_raw
    WHERE type = 'RunFailed'
    GROUP BY run_id
),
handled AS (
    SELECT run_id, bool_or(type = 'DeadLetterRetried') AS retried
    FROM _events_raw
    WHERE type IN ('DeadLetterRetried', 'DeadLetterDiscarded')
    GROUP BY run_id
),
children AS (
    SELECT DISTINCT run_id
    FROM _events_raw
    WHERE type = 'RunStarted' AND payload ->> 'parent_run_id' IS NOT NULL
)
SELECT r.run_id,
       r.workflow,
       r.workflow_version,
       make_timestamp(f.failed_us) AS failed_at,
       f.payload ->> 'error' AS error,
       r.inputs,
       r.tasks_failed
FROM runs r
JOIN failed f USING (run_id)
WHERE r.status = 'failed'
  AND coalesce(TRY_CAST(f.payload ->> 'interrupted' AS BOOLEAN), false) = false
  AND r.run_id NOT IN (SELECT run_id FROM handled)
  AND r.run_id NOT IN (SELECT run_id FROM children)
ORDER BY failed_at, run_id;
