// What the pool has promised and the rows do not show yet: warm VMs reserved for job requests in
// flight, and per class the room promised since the last read of the rows (cold-start claims,
// `claim-N`, and VMs created since, by id), dropped once a tick reads their rows.
export class Reservations {
  private readonly held = new Set<string>();
  private readonly unseen = new Map<string, Set<string>>();
  private claimSeq = 0;

  /** The reserved VM ids (live: the pool's tier marks read it). */
  get reserved(): ReadonlySet<string> {
    return this.held;
  }

  hold(vmId: string): void {
    this.held.add(vmId);
  }

  has(vmId: string): boolean {
    return this.held.has(vmId);
  }

  release(vmId: string): void {
    this.held.delete(vmId);
  }

  /** A reservation ends when its VM is no longer warm (bound to a job, or gone). */
  keepOnly(warm: ReadonlySet<string>): void {
    for (const id of this.held) if (!warm.has(id)) this.held.delete(id);
  }

  private unseenOf(className: string): Set<string> {
    let s = this.unseen.get(className);
    if (!s) this.unseen.set(className, (s = new Set()));
    return s;
  }

  /** Room of the class promised and not yet in the rows. */
  promised(className: string): number {
    return this.unseenOf(className).size;
  }

  /** A new claim when `fits` says one more fits beside the `promised` ones; else null. */
  claim(className: string, fits: (promised: number) => boolean): string | null {
    const claimed = this.unseenOf(className);
    if (!fits(claimed.size)) return null;
    const claim = `claim-${++this.claimSeq}`;
    claimed.add(claim);
    return claim;
  }

  releaseRoom(className: string, claim: string): void {
    this.unseen.get(className)?.delete(claim);
  }

  /** A VM created in the class's room (the claim it was made in, if any, becomes it). */
  launched(className: string, vmId: string, claim?: string): void {
    const claimed = this.unseenOf(className);
    if (claim) claimed.delete(claim);
    claimed.add(vmId);
  }

  /** The rows a tick read: the VMs among them count from their rows now. */
  seen(read: ReadonlySet<string>): void {
    for (const ids of this.unseen.values()) for (const id of ids) if (read.has(id)) ids.delete(id);
  }
}
