// Replaces masked values with [MASKED] in a byte stream, in time linear in the stream whatever the
// number of values: one Aho-Corasick automaton over bytes finds every occurrence of every value.
// Occurrences that overlap are masked as their union (one [MASKED]), so no byte of any value
// shows; occurrences that only touch stay two. A value split across chunks is found too: only the
// tail that could still be the start of a value (the automaton's depth, at most the longest
// value - 1 bytes) is held back until the next chunk; a match that may still grow (an
// overlapping value may extend it) is held as a span, not as bytes.
// The output depends only on the bytes, never on how they were cut into chunks, so a trace
// produced again from byte 0 is masked the same way.

const MASK = Buffer.from('[MASKED]');
const EMPTY = Buffer.alloc(0);

/**
 * Moves precomputed (failures resolved) for the shallow nodes, where the scan is nearly all the
 * time: nodes in breadth-first order, one row each over the byte classes the values use, up to
 * this many entries (256 KiB per job, 512 KiB past 65,536 nodes; shared by the job's maskers).
 */
const DENSE_ENTRIES = 128 * 1024;

/** The compiled values: immutable, shared by every Masker of a job (a rewind starts a new one). */
export class MaskAutomaton {
  /** Byte -> class: 0 for bytes no value contains (they lead to the root from anywhere). */
  readonly classOf = new Uint16Array(256);
  readonly classes: number;
  /** Moves of nodes [0, denseNodes): dense[s * classes + classOf[b]]. */
  readonly dense: Uint16Array | Int32Array = new Int32Array(0);
  readonly denseNodes: number = 0;
  /** Open-addressing table (node * 256 + byte) -> child, for the trie's edges. */
  private readonly keys: Int32Array;
  private readonly vals: Int32Array;
  private readonly mask: number;
  readonly fail: Int32Array;
  readonly depth: Int32Array;
  /** Longest value that ends at this node (itself or a suffix of it), 0 if none. */
  readonly out: Int32Array;
  readonly nodes: number;
  readonly patterns: number;

  /** `denseEntries`: the precomputed table's size in entries (tests shrink it to exercise the trie walk). */
  constructor(values: readonly Buffer[], opts: { denseEntries?: number } = {}) {
    // Longest first: the level-by-level build below stops at the first value too short for a level.
    const unique = [...new Map(values.filter((v) => v.length > 0).map((v) => [v.toString('latin1'), v])).values()].sort((a, b) => b.length - a.length);
    this.patterns = unique.length;
    const total = unique.reduce((n, v) => n + v.length, 0);
    if (total >= 1 << 23) throw new RangeError('masked values too large for one automaton');
    const cap = total + 1;
    this.fail = new Int32Array(cap);
    this.depth = new Int32Array(cap);
    this.out = new Int32Array(cap);
    let size = 16;
    while (size < 2 * cap) size *= 2;
    this.keys = new Int32Array(size).fill(-1);
    this.vals = new Int32Array(size);
    this.mask = size - 1;
    // The trie, one level at a time, so node ids come in breadth-first order: a node's parent and
    // its failure node (both shallower) have smaller ids.
    let nodes = 1;
    const at = new Int32Array(unique.length);
    const maxLen = unique.reduce((n, v) => Math.max(n, v.length), 0);
    for (let d = 0; d < maxLen; d++) {
      for (let p = 0; p < unique.length; p++) {
        const v = unique[p]!;
        if (d >= v.length) break;
        const s = at[p]!;
        const b = v[d]!;
        let t = this.next(s, b);
        if (t === 0) {
          t = nodes++;
          this.depth[t] = d + 1;
          this.insert(s, b, t);
          // Failure link: the longest proper suffix that is in the trie (its level is done).
          this.fail[t] = s === 0 ? 0 : this.step(this.fail[s]!, b);
        }
        at[p] = t;
        if (d + 1 === v.length) this.out[t] = v.length;
      }
    }
    this.nodes = nodes;
    for (let t = 1; t < nodes; t++) this.out[t] = Math.max(this.out[t]!, this.out[this.fail[t]!]!);
    let classes = 1;
    const used: number[] = [];
    for (const v of unique) for (const b of v) if (this.classOf[b] === 0) (this.classOf[b] = classes++), used.push(b);
    this.classes = classes;
    const denseNodes = Math.max(1, Math.min(nodes, Math.floor((opts.denseEntries ?? DENSE_ENTRIES) / classes)));
    // 16-bit entries while node ids fit: half the table, so more of it stays in the CPU cache.
    const dense = nodes <= 0x10000 ? new Uint16Array(denseNodes * classes) : new Int32Array(denseNodes * classes);
    for (let s = 0; s < denseNodes; s++) {
      for (const b of used) {
        const c = this.classOf[b]!;
        const t = this.next(s, b);
        dense[s * classes + c] = t !== 0 || s === 0 ? t : dense[this.fail[s]! * classes + c]!;
      }
    }
    this.dense = dense;
    this.denseNodes = denseNodes;
  }

  private slot(key: number): number {
    return (Math.imul(key, 0x9e3779b1) >>> 0) & this.mask;
  }

