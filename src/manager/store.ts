// The manager's database access: VM rows and their state transitions (each recorded in
// vm_events), job rows, and the closing transaction that writes the billing event.
import { sql, type Kysely, type Transaction } from 'kysely';
import type { Fence } from '../db/fence.js';
import type { Database, JobRow, VmRow, VmUpdate } from '../db/schema.js';
import { encryptSecret, openSecret, type SecretKeys } from '../isolation/keys.js';
import type { SecretBox } from '../providers/provider.js';
import { writeBillingEvent, type BillingEvent } from './billing.js';
import { canTransition, type VmState } from './vm-states.js';

type Db = Kysely<Database> | Transaction<Database>;

export class InvalidTransitionError extends Error {}

export interface NewVmInput {
  id: string;
  class: string;
  provider: string;
  name: string;
  publicKey: string;
  privateKey: string;
  /** The host key the manager made for the VM: handed to it at creation, never stored. */
  hostKey?: string;
  /** Its fingerprint, pinned on the row (without one the VM is never connected to). */
  hostKeyFingerprint?: string | null;
}

export interface JobOutcome {
  result: 'success' | 'failed' | 'canceled';
  exitCode: number | null;
  failureReason: string | null;
  finishedAt: Date;
  traceBytes: number;
  traceChecksum: string | null;
}

export interface BindJobInput {
  vmId: string;
  jobId: number;
  className: string;
  token: string;
  projectId: number | null;
  pipelineId: number | null;
  namespaceId: number | null;
  rootNamespaceId: number | null;
  queuedSeconds: number | null;
  timeoutSeconds: number;
  pickedAt: Date;
}

class DuplicateJobError extends Error {}

/** A VM row as committed by one of this store's writes (a row in `deleted` has left the shard). */
export type VmChangeListener = (row: VmRow) => void;

/** Where a ciphertext lives; with the shard and the row key it is the AEAD associated data. */
export type SecretColumn = 'jobs.token_enc' | 'jobs.payload_enc' | 'job_handouts.token_enc' | 'vms.private_key_enc' | 'provider_resources.data';

/** `jobs.token_enc:<shard>:<job id>`: a ciphertext opens only in the row it was written for. */
export function secretContext(column: SecretColumn, shard: string, rowKey: string | number): string {
  return `${column}:${shard}:${rowKey}`;
}

export class Store {
  private readonly keys: SecretKeys;
  private readonly vmListeners = new Set<VmChangeListener>();
  /** VM rows written in each open write() transaction, announced once it commits. */
  private readonly written = new WeakMap<Transaction<Database>, VmRow[]>();

  constructor(
    readonly db: Kysely<Database>,
    readonly shard: string,
    /** The shard's keys (secret-keys.ts); a bare 32-byte key is used for both versions. */
    keys: SecretKeys | Buffer,
    /** Epoch fence of the active manager: every state change commits only under it. Tools and unit tests run without one. */
    readonly fence: Fence | null = null,
  ) {
    this.keys = Buffer.isBuffer(keys) ? { key: keys, legacy: keys } : keys;
  }

  /** A state-changing transaction: fenced by the shard epoch when this store has a fence. */
  async write<T>(fn: (trx: Transaction<Database>) => Promise<T>): Promise<T> {
    let rows: VmRow[] = [];
    const body = (trx: Transaction<Database>) => {
      this.written.set(trx, (rows = []));
      return fn(trx);
    };
    const result = await (this.fence ? this.fence.transaction(this.db, body) : this.db.transaction().execute(body));
    for (const row of rows) this.announce(row);
    return result;
  }

  /**
   * Calls `fn` with every VM row this store commits (inserts and transitions), right after the
   * commit: the pool keeps its view of the shard from these instead of re-reading the table.
   */
  onVmChange(fn: VmChangeListener): () => void {
    this.vmListeners.add(fn);
    return () => this.vmListeners.delete(fn);
  }

  private announce(row: VmRow): void {
    // The write has committed: a listener's bug must not turn it into a reported failure.
    for (const fn of this.vmListeners) {
      try {
        fn(row);
      } catch {
        /* the pool's periodic re-read repairs its view */
      }
    }
  }

  /** Announced when `trx` (one of write()'s) commits; a transaction opened elsewhere announces at once. */
  private wrote(trx: Transaction<Database>, row: VmRow): void {
    const list = this.written.get(trx);
    if (list) list.push(row);
    else this.announce(row);
  }

  /** Encrypts a secret bound to its column and row. */
  seal(column: SecretColumn, rowKey: string | number, plain: string): string {
    return encryptSecret(plain, this.keys.key, secretContext(column, this.shard, rowKey));
  }

