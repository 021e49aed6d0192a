-- Billing delivery: a feed order that readers can page without ever skipping an event, and
-- per-sink delivery state for the webhooks.
--
-- Why not order by seq: a sequence value is taken at insert, but transactions commit in any
-- order, so a reader that has seen seq 12 may later find seq 11 committed and skip it. Each
-- event records the id of the transaction that wrote it (xid8, never wraps); a reader returns
-- only events of transactions older than every transaction still running (the snapshot's
-- xmin), ordered by (txid, seq). Everything below that horizon is final, and anything committed
-- later has a txid at or above it, so it sorts after every event already returned.

ALTER TABLE billing_events ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX billing_events_feed ON billing_events (shard, txid, seq);
CREATE INDEX billing_events_finished ON billing_events (shard, finished_at);

CREATE TABLE billing_sinks (
  shard            text NOT NULL,
  url              text NOT NULL,                -- the sink's identity (a secret never goes here)
  cursor           text NOT NULL DEFAULT '',     -- last acknowledged position ('' = none yet)
  delivered        bigint NOT NULL DEFAULT 0,
  failing_since    timestamptz,                  -- the current batch's first failure
  attempts         integer NOT NULL DEFAULT 0,
  last_error       text,
  updated_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (shard, url)
);

-- Events a sink gave up on after deadLetterAfter of failures; they stay in billing_events (pull
-- and export still serve them) and are listed here for the operator.
CREATE TABLE billing_dead_letters (
  shard            text NOT NULL,
  url              text NOT NULL,
  event_id         text NOT NULL,
  error            text NOT NULL,
  dead_lettered_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (shard, url, event_id)
);
