-- Cloud resources a provider manages besides job VMs (EC2 Mac dedicated hosts, their macOS
-- instances). Like vms, a row is written before the cloud call it guards, and every state
-- change is recorded with its time.

CREATE TABLE provider_resources (
  shard       text NOT NULL,
  provider    text NOT NULL,
  kind        text NOT NULL,                   -- e.g. mac_host
  id          text NOT NULL,                   -- the provider's own id (deterministic before the cloud answers)
  state       text NOT NULL,
  data        jsonb NOT NULL DEFAULT '{}',
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (shard, provider, kind, id)
);

CREATE TABLE provider_resource_events (
  id          bigserial PRIMARY KEY,
  shard       text NOT NULL,
  provider    text NOT NULL,
  kind        text NOT NULL,
  resource_id text NOT NULL,
  from_state  text,
  to_state    text NOT NULL,
  at          timestamptz NOT NULL DEFAULT now(),
  detail      text
);
CREATE INDEX provider_resource_events_resource ON provider_resource_events (shard, provider, kind, resource_id, at);
