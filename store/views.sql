-- The store's SQL views and table macros. Loaded into every query connection (store/query.py).
--
-- They read two relations the query engine brings up to date before each query:
--   _events_raw    every event: open segments (read incrementally) + Parquet,
--                  with ts_us = UTC microseconds since the epoch (exact, BIGINT)
--   _workflow_defs one row per registered workflow version: definition (JSON)
-- and the lookup tables generated from store/statuses.py (_run_status,
-- _attempt_end, _attempt_interrupted, _attempt_end_by_reason, _task_status, _attempt_open_status,
-- _task_effect, _run_effect, _approval_answer, _delivery_status, _initial), which hold every
-- event-type -> status decision and say which event writes which field: no
-- status is decided here. The only words this file compares with are the
-- runs.tasks_* bucket names, the effect words of statuses.py ('set', 'next')
-- and the event types that select rows ('RunStarted', 'ApprovalRequested', ...);
-- the tests check those against kernelflow.events and store/statuses.py.
--
-- arg_max(x, seq) skips the rows where x is NULL, so "what the last writer
-- left, NULL included" is written arg_max({'v': x}, seq).v throughout.

-- A JSON null read from a payload is SQL NULL, as the reducer's None is.
CREATE OR REPLACE MACRO _json_or_null(j) AS CASE WHEN CAST(j AS VARCHAR) = 'null' THEN NULL ELSE j END;

