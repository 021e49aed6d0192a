-- The status page's reads, polled every few seconds while the page is open: they must not scan
-- the whole (ever-growing) jobs and vms tables.
-- Start latency over the last hour: jobs by the time their first line ran.
CREATE INDEX jobs_started ON jobs (shard, started_at) WHERE started_at IS NOT NULL;
-- Recent failures: jobs failed through no fault of their script by finish time (the page leaves
-- script failures out), and failed VMs by their last change.
CREATE INDEX jobs_failed ON jobs (shard, finished_at) WHERE result = 'failed' AND failure_reason IS NOT NULL AND failure_reason <> 'script_failure';
CREATE INDEX vms_failed ON vms (shard, updated_at) WHERE failure IS NOT NULL;