  private insert(s: number, b: number, t: number): void {
    const key = s * 256 + b;
    let i = this.slot(key);
    while (this.keys[i] !== -1) i = (i + 1) & this.mask;
    this.keys[i] = key;
    this.vals[i] = t;
  }

  /** The trie child of `s` by byte `b`, 0 if none. */
  next(s: number, b: number): number {
    const key = s * 256 + b;
    const keys = this.keys;
    for (let i = this.slot(key); ; i = (i + 1) & this.mask) {
      const k = keys[i]!;
      if (k === key) return this.vals[i]!;
      if (k === -1) return 0;
    }
  }

  /** The automaton's move from state `s` on byte `b`. */
  step(s: number, b: number): number {
    for (;;) {
      if (s < this.denseNodes) return this.dense[s * this.classes + this.classOf[b]!]!;
      const t = this.next(s, b);
      if (t !== 0 || s === 0) return t;
      s = this.fail[s]!;
    }
  }
}

export class Masker {
  private readonly ac: MaskAutomaton;
  private state = 0;
  /** Bytes consumed so far (absolute stream offsets below are in these units). */
  private pos = 0;
  /** Everything before this offset has been emitted. */
  private emitted = 0;
  /** Raw bytes [tailStart, pos) not emitted yet; [emitted, tailStart) lies inside the first region. */
  private tail: Buffer = EMPTY;
  private tailStart = 0;
  /** Masked spans not emitted yet, sorted and disjoint: [start, end) pairs. */
  private regions: number[] = [];

  constructor(values: string[] | MaskAutomaton) {
    this.ac = values instanceof MaskAutomaton ? values : new MaskAutomaton(values.map((v) => Buffer.from(v)));
  }

  push(chunk: Buffer): Buffer {
    if (this.ac.patterns === 0) return chunk;
    this.scan(chunk);
    const out = this.emit(this.pos - this.ac.depth[this.state]!);
    // The held tail is copied: the caller may reuse its chunk's memory.
    if (this.tail.length && this.tail.buffer === chunk.buffer) this.tail = Buffer.from(this.tail);
    return out;
  }

  /** Raw bytes held back (memory; a growing match is kept as its span, not its bytes). */
  get bufferedBytes(): number {
    return this.tail.length;
  }

  /** Flush the held-back tail at the end of the stream; the masker starts afresh after it. */
  end(): Buffer {
    const out = this.emit(this.pos);
    this.state = 0;
    return out;
  }

  private scan(chunk: Buffer): void {
    const ac = this.ac;
    const { dense, denseNodes, classes, classOf, fail, out } = ac;
    let s = this.state;
    const base = this.pos;
    const regions = this.regions;
    const n = chunk.length;
    for (let i = 0; i < n; i++) {
      const b = chunk[i]!;
      // The automaton's move, inlined: one table read from the shallow nodes where it nearly always is.
      if (s < denseNodes) s = dense[s * classes + classOf[b]!]!;
      else {
        let t = ac.next(s, b);
        while (t === 0) {
          s = fail[s]!;
          if (s < denseNodes) {
            t = dense[s * classes + classOf[b]!]!;
            break;
          }
          t = ac.next(s, b);
        }
        s = t;
      }
      const len = out[s]!;
      if (len !== 0) {
        const end = base + i + 1;
        let start = end - len;
        // Union with the spans it overlaps (they end before `end`; it may reach back over several).
        while (regions.length && regions[regions.length - 1]! > start) {
          const ps = regions[regions.length - 2]!;
          regions.length -= 2;
          if (ps < start) start = ps;
        }
        regions.push(start, end);
      }
    }
    this.state = s;
    this.pos = base + n;
    this.tail = this.tail.length ? Buffer.concat([this.tail, chunk]) : chunk;
  }

  /** Emit what is final below `safe` (no later match can start before it). */
  private emit(safe: number): Buffer {
    const parts: Buffer[] = [];
    const regions = this.regions;
    let cursor = this.emitted;
    let r = 0;
    let blocked = false;
    for (; r < regions.length; r += 2) {
      const start = regions[r]!;
      const end = regions[r + 1]!;
      if (start >= safe) break;
      if (start > cursor) parts.push(this.bytes(cursor, start));
      cursor = start;
      if (end > safe) {
        // A match that may still grow: everything from its start waits.
        blocked = true;
        break;
      }
      parts.push(MASK);
      cursor = end;
    }
    if (r) regions.splice(0, r);
    if (!blocked && safe > cursor) {
      parts.push(this.bytes(cursor, safe));
      cursor = safe;
    }
    this.emitted = cursor;
    // Keep only raw bytes that may still be emitted as they are: none inside a blocking region.
    const keepFrom = blocked ? Math.min(regions[1]!, this.pos) : cursor;
    if (keepFrom > this.tailStart) {
      this.tail = keepFrom >= this.pos ? EMPTY : this.tail.subarray(keepFrom - this.tailStart);
      this.tailStart = keepFrom;
    }
    return parts.length === 1 ? parts[0]! : parts.length ? Buffer.concat(parts) : EMPTY;
  }

  private bytes(from: number, to: number): Buffer {
    return this.tail.subarray(from - this.tailStart, to - this.tailStart);
  }
}
