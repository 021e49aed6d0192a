// Table types for kysely, declared once; they mirror sql/*.sql.
import type { ColumnType, Generated, Insertable, Selectable, Updateable } from 'kysely';

type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;
type NullableTimestamp = ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;
/** bigint columns come back from pg as strings; we write numbers. */
type BigIntCol = ColumnType<string, number | string | bigint, number | string | bigint>;
type NullableBigInt = ColumnType<string | null, number | string | bigint | null | undefined, number | string | bigint | null>;
type NumericCol = ColumnType<string, number | string, number | string>;

export interface ShardSecretsTable {
  shard: string;
  key: string;
  created_at: Generated<Date>;
}

/** bigint columns arrive as strings from pg. */
/** 007: the random scrypt salt of a shard's passphrase key (not secret). */
export interface ShardKeySaltsTable {
  shard: string;
  salt: string;
  created_at: Generated<Date>;
}

export interface ShardEpochsTable {
  shard: string;
  epoch: ColumnType<string, number | string, number | string>;
}

export interface ShardLeasesTable {
  shard: string;
  epoch: ColumnType<string, number | string, number | string>;
  holder: string;
  holder_host: string;
  acquired_at: Date;
  renewed_at: Date;
  expires_at: Date;
}

export interface JobHandoutsTable {
  shard: string;
  job_id: ColumnType<string, number | string, number | string>;
  class: string;
  token_enc: string;
  received_at: Date;
}

export interface VmsTable {
  id: string;
  shard: string;
  class: string;
  provider: string;
  name: string;
  state: string;
  cloud_id: string | null;
  zone: string | null;
  internal_ip: string | null;
  public_key: string;
  /** null once the VM is deleted (007). */
  private_key_enc: ColumnType<string | null, string, string | null>;
  /** SHA256 fingerprint of the host key the manager made for the VM (sql/006); null: never connected to. */
  host_key_fingerprint: ColumnType<string | null, string | null | undefined, string | null>;
  job_id: NullableBigInt;
  failure: string | null;
  created_at: Timestamp;
  ready_at: NullableTimestamp;
  updated_at: Timestamp;
}

export interface VmEventsTable {
  id: Generated<string>;
  vm_id: string;
  from_state: string | null;
  to_state: string;
  at: Timestamp;
  detail: string | null;
  /** The shard epoch of the manager that made the transition (null: unfenced tools and tests). */
  epoch?: ColumnType<string | null, number | null | undefined, number | null>;
}

export interface JobsTable {
  shard: string;
  id: BigIntCol;
  class: string;
  vm_id: string | null;
  state: string;
  /** null once GitLab acknowledged the job's final state (007). */
  token_enc: ColumnType<string | null, string, string | null>;
  project_id: NullableBigInt;
  pipeline_id: NullableBigInt;
  namespace_id: NullableBigInt;
  root_namespace_id: NullableBigInt;
  queued_seconds: number | null;
  timeout_seconds: number;
  picked_at: Timestamp;
  started_at: NullableTimestamp;
  finished_at: NullableTimestamp;
  result: string | null;
  exit_code: number | null;
  failure_reason: string | null;
  trace_bytes: ColumnType<string, number | string | undefined, number | string>;
  trace_checksum: string | null;
  reported_at: NullableTimestamp;
  /** 005: re-attach data (see sql/005_job_attach.sql). */
  payload_enc: ColumnType<string | null, string | null | undefined, string | null>;
  trace_prefix: ColumnType<string | null, string | null | undefined, string | null>;
  guest_os: ColumnType<string | null, string | null | undefined, string | null>;
}

export interface BillingEventsTable {
  seq: Generated<string>;
  id: string;
  shard: string;
  job_id: BigIntCol;
  class: string;
  provider: string;
  machine_type: string | null;
  cost_factor: NumericCol;
  started_at: Timestamp;
  finished_at: Timestamp;
  duration_seconds: NumericCol;
  compute_minutes: NumericCol;
  outcome: string;
  billable: boolean;
  payload: ColumnType<unknown, string, string>;
  created_at: Generated<Date>;
  /** Writing transaction's id (xid8, as text): the feed orders by (txid, seq). */
  txid: Generated<string>;
}

export interface BillingSinksTable {
  shard: string;
  url: string;
  cursor: Generated<string>;
  delivered: ColumnType<string, number | undefined, number>;
  failing_since: Timestamp | null;
  attempts: Generated<number>;
  last_error: string | null;
  updated_at: Generated<Date>;
}

export interface BillingDeadLettersTable {
  shard: string;
  url: string;
  event_id: string;
  error: string;
  dead_lettered_at: Generated<Date>;
}

export interface ProviderResourcesTable {
  shard: string;
  provider: string;
  kind: string;
  id: string;
  state: string;
  data: ColumnType<Record<string, unknown>, string | undefined, string>;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export interface ProviderResourceEventsTable {
  id: Generated<string>;
  shard: string;
  provider: string;
  kind: string;
  resource_id: string;
  from_state: string | null;
  to_state: string;
  at: Timestamp;
  detail: string | null;
}

export interface Database {
  provider_resources: ProviderResourcesTable;
  provider_resource_events: ProviderResourceEventsTable;
  shard_secrets: ShardSecretsTable;
  shard_key_salts: ShardKeySaltsTable;
  shard_epochs: ShardEpochsTable;
  shard_leases: ShardLeasesTable;
  job_handouts: JobHandoutsTable;
  vms: VmsTable;
  vm_events: VmEventsTable;
  jobs: JobsTable;
  billing_events: BillingEventsTable;
  billing_sinks: BillingSinksTable;
  billing_dead_letters: BillingDeadLettersTable;
}

export type VmRow = Selectable<VmsTable>;
export type NewVm = Insertable<VmsTable>;
export type VmUpdate = Updateable<VmsTable>;
export type JobRow = Selectable<JobsTable>;
export type NewJob = Insertable<JobsTable>;
export type BillingEventRow = Selectable<BillingEventsTable>;