  /** Decrypts a secret column; null when erased, written under another key, or moved from another row. */
  open(column: SecretColumn, rowKey: string | number, enc: string | null): string | null {
    if (enc === null) return null;
    try {
      return openSecret(enc, this.keys, secretContext(column, this.shard, rowKey));
    } catch {
      return null;
    }
  }

  jobToken(job: Pick<JobRow, 'id' | 'token_enc'>): string | null {
    return this.open('jobs.token_enc', job.id, job.token_enc);
  }

  jobPayload(job: Pick<JobRow, 'id' | 'payload_enc'>): string | null {
    return this.open('jobs.payload_enc', job.id, job.payload_enc);
  }

  vmPrivateKey(vm: Pick<VmRow, 'id' | 'private_key_enc'>): string | null {
    return this.open('vms.private_key_enc', vm.id, vm.private_key_enc);
  }

  /** A provider's box for secrets in its resource records; `context` names the record (`host:<id>`). */
  secretBox(provider: string): SecretBox {
    return {
      seal: (plain, context) => this.seal('provider_resources.data', `${provider}:${context}`, plain),
      open: (sealed, context) => this.open('provider_resources.data', `${provider}:${context}`, sealed),
    };
  }

  async insertVm(v: NewVmInput): Promise<void> {
    await this.write((trx) => this.insertVmIn(trx, v));
  }

  /** Many new VM rows in one transaction (a pool growing by many VMs at once). */
  async insertVms(vs: NewVmInput[]): Promise<void> {
    if (vs.length === 0) return;
    await this.write(async (trx) => {
      for (const v of vs) await this.insertVmIn(trx, v);
    });
  }

  private async insertVmIn(trx: Transaction<Database>, v: NewVmInput, jobId: number | null = null): Promise<void> {
    {
      const row = await trx
        .insertInto('vms')
        .values({
          ...(jobId !== null ? { job_id: jobId } : {}),
          id: v.id,
          shard: this.shard,
          class: v.class,
          provider: v.provider,
          name: v.name,
          state: 'requested',
          public_key: v.publicKey,
          private_key_enc: this.seal('vms.private_key_enc', v.id, v.privateKey),
          host_key_fingerprint: v.hostKeyFingerprint ?? null,
          created_at: new Date(),
          updated_at: new Date(),
        })
        .returningAll()
        .executeTakeFirstOrThrow();
      this.wrote(trx, row);
      await trx.insertInto('vm_events').values({ vm_id: v.id, from_state: null, to_state: 'requested', at: new Date(), detail: jobId !== null ? `cold start for job ${jobId}` : null, epoch: this.fence?.epoch ?? null }).execute();
    }
  }

  /**
   * Move a VM from one of `from` to `to`, only if it is still in one of `from`.
   * Returns false when another actor moved it first (the caller then does nothing).
   */
  async transition(vmId: string, from: VmState | VmState[], to: VmState, patch: VmUpdate = {}, detail: string | null = null, db: Db = this.db): Promise<boolean> {
    const froms = Array.isArray(from) ? from : [from];
    for (const f of froms) if (!canTransition(f, to)) throw new InvalidTransitionError(`VM transition ${f} -> ${to} is not allowed`);
    const run = async (trx: Transaction<Database>) => {
      const cur = await trx.selectFrom('vms').select('state').where('id', '=', vmId).forUpdate().executeTakeFirst();
      if (!cur || !froms.includes(cur.state as VmState)) return false;
      // A deleted VM's key opens nothing any more: erased with the transition.
      const erase = to === 'deleted' ? { private_key_enc: null } : {};
      const row = await trx.updateTable('vms').set({ ...patch, ...erase, state: to, updated_at: new Date() }).where('id', '=', vmId).returningAll().executeTakeFirstOrThrow();
      this.wrote(trx, row);
      await trx.insertInto('vm_events').values({ vm_id: vmId, from_state: cur.state, to_state: to, at: new Date(), detail, epoch: this.fence?.epoch ?? null }).execute();
      return true;
    };
    if ('isTransaction' in db && db.isTransaction) return run(db as Transaction<Database>);
    return this.write(run);
  }

  async vm(id: string): Promise<VmRow | undefined> {
    return this.db.selectFrom('vms').selectAll().where('id', '=', id).executeTakeFirst();
  }

  /** Every VM of this shard that is not yet deleted. */
  async liveVms(): Promise<VmRow[]> {
    return this.db.selectFrom('vms').selectAll().where('shard', '=', this.shard).where('state', '<>', 'deleted').orderBy('created_at').execute();
  }

