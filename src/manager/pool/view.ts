// The pool's view of the shard's live VMs: kept from the store's committed writes, re-read from
// the table only at activation and every resyncMs (a safety net for writes made outside this
// store), so a tick reads no rows.
import type { VmRow } from '../../db/schema.js';
import type { Store } from '../store.js';

/** The view of the shard's VMs is re-read from the table this often: a safety net for writes made outside this store. */
export const RESYNC_MS = 60_000;

export class ShardView {
  /** This shard's live VMs as last committed, by id (in creation order). */
  private view = new Map<string, VmRow>();
  private loaded = false;
  private lastResync = -Infinity;
  /** Ids written while a re-read was in flight: their row in the view is newer than the read. */
  private resyncing: Set<string> | null = null;
  private readonly unsubscribe: () => void;
  /** VM rows read from the table so far (tests, the scale bench). */
  rowsRead = 0;

  constructor(
    private readonly store: Store,
    private readonly resyncMs: number,
  ) {
    this.unsubscribe = store.onVmChange((row) => this.apply(row));
  }

  /** A write the store committed: the view follows it. */
  private apply(row: VmRow): void {
    if (row.shard !== this.store.shard) return;
    this.resyncing?.add(row.id);
    const cur = this.view.get(row.id);
    // Announcements of one row can cross (two connections): the older write loses.
    if (cur && cur.updated_at.getTime() > row.updated_at.getTime()) return;
    if (row.state === 'deleted') this.view.delete(row.id);
    else this.view.set(row.id, row);
  }

  /** Re-read from the table if never read or last read resyncMs ago. */
  async refresh(now: number): Promise<void> {
    if (!this.loaded || now - this.lastResync >= this.resyncMs) await this.resync(now);
  }

  /** Re-read the view from the table (activation, then rarely): writes made elsewhere show up. */
  private async resync(now: number): Promise<void> {
    const changed = (this.resyncing = new Set());
    try {
      const rows = await this.store.liveVms();
      this.rowsRead += rows.length;
      const next = new Map<string, VmRow>();
      for (const r of rows) if (!changed.has(r.id)) next.set(r.id, r);
      // Rows written during the read keep what their write announced.
      for (const id of changed) {
        const r = this.view.get(id);
        if (r) next.set(id, r);
      }
      this.view = next;
      this.loaded = true;
      this.lastResync = now;
    } finally {
      this.resyncing = null;
    }
  }

  /** Whether the VM's last committed row is ready and free: a tick's copies lag the writes since. */
  isReady(id: string): boolean {
    const r = this.view.get(id);
    return r !== undefined && r.state === 'ready' && r.job_id === null;
  }

  /** Copies of the live rows: a tick marks its rows (state, updated_at) ahead of the writes it then makes. */
  copies(): VmRow[] {
    return [...this.view.values()].map((r) => ({ ...r }));
  }

  /** Stop following the store's writes. */
  close(): void {
    this.unsubscribe();
  }
}