-- Time-travel points: an integer is a seq; anything else must read as a
-- timestamp (naive = UTC, as the session is), whose epoch micros this gives.
-- (DuckDB's integer types are the ones whose names end in int or integer.)
CREATE OR REPLACE MACRO _point_is_seq(point) AS regexp_matches(lower(typeof(point)), '(int|integer)$');
CREATE OR REPLACE MACRO _point_us(point) AS
    CASE WHEN _point_is_seq(point) THEN NULL
         ELSE epoch_us(TRY_CAST(CAST(point AS VARCHAR) AS TIMESTAMPTZ)) END;

-- events: one row per event, as appended.
CREATE OR REPLACE VIEW events AS
SELECT event_id, run_id, seq, make_timestamp(ts_us) AS ts, type, workflow, workflow_version,
       task_id, attempt, payload, actor
FROM _events_raw;

-- runs: one row per run, as the reducer folds it.
CREATE OR REPLACE VIEW runs AS
WITH per_run AS (
    SELECT run_id,
           arg_min(workflow, seq) AS first_workflow,
           arg_min(workflow_version, seq) AS first_version,
           min(ts_us) AS first_us,
           count(*) AS events,
           max(seq) AS last_seq
    FROM _events_raw
    GROUP BY run_id
),
run_level AS (
    -- The last run-level event decides the status (a resumed run is 'running'
    -- again); each field is what its last writer left: a resume clears
    -- ended_at and continues with the version its RunResumed names.
    SELECT e.run_id,
           arg_max(s.status, e.seq) AS status,
           arg_max(e.workflow, e.seq) FILTER (WHERE f.workflow = 'set') AS workflow,
           arg_max(e.workflow_version, e.seq) FILTER (WHERE f.workflow_version = 'set') AS workflow_version,
           (arg_max({'v': CASE WHEN f.ended_at = 'set' THEN e.ts_us END}, e.seq)
               FILTER (WHERE f.ended_at IS NOT NULL)).v AS ended_us
    FROM _events_raw e
    JOIN _run_status s ON s.type = e.type
    LEFT JOIN _run_effect f ON f.type = e.type
    GROUP BY e.run_id
),
started AS (
    -- The latest start, as the reducer keeps it: its time, inputs and actor.
    SELECT e.run_id,
           arg_max(e.ts_us, e.seq) AS started_us,
           arg_max(e.payload, e.seq) AS payload,
           arg_max(e.actor, e.seq) AS actor
    FROM _events_raw e
    SEMI JOIN _run_effect f ON f.type = e.type AND f.started_at = 'set'
    GROUP BY e.run_id
),
task_status AS (
    -- A task's status is its last task-level event's, as in the reducer, so a
    -- task a resumed run re-ran (or a loop reset) counts once, as it is now.
    SELECT e.run_id,
           e.task_id,
           arg_max({'b': t.bucket}, e.seq).b AS bucket
    FROM _events_raw e
    JOIN _task_status t ON t.type = e.type
    WHERE e.task_id IS NOT NULL
    GROUP BY e.run_id, e.task_id
),
declared_tasks AS (
    SELECT DISTINCT e.run_id, unnest(from_json(e.payload -> 'tasks', '["VARCHAR"]')) AS task_id
    FROM _events_raw e
    SEMI JOIN _run_effect f ON f.type = e.type AND f.tasks = 'set'
),
task_counts AS (
    -- The tasks the reducer knows: those a start or a resume lists, and any with events.
    SELECT run_id,
           count(*) AS tasks_total,
           count(*) FILTER (WHERE t.bucket = 'succeeded') AS tasks_succeeded,
           count(*) FILTER (WHERE t.bucket = 'failed') AS tasks_failed,
           count(*) FILTER (WHERE t.bucket = 'skipped') AS tasks_skipped
    FROM declared_tasks d
    FULL OUTER JOIN task_status t USING (run_id, task_id)
    GROUP BY run_id
)
SELECT p.run_id,
       coalesce(r.workflow, p.first_workflow) AS workflow,
       coalesce(r.workflow_version, p.first_version) AS workflow_version,
       r.status,
       make_timestamp(coalesce(s.started_us, p.first_us)) AS started_at,
       make_timestamp(r.ended_us) AS ended_at,
       (r.ended_us - coalesce(s.started_us, p.first_us)) / 1e6 AS duration_s,
       s.payload -> 'inputs' AS inputs,
       coalesce(c.tasks_total, 0) AS tasks_total,
       coalesce(c.tasks_succeeded, 0) AS tasks_succeeded,
       coalesce(c.tasks_failed, 0) AS tasks_failed,
       coalesce(c.tasks_skipped, 0) AS tasks_skipped,
       s.actor,
       s.payload ->> 'notebook' AS notebook,
       s.payload -> 'parameters' AS parameters,
       s.payload ->> 'output_notebook' AS output_notebook,
       s.payload ->> 'batch_id' AS batch_id,
       s.payload -> 'trigger' ->> 'trigger_id' AS trigger_id,
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
),
cut AS (
    -- An attempt a crash cut short has no ending event; the resume's reset
    -- of that attempt is where it ended.
    SELECT e.run_id,
           e.task_id,
           e.attempt,
           min(e.ts_us) AS ended_us,
           any_value(i.status) AS status,
           any_value(i.will_retry) AS will_retry
    FROM _events_raw e
    JOIN _attempt_interrupted i ON i.type = e.type
    WHERE e.attempt IS NOT NULL AND e.task_id IS NOT NULL
      AND TRY_CAST(e.payload ->> 'resume' AS BOOLEAN)
    GROUP BY e.run_id, e.task_id, e.attempt
)
SELECT a.run_id,
       a.workflow,
       a.workflow_version,
       a.task_id,
       a.attempt,
       coalesce(br.status, m.status, c.status, o.status) AS status,
       coalesce(m.will_retry, c.will_retry, false) AS will_retry,
       make_timestamp(a.started_us) AS started_at,
       make_timestamp(coalesce(n.ended_us, c.ended_us)) AS ended_at,
       -- The executor's own measure when it reports one, else the event gap.
       coalesce(TRY_CAST(n.payload ->> 'duration_ms' AS DOUBLE),
                (n.ended_us - a.started_us) / 1e3) AS duration_ms,
       n.payload -> 'error' ->> 'exc_type' AS error_type,
       n.payload -> 'error' ->> 'message' AS error_message
FROM attempts a
LEFT JOIN ends n USING (run_id, task_id, attempt)
LEFT JOIN _attempt_end m ON m.type = n.type
LEFT JOIN cut c USING (run_id, task_id, attempt)
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