  /** Bind a job to a warm VM: the job row and the VM's `assigned` state commit together. */
  async bindJob(input: BindJobInput): Promise<boolean> {
    return this.write(async (trx) => {
      if (!(await this.insertJobIn(trx, input))) return false; // GitLab handed us a job we already hold
      await this.forgetHandoutIn(trx, input.jobId);
      const ok = await this.transition(input.vmId, 'ready', 'assigned', { job_id: input.jobId }, `job ${input.jobId}`, trx);
      if (!ok) throw new InvalidTransitionError(`VM ${input.vmId} is no longer ready`);
      return true;
    });
  }

  /**
   * Cold start: the job and the VM made for it commit together (the VM row `requested`, bound to
   * the job), before the cloud hears of the VM; a crash leaves a running job whose VM recovery
   * deletes and whose failure it reports.
   */
  async bindJobToNewVm(input: Omit<BindJobInput, 'vmId'> & { vm: NewVmInput }): Promise<boolean> {
    return this.write(async (trx) => {
      await this.insertVmIn(trx, input.vm, input.jobId);
      if (!(await this.insertJobIn(trx, { ...input, vmId: input.vm.id }))) throw new DuplicateJobError(`job ${input.jobId} is already held`);
      await this.forgetHandoutIn(trx, input.jobId);
      return true;
    }).catch((err) => {
      if (err instanceof DuplicateJobError) return false;
      throw err;
    });
  }

  private async insertJobIn(trx: Transaction<Database>, input: BindJobInput): Promise<boolean> {
    {
      const inserted = await trx
        .insertInto('jobs')
        .values({
          shard: this.shard,
          id: input.jobId,
          class: input.className,
          vm_id: input.vmId,
          state: 'running',
          token_enc: this.seal('jobs.token_enc', input.jobId, input.token),
          project_id: input.projectId,
          pipeline_id: input.pipelineId,
          namespace_id: input.namespaceId,
          root_namespace_id: input.rootNamespaceId,
          queued_seconds: input.queuedSeconds,
          timeout_seconds: input.timeoutSeconds,
          picked_at: input.pickedAt,
        })
        .onConflict((oc) => oc.columns(['shard', 'id']).doNothing())
        .returning('id')
        .executeTakeFirst();
      return !!inserted;
    }
  }

