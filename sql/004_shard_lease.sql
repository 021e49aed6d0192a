-- High availability: which manager holds a shard, and the shard's epoch.
--
-- shard_epochs.epoch is bumped by every takeover. Every state-changing transaction of a manager
-- reads it FOR SHARE and compares it with the epoch the manager took over at; a takeover's
-- UPDATE waits for those transactions and every later one sees the new value, so a manager that
-- lost the shard (paused, partitioned, its connections cut) can never commit a change after the
-- new one took over. Kept apart from shard_leases so the active's lease renewals (one UPDATE a
-- second) never queue behind, or block, the writers.
CREATE TABLE shard_epochs (
  shard  text PRIMARY KEY,
  epoch  bigint NOT NULL
);

-- The active manager's lease: renewed every second on the connection that holds the shard's
-- advisory lock. A standby that finds it expired (the holder paused or partitioned from the
-- database while its session lingers) terminates the holder's sessions, found by
-- application_name, and takes over.
CREATE TABLE shard_leases (
  shard        text PRIMARY KEY,
  epoch        bigint NOT NULL,
  holder       text NOT NULL,                 -- the manager's instance id (also its sessions' application_name)
  holder_host  text NOT NULL,                 -- hostname/pid, for people
  acquired_at  timestamptz NOT NULL,
  renewed_at   timestamptz NOT NULL,
  expires_at   timestamptz NOT NULL
);

-- Which epoch made each VM transition: the audit trail that shows no stale manager acted.
ALTER TABLE vm_events ADD COLUMN epoch bigint;

-- Jobs GitLab handed to this shard, recorded the moment the answer arrives and before anything
-- else is done with it: GitLab gives no way to read a handed-out job again, so a manager that
-- dies before binding it leaves this row, and the active manager fails the job back to GitLab
-- instead of leaving it to GitLab's stuck-job timeout. Deleted in the transaction that binds
-- (or refuses) the job.
CREATE TABLE job_handouts (
  shard        text NOT NULL,
  job_id       bigint NOT NULL,
  class        text NOT NULL,
  token_enc    text NOT NULL,
  received_at  timestamptz NOT NULL,
  PRIMARY KEY (shard, job_id)
);
