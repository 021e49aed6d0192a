-- runner-fleet initial schema. The database is the truth: every VM and job has a row, and a
-- state change is committed before the cloud or GitLab call it guards.

CREATE TABLE shard_secrets (
  shard       text PRIMARY KEY,
  -- Used only when the config sets no secrets.key: keeps restarts able to read their own rows.
  key         text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE vms (
  id              text PRIMARY KEY,
  shard           text NOT NULL,
  class           text NOT NULL,
  provider        text NOT NULL,
  name            text NOT NULL UNIQUE,          -- deterministic cloud name (idempotency key)
  state           text NOT NULL,
  cloud_id        text,
  zone            text,
  internal_ip     text,
  public_key      text NOT NULL,
  private_key_enc text NOT NULL,                 -- AES-256-GCM, never logged
  job_id          bigint,
  failure         text,
  created_at      timestamptz NOT NULL DEFAULT now(),
  ready_at        timestamptz,
  updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vms_live ON vms (shard, class, state) WHERE state <> 'deleted';

CREATE TABLE vm_events (
  id          bigserial PRIMARY KEY,
  vm_id       text NOT NULL REFERENCES vms(id),
  from_state  text,
  to_state    text NOT NULL,
  at          timestamptz NOT NULL DEFAULT now(),
  detail      text
);
CREATE INDEX vm_events_vm ON vm_events (vm_id, at);

CREATE TABLE jobs (
  shard            text NOT NULL,
  id               bigint NOT NULL,              -- GitLab job id
  class            text NOT NULL,
  vm_id            text REFERENCES vms(id),
  state            text NOT NULL,                -- running | finished
  token_enc        text NOT NULL,                -- job token, encrypted; needed to finish the job after a crash
  project_id       bigint,
  pipeline_id      bigint,
  namespace_id     bigint,
  root_namespace_id bigint,
  queued_seconds   double precision,             -- job_info.time_in_queue_seconds at pick-up
  timeout_seconds  integer NOT NULL,
  picked_at        timestamptz NOT NULL,
  started_at       timestamptz,                  -- first script output on the VM
  finished_at      timestamptz,
  result           text,                         -- success | failed | canceled
  exit_code        integer,
  failure_reason   text,
  trace_bytes      bigint NOT NULL DEFAULT 0,
  trace_checksum   text,
  reported_at      timestamptz,                  -- GitLab acknowledged the final state
  PRIMARY KEY (shard, id)
);
CREATE INDEX jobs_open ON jobs (shard) WHERE state <> 'finished' OR reported_at IS NULL;

CREATE TABLE billing_events (
  seq               bigserial,
  id                text PRIMARY KEY,            -- stable event id
  shard             text NOT NULL,
  job_id            bigint NOT NULL,
  class             text NOT NULL,
  provider          text NOT NULL,
  machine_type      text,
  cost_factor       numeric NOT NULL,
  started_at        timestamptz NOT NULL,
  finished_at       timestamptz NOT NULL,
  duration_seconds  numeric NOT NULL,
  compute_minutes   numeric NOT NULL,
  outcome           text NOT NULL,
  billable          boolean NOT NULL,
  payload           jsonb NOT NULL,
  created_at        timestamptz NOT NULL DEFAULT now(),
  UNIQUE (shard, job_id)                         -- exactly one event per job
);