-- state_at(run_id, point): the run as the reducer folds it up to `point`, one
-- row per task known then. `point` is a seq (an integer: the events with
-- seq <= point) or a timestamp (TIMESTAMP, TIMESTAMPTZ, DATE or text; naive is
-- UTC: the events up to the first one recorded after it). An unknown run, or a
-- point before the run started, gives no rows. (The first parameter is named
-- `run`: DuckDB refuses a macro parameter named like a column of a temporary
-- table the macro reads.)
CREATE OR REPLACE MACRO state_at(run, point) AS TABLE
WITH run_events AS (
    SELECT e.seq, e.ts_us, e.type, e.task_id, e.attempt, e.payload
    FROM _events_raw e
    WHERE e.run_id = run
),
cut AS (
    -- A timestamp cuts the history at the first event recorded after it, so
    -- the state at a time is always a prefix the reducer can fold, even if a
    -- clock stepped back between two events.
    SELECT CASE
               WHEN _point_is_seq(point) THEN TRY_CAST(CAST(point AS VARCHAR) AS BIGINT)
               WHEN _point_us(point) IS NULL THEN error(
                   'state_at(run_id, point): point must be a seq (an integer) or a timestamp '
                   || '(TIMESTAMP, or text such as ''2026-11-20 10:04:00'', UTC), not '
                   || coalesce(CAST(point AS VARCHAR), 'null'))
               ELSE coalesce(b.first_after - 1, b.last)
           END AS seq
    FROM (
        SELECT min(e.seq) FILTER (WHERE e.ts_us > _point_us(point)) AS first_after, max(e.seq) AS last
        FROM run_events e
    ) b
),
upto AS (
    SELECT e.* FROM run_events e, cut WHERE e.seq <= cut.seq
),
run_now AS (
    SELECT max(e.seq) AS last_seq,
           coalesce(arg_max(s.status, e.seq), (SELECT run_status FROM _initial)) AS run_status
    FROM upto e
    LEFT JOIN _run_status s ON s.type = e.type
),
task_events AS (
    SELECT e.seq, e.ts_us, e.task_id, e.attempt, e.payload, s.status,
           f.attempt AS fx_attempt, f.iteration AS fx_iteration, f.started_at AS fx_started,
           f.ended_at AS fx_ended, f.output AS fx_output, f.error AS fx_error, f.reason AS fx_reason
    FROM upto e
    JOIN _task_status s ON s.type = e.type
    LEFT JOIN _task_effect f ON f.type = e.type
    WHERE e.task_id IS NOT NULL
),
appearances AS (
    -- Where each task first became known, to list them in the reducer's order.
    SELECT e.seq, d.idx, d.task_id
    FROM upto e
    SEMI JOIN _run_effect f ON f.type = e.type AND f.tasks = 'set'
    CROSS JOIN LATERAL (
        SELECT unnest(l) AS task_id, generate_subscripts(l, 1) AS idx
        FROM (SELECT from_json(e.payload -> 'tasks', '["VARCHAR"]') AS l)
    ) d
    UNION ALL
    SELECT seq, 0, task_id FROM task_events
),
known AS (
    SELECT task_id, min({'seq': seq, 'idx': idx}) AS first
    FROM appearances
    GROUP BY task_id
),
fields AS (
    -- Each field is what the last event writing it left: its value, or NULL if it cleared it.
    SELECT task_id,
           arg_max(status, seq) AS status,
           (arg_max({'v': CASE WHEN fx_started = 'set' THEN ts_us END}, seq)
               FILTER (WHERE fx_started IS NOT NULL)).v AS started_us,
           (arg_max({'v': CASE WHEN fx_ended = 'set' THEN ts_us END}, seq)
               FILTER (WHERE fx_ended IS NOT NULL)).v AS ended_us,
           (arg_max({'v': CASE WHEN fx_output = 'set' THEN payload -> 'output' END}, seq)
               FILTER (WHERE fx_output IS NOT NULL)).v AS output,
           (arg_max({'v': CASE WHEN fx_output = 'set' THEN payload -> 'output_ref' END}, seq)
               FILTER (WHERE fx_output IS NOT NULL)).v AS output_ref,
           (arg_max({'v': CASE WHEN fx_error = 'set' THEN payload -> 'error' END}, seq)
               FILTER (WHERE fx_error IS NOT NULL)).v AS error,
           (arg_max({'v': CASE WHEN fx_reason = 'set' THEN payload ->> 'reason' END}, seq)
               FILTER (WHERE fx_reason IS NOT NULL)).v AS reason
    FROM task_events
    GROUP BY task_id
),
counter_steps AS (
    -- Counters ('next'): an event carrying its own number sets it, one without adds 1.
    SELECT task_id, 'attempt' AS field, seq, coalesce(attempt, 0) <> 0 AS explicit, attempt AS value
    FROM task_events
    WHERE fx_attempt = 'next'
    UNION ALL
    SELECT task_id, 'iteration', seq, (payload -> 'iteration') IS NOT NULL,
           TRY_CAST(payload ->> 'iteration' AS BIGINT)
    FROM task_events
    WHERE fx_iteration = 'next'
),
last_explicit AS (
    SELECT task_id, field, max(seq) FILTER (WHERE explicit) AS seq
    FROM counter_steps
    GROUP BY task_id, field
),
counters AS (
    -- The last explicit number (or the initial value) plus the steps after it.
    SELECT c.task_id,
           bool_or(c.field = 'attempt') AS has_attempt,
           max(c.value) FILTER (WHERE c.field = 'attempt') AS attempt,
           bool_or(c.field = 'iteration') AS has_iteration,
           max(c.value) FILTER (WHERE c.field = 'iteration') AS iteration
    FROM (
        SELECT s.task_id, s.field,
               CASE WHEN bool_or(s.explicit) THEN max(s.value) FILTER (WHERE s.explicit)
                    WHEN s.field = 'attempt' THEN (SELECT attempt FROM _initial)
                    ELSE (SELECT iteration FROM _initial) END
               + count(*) FILTER (WHERE NOT s.explicit) AS value
        FROM counter_steps s
        JOIN last_explicit l USING (task_id, field)
        WHERE l.seq IS NULL OR s.seq >= l.seq
        GROUP BY s.task_id, s.field
    ) c
    GROUP BY c.task_id
)
SELECT CAST(run AS VARCHAR) AS run_id,
       k.task_id,
       coalesce(f.status, i.task_status) AS status,
       CASE WHEN c.has_attempt THEN c.attempt ELSE i.attempt END AS attempt,
       CASE WHEN c.has_iteration THEN c.iteration ELSE i.iteration END AS iteration,
       make_timestamp(f.started_us) AS started_at,
       make_timestamp(f.ended_us) AS ended_at,
       _json_or_null(f.output) AS output,
       _json_or_null(f.output_ref) AS output_ref,
       _json_or_null(f.error) AS error,
       f.reason,
       r.last_seq,
       r.run_status