  /**
   * A job that never reaches a VM (malformed payload, or a bind that failed) still gets a row and
   * its event. Not fenced: it records the end of a job only this manager was handed, and touches
   * nothing another manager could own, so even a manager that lost the shard must write it.
   */
  async recordRejectedJob(input: { jobId: number; className: string; token: string; pickedAt: Date; failureReason: string; event: BillingEvent }): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      await trx
        .insertInto('jobs')
        .values({
          shard: this.shard,
          id: input.jobId,
          class: input.className,
          vm_id: null,
          state: 'finished',
          token_enc: this.seal('jobs.token_enc', input.jobId, input.token),
          timeout_seconds: 0,
          picked_at: input.pickedAt,
          finished_at: input.pickedAt,
          result: 'failed',
          failure_reason: input.failureReason,
        })
        .onConflict((oc) => oc.columns(['shard', 'id']).doNothing())
        .execute();
      await this.forgetHandoutIn(trx, input.jobId);
      await writeBillingEvent(trx, input.event);
    });
  }

  async markJobStarted(jobId: number, at: Date): Promise<void> {
    await this.write((trx) => trx.updateTable('jobs').set({ started_at: at }).where('shard', '=', this.shard).where('id', '=', String(jobId)).where('started_at', 'is', null).execute());
  }

  /**
   * The closing transaction: the job's outcome, its billing event and the VM's delete intent
   * commit together, before GitLab hears of the end and before the cloud delete.
   * Returns false when the job was already closed (a replay after a crash).
   */
  async closeJob(jobId: number, outcome: JobOutcome, event: BillingEvent): Promise<boolean> {
    return this.write(async (trx) => {
      const job = await trx
        .updateTable('jobs')
        .set({
          state: 'finished',
          result: outcome.result,
          exit_code: outcome.exitCode,
          failure_reason: outcome.failureReason,
          finished_at: outcome.finishedAt,
          trace_bytes: outcome.traceBytes,
          trace_checksum: outcome.traceChecksum,
          // Only a re-attach reads the payload (script, masked values): erased as the job ends.
          payload_enc: null,
        })
        .where('shard', '=', this.shard)
        .where('id', '=', String(jobId))
        .where('state', '=', 'running')
        .returning(['vm_id'])
        .executeTakeFirst();
      if (!job) return false;
      await writeBillingEvent(trx, event);
      // A cold-start job can end before its VM was ready (the VM failed, or the job was canceled).
      if (job.vm_id) await this.transition(job.vm_id, ['assigned', 'running', 'requested', 'creating', 'booting', 'ready', 'failed'], 'deleting', {}, `job ${jobId} ${outcome.result}`, trx);
      return true;
    });
  }

  /**
   * GitLab handed us this job: recorded before anything else is done with it. Not fenced: it is
   * a fact, and a manager that lost the shard must leave it for the active one all the same.
   */
  async recordHandout(jobId: number, className: string, token: string, at: Date): Promise<void> {
    await this.db
      .insertInto('job_handouts')
      .values({ shard: this.shard, job_id: jobId, class: className, token_enc: this.seal('job_handouts.token_enc', jobId, token), received_at: at })
      .onConflict((oc) => oc.columns(['shard', 'job_id']).doNothing())
      .execute();
  }

  async forgetHandout(jobId: number): Promise<void> {
    await this.db.deleteFrom('job_handouts').where('shard', '=', this.shard).where('job_id', '=', String(jobId)).execute();
  }

  private async forgetHandoutIn(trx: Transaction<Database>, jobId: number): Promise<void> {
    await trx.deleteFrom('job_handouts').where('shard', '=', this.shard).where('job_id', '=', String(jobId)).execute();
  }

  /** Handouts older than `before` that no job row took up: their manager died before binding them. */
  async strandedHandouts(before: Date): Promise<{ jobId: number; className: string; token: string | null; receivedAt: Date }[]> {
    const rows = await this.db.selectFrom('job_handouts').selectAll().where('shard', '=', this.shard).where('received_at', '<', before).orderBy('received_at').execute();
    return rows.map((r) => ({ jobId: Number(r.job_id), className: r.class, token: this.open('job_handouts.token_enc', r.job_id, r.token_enc), receivedAt: r.received_at }));
  }

  /**
   * Records that GitLab has the final state: a fact, not a decision, so not fenced. The job token
   * is erased with it: the report was the last thing that needed it.
   */
  async markReported(jobId: number): Promise<void> {
    await this.db
      .updateTable('jobs')
      .set({ reported_at: new Date(), token_enc: sql<string | null>`CASE WHEN state = 'finished' THEN NULL ELSE token_enc END` })
      .where('shard', '=', this.shard)
      .where('id', '=', String(jobId))
      .execute();
  }

  async job(jobId: number): Promise<JobRow | undefined> {
    return this.db.selectFrom('jobs').selectAll().where('shard', '=', this.shard).where('id', '=', String(jobId)).executeTakeFirst();
  }

  /** Jobs still running, or finished but not yet acknowledged by GitLab. */
  async openJobs(): Promise<JobRow[]> {
    return this.db
      .selectFrom('jobs')
      .selectAll()
      .where('shard', '=', this.shard)
      .where((eb) => eb.or([eb('state', '<>', 'finished'), eb('reported_at', 'is', null)]))
      .orderBy('picked_at')
      .execute();
  }

  async ping(): Promise<void> {
    await sql`select 1`.execute(this.db);
  }

  // --- Detached jobs and the report outbox ---

  /**
   * What a re-attach needs, written before the job starts on its VM (payload encrypted), in one
   * transaction with the VM's `assigned` -> `running` (one commit on the start path, not two).
   */
  async saveJobAttach(jobId: number, a: { payload: string; tracePrefix: string; os: string; vmId?: string }): Promise<void> {
    await this.write(async (trx) => {
      await trx
        .updateTable('jobs')
        .set({ payload_enc: this.seal('jobs.payload_enc', jobId, a.payload), trace_prefix: a.tracePrefix, guest_os: a.os })
        .where('shard', '=', this.shard)
        .where('id', '=', String(jobId))
        .where('state', '=', 'running')
        .execute();
      if (a.vmId) await this.transition(a.vmId, 'assigned', 'running', {}, `job ${jobId}`, trx);
    });
  }

  /** Finished jobs GitLab has not acknowledged, oldest first. */
  async unreportedJobs(limit: number): Promise<JobRow[]> {
    return this.db
      .selectFrom('jobs')
      .selectAll()
      .where('shard', '=', this.shard)
      .where('state', '=', 'finished')
      .where('reported_at', 'is', null)
      .orderBy('finished_at')
      .limit(limit)
      .execute();
  }

  async countUnreported(): Promise<number> {
    const r = await this.db
      .selectFrom('jobs')
      .select((eb) => eb.fn.countAll<string>().as('n'))
      .where('shard', '=', this.shard)
      .where('state', '=', 'finished')
      .where('reported_at', 'is', null)
      .executeTakeFirstOrThrow();
    return Number(r.n);
  }

  /** Jobs still running on this shard (re-attach candidates at start-up). */
  async runningJobs(): Promise<JobRow[]> {
    return this.db.selectFrom('jobs').selectAll().where('shard', '=', this.shard).where('state', '=', 'running').orderBy('picked_at').execute();
  }
}
