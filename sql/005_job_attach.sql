-- Detached jobs: what a manager needs to re-attach to a job another manager started (after a
-- restart or a failover), written before the job starts on its VM.
ALTER TABLE jobs ADD COLUMN payload_enc text;   -- the job payload (JSON), encrypted: script, masked values
ALTER TABLE jobs ADD COLUMN trace_prefix text;  -- the manager's own lines written before the VM's output
ALTER TABLE jobs ADD COLUMN guest_os text;      -- linux | macos | windows (windows jobs are not detached)
-- The report outbox: finished jobs GitLab has not acknowledged, oldest first.
CREATE INDEX jobs_unreported ON jobs (shard, finished_at) WHERE state = 'finished' AND reported_at IS NULL;
