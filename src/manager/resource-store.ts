// The ResourceStore providers get through their context: provider_resources rows of one shard
// and provider, every state change recorded in provider_resource_events.
import { sql, type Kysely, type Transaction } from 'kysely';
import type { Fence } from '../db/fence.js';
import type { Database } from '../db/schema.js';
import type { ResourceRecord, ResourceStore } from '../providers/provider.js';

export class DbResourceStore implements ResourceStore {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly shard: string,
    private readonly provider: string,
    /** The active manager's epoch fence (fence.ts): a stale manager allocates or releases nothing. */
    private readonly fence: Fence | null = null,
  ) {}

  private write<T>(fn: (trx: Transaction<Database>) => Promise<T>): Promise<T> {
    return this.fence ? this.fence.transaction(this.db, fn) : this.db.transaction().execute(fn);
  }

  private scope() {
    return this.db.selectFrom('provider_resources').selectAll().where('shard', '=', this.shard).where('provider', '=', this.provider);
  }

  async list<D = Record<string, unknown>>(kind: string): Promise<ResourceRecord<D>[]> {
    const rows = await this.scope().where('kind', '=', kind).orderBy('created_at').orderBy('id').execute();
    return rows.map((r) => ({ kind: r.kind, id: r.id, state: r.state, data: r.data as D, createdAt: r.created_at, updatedAt: r.updated_at }));
  }

  async insert(kind: string, id: string, state: string, data: Record<string, unknown>): Promise<boolean> {
    return this.write(async (trx) => {
      const res = await trx
        .insertInto('provider_resources')
        .values({ shard: this.shard, provider: this.provider, kind, id, state, data: JSON.stringify(data), created_at: new Date(), updated_at: new Date() })
        .onConflict((oc) => oc.columns(['shard', 'provider', 'kind', 'id']).doNothing())
        .executeTakeFirst();
      if (Number(res.numInsertedOrUpdatedRows ?? 0) === 0) return false;
      await trx.insertInto('provider_resource_events').values({ shard: this.shard, provider: this.provider, kind, resource_id: id, from_state: null, to_state: state, at: new Date(), detail: null }).execute();
      return true;
    });
  }

  async transition(kind: string, id: string, from: string | string[], to: string, data: Record<string, unknown> = {}, detail?: string): Promise<boolean> {
    const froms = Array.isArray(from) ? from : [from];
    return this.write(async (trx) => {
      const cur = await trx
        .selectFrom('provider_resources')
        .select('state')
        .where('shard', '=', this.shard)
        .where('provider', '=', this.provider)
        .where('kind', '=', kind)
        .where('id', '=', id)
        .forUpdate()
        .executeTakeFirst();
      if (!cur || !froms.includes(cur.state)) return false;
      await trx
        .updateTable('provider_resources')
        .set({ state: to, data: sql`data || ${JSON.stringify(data)}::jsonb` as unknown as string, updated_at: new Date() })
        .where('shard', '=', this.shard)
        .where('provider', '=', this.provider)
        .where('kind', '=', kind)
        .where('id', '=', id)
        .execute();
      await trx.insertInto('provider_resource_events').values({ shard: this.shard, provider: this.provider, kind, resource_id: id, from_state: cur.state, to_state: to, at: new Date(), detail: detail ?? null }).execute();
      return true;
    });
  }

  async update(kind: string, id: string, data: Record<string, unknown>): Promise<void> {
    await this.write((trx) => trx
      .updateTable('provider_resources')
      .set({ data: sql`data || ${JSON.stringify(data)}::jsonb` as unknown as string, updated_at: new Date() })
      .where('shard', '=', this.shard)
      .where('provider', '=', this.provider)
      .where('kind', '=', kind)
      .where('id', '=', id)
      .execute());
  }
}