FROM known k
LEFT JOIN fields f USING (task_id)
LEFT JOIN counters c USING (task_id)
CROSS JOIN run_now r
CROSS JOIN _initial i
ORDER BY k.first;

-- runs_active_at(ts): the runs under way at `ts` (started and not ended:
-- running or waiting), with the version and status they had then. `ts` is
-- read as in state_at, and so is each run's history up to it.
CREATE OR REPLACE MACRO runs_active_at(ts) AS TABLE
WITH point AS (
    SELECT CASE WHEN _point_us(ts) IS NULL THEN error(
                    'runs_active_at(ts): ts must be a timestamp (TIMESTAMP, or text such as '
                    || '''2026-11-20 10:04:00'', UTC), not ' || coalesce(CAST(ts AS VARCHAR), 'null'))
                ELSE _point_us(ts) END AS us
),
first_after AS (
    SELECT e.run_id, min(e.seq) AS seq
    FROM _events_raw e, point p
    WHERE e.ts_us > p.us
    GROUP BY e.run_id
),
upto AS (
    SELECT e.*
    FROM _events_raw e
    LEFT JOIN first_after a USING (run_id)
    WHERE a.seq IS NULL OR e.seq < a.seq
),
run_level AS (
    SELECT e.run_id,
           arg_max(s.status, e.seq) AS status,
           arg_max(s.ends_run, e.seq) AS ended,
           arg_min(e.workflow, e.seq) AS first_workflow,
           arg_min(e.workflow_version, e.seq) AS first_version,
           arg_max(e.workflow, e.seq) FILTER (WHERE f.workflow = 'set') AS workflow,
           arg_max(e.workflow_version, e.seq) FILTER (WHERE f.workflow_version = 'set') AS workflow_version,
           arg_max(e.ts_us, e.seq) FILTER (WHERE f.started_at = 'set') AS started_us
    FROM upto e
    JOIN _run_status s ON s.type = e.type
    LEFT JOIN _run_effect f ON f.type = e.type
    GROUP BY e.run_id
)
SELECT run_id,
       coalesce(workflow, first_workflow) AS workflow,
       coalesce(workflow_version, first_version) AS workflow_version,
       status,
       make_timestamp(started_us) AS started_at
FROM run_level
WHERE NOT ended
ORDER BY started_at, run_id;

-- approvals: one row per approval requested (`seq` is the request's), with the
-- answer it got: the first answer for that task after the request, before any
-- later request.
CREATE OR REPLACE VIEW approvals AS
WITH requests AS (
    SELECT e.run_id, e.seq, e.ts_us, e.workflow, e.task_id, e.payload,
           lead(e.seq) OVER (PARTITION BY e.run_id, e.task_id ORDER BY e.seq) AS next_request_seq
    FROM _events_raw e
    WHERE e.type = 'ApprovalRequested'
),
answer_events AS (
    SELECT e.run_id, e.task_id, e.seq, e.ts_us, e.payload, a.status
    FROM _events_raw e
    JOIN _approval_answer a ON a.type = e.type
),
answers AS (
    SELECT r.run_id,
           r.seq,
           arg_min({'status': a.status, 'ts_us': a.ts_us, 'payload': a.payload}, a.seq) AS answer
    FROM requests r
    JOIN answer_events a
      ON a.run_id = r.run_id AND a.task_id = r.task_id AND a.seq > r.seq
     AND (r.next_request_seq IS NULL OR a.seq < r.next_request_seq)
    GROUP BY r.run_id, r.seq
)
SELECT r.run_id,
       r.workflow,
       r.task_id,
       TRY_CAST(r.payload ->> 'iteration' AS BIGINT) AS iteration,
       make_timestamp(r.ts_us) AS requested_at,
       r.payload ->> 'message' AS message,
       _json_or_null(r.payload -> 'preview') AS preview,
       _json_or_null(r.payload -> 'input_schema') AS input_schema,
       make_timestamp(TRY_CAST(r.payload ->> 'expires_at' AS BIGINT)) AS expires_at,
       coalesce(n.answer.status, i.approval_status) AS status,
       n.answer.payload ->> 'outcome' AS outcome,
       -- an expiry has no answerer: it happened when it was recorded
       make_timestamp(coalesce(TRY_CAST(n.answer.payload ->> 'answered_at' AS BIGINT), n.answer.ts_us)) AS answered_at,
       coalesce(n.answer.payload -> 'by' ->> 'name', n.answer.payload -> 'by' ->> 'user') AS answered_by,
       _json_or_null(n.answer.payload -> 'by') AS "by",
       _json_or_null(n.answer.payload -> 'input') AS input,
       n.answer.payload ->> 'comment' AS comment,
       n.answer.payload ->> 'reason' AS reason,
       r.seq
FROM requests r
LEFT JOIN answers n USING (run_id, seq)
CROSS JOIN _initial i
ORDER BY requested_at, r.run_id, r.seq;

-- task_baselines: one row per (workflow, workflow_version, task_id) that has
-- succeeded: its last 30 successful attempts (the duration check's default
-- window, kernelflow/alert_rules.py), which the anomaly detector compares a
-- new duration with. An attempt succeeded when a TaskSucceeded ended it; its
-- duration is measured as in task_attempts (the executor's duration_ms when
-- reported, else TaskStarted to TaskSucceeded). p50_s and p95_s interpolate
-- linearly, as the detector does (kernelflow/anomaly_checks.quantile).
CREATE OR REPLACE VIEW task_baselines AS
WITH attempts AS (
    SELECT run_id,
           task_id,
           attempt,
           arg_max(workflow, seq) FILTER (WHERE type = 'TaskSucceeded') AS workflow,
           arg_max(workflow_version, seq) FILTER (WHERE type = 'TaskSucceeded') AS workflow_version,
           min(ts_us) FILTER (WHERE type = 'TaskStarted') AS started_us,
           max(ts_us) FILTER (WHERE type = 'TaskSucceeded') AS ended_us,
           arg_max(payload, seq) FILTER (WHERE type = 'TaskSucceeded') AS payload
    FROM _events_raw
    WHERE type IN ('TaskStarted', 'TaskSucceeded') AND task_id IS NOT NULL AND attempt IS NOT NULL
    GROUP BY run_id, task_id, attempt
),
latest AS (
    SELECT workflow,
           workflow_version,
           task_id,
           ended_us,
           coalesce(TRY_CAST(payload ->> 'duration_ms' AS DOUBLE) / 1e3, (ended_us - started_us) / 1e6) AS duration_s
    FROM attempts
    WHERE ended_us IS NOT NULL
    QUALIFY row_number() OVER (
        PARTITION BY workflow, workflow_version, task_id ORDER BY ended_us DESC, run_id DESC, attempt DESC) <= 30
)
SELECT workflow,
       workflow_version,
       task_id,
       count(duration_s) AS samples,
       avg(duration_s) AS mean_s,
       stddev_samp(duration_s) AS stddev_s,
       quantile_cont(duration_s, 0.5) AS p50_s,
       quantile_cont(duration_s, 0.95) AS p95_s,
       make_timestamp(max(ended_us)) AS last_at
FROM latest
GROUP BY workflow, workflow_version, task_id
ORDER BY workflow, workflow_version, task_id;

-- alerts: one row per AlertRaised event (kf.alerts() lists them). The payload
-- is kernelflow.widgets.alert.Alert.to_dict() plus `key` and `channels`; the
-- event's own columns give the run, workflow version and task (NULL for a
-- run's alert). AlertDelivery events (in the alert's run, payload.alert_seq =
-- the alert's seq) tell what became of it: `notified` counts those whose
-- status says a channel took the notification (_delivery_status, from
-- store/statuses.py), and
-- `last_delivery_status` is the status of the latest, whatever its channel.
CREATE OR REPLACE VIEW alerts AS
WITH deliveries AS (
    SELECT e.run_id,
           TRY_CAST(e.payload ->> 'alert_seq' AS BIGINT) AS alert_seq,
           count(*) FILTER (WHERE s.notified) AS notified,
           arg_max(e.payload ->> 'status', e.seq) AS last_status
    FROM _events_raw e
    LEFT JOIN _delivery_status s ON s.status = e.payload ->> 'status'
    WHERE e.type = 'AlertDelivery'
    GROUP BY e.run_id, alert_seq
)
SELECT a.run_id,
       a.seq,
       make_timestamp(coalesce(TRY_CAST(a.payload ->> 'raised_at' AS BIGINT), a.ts_us)) AS raised_at,
       coalesce(a.workflow, a.payload ->> 'workflow') AS workflow,
       a.workflow_version,
       coalesce(a.task_id, a.payload ->> 'task') AS task_id,
       a.payload ->> 'metric' AS metric,
       TRY_CAST(a.payload ->> 'value' AS DOUBLE) AS value,
       TRY_CAST(a.payload ->> 'baseline' AS DOUBLE) AS baseline,
       TRY_CAST(a.payload ->> 'spread' AS DOUBLE) AS spread,
       TRY_CAST(a.payload ->> 'score' AS DOUBLE) AS score,
       a.payload ->> 'rule' AS rule,
       a.payload ->> 'severity' AS severity,
       a.payload ->> 'message' AS message,
       a.payload ->> 'key' AS key,
       _json_or_null(a.payload -> 'channels') AS channels,
       coalesce(d.notified, 0) AS notified,
       d.last_status AS last_delivery_status
FROM _events_raw a
LEFT JOIN deliveries d ON d.run_id = a.run_id AND d.alert_seq = a.seq
WHERE a.type = 'AlertRaised'
ORDER BY raised_at, a.run_id, a.seq;
