// Splits a QEMU 7.2 precopy migration stream into (a) the pages of one RAM
// block, written into a sparse base file, and (b) the rest of the stream with
// that block's pages removed — a device state that restores onto the base.
//
// Why: a live sandbox maps its base privately (share=off), so QEMU's
// x-ignore-shared cannot leave its RAM out of the stream. Parsing the RAM
// sections lets one migration produce the new base and the device state in a
// single pass (docs/decisions/0002-live-fork-capture.md).
//
// Format (migration/savevm.c, migration/ram.c): "QEVM" v3, then sections.
// RAM entries are be64 (page address | flags), an optional block name, and a
// page, a fill byte, or nothing (end of section).

import fs from "node:fs";

const QEVM = 0x5145564d;
const SEC_EOF = 0x00;
const SEC_START = 0x01;
const SEC_PART = 0x02;
const SEC_END = 0x03;
const SEC_FULL = 0x04;
const SEC_SUBSECTION = 0x05;
const SEC_CONFIGURATION = 0x07;
const SEC_FOOTER = 0x7e;

const F_ZERO = 0x02;
const F_MEM_SIZE = 0x04;
const F_PAGE = 0x08;
const F_EOS = 0x10;
const F_CONTINUE = 0x20;
const PAGE = 4096;
const FLAG_MASK = PAGE - 1;

export interface SplitOptions {
  /** RAM block whose pages go to the base file (the memory backend id). */
  ramBlock: string;
  /** Whether the source ran with x-ignore-shared (adds an address per block). */
  ignoreShared: boolean;
}

export interface SplitStats {
  pagesToBase: number;
  zeroPagesSkipped: number;
  pagesKept: number;
  stateBytes: number;
  /** Bytes of the state before its device sections (header, configuration, RAM sections). */
  deviceOffset: number;
}

/**
 * Byte requests from the parser: read n bytes, peek n bytes, or copy the rest
 * verbatim. `ramWord` marks the start of a RAM entry, where push() may first
 * consume plain pages of the base block itself (the hot path: one entry per
 * guest page, tens of thousands per capture).
 */
type Need = { n: number; peek?: boolean; ramWord?: boolean } | { rest: true };

export class MigrationSplitter {
  private buf: Buffer = Buffer.alloc(0);
  private readonly parser: Generator<Need, void, Buffer>;
  private need: Need;
  private passthrough = false;
  private readonly stateOut: Buffer[] = [];
  private stateOutBytes = 0;
  private run: { offset: number; parts: Buffer[]; bytes: number } | undefined;
  /** Block of the last RAM entry: CONTINUE refers to it, across sections too. */
  private block = "";
  readonly stats: SplitStats = { pagesToBase: 0, zeroPagesSkipped: 0, pagesKept: 0, stateBytes: 0, deviceOffset: 0 };

  constructor(
    private readonly stateFd: number,
    private readonly ramFd: number,
    private readonly opts: SplitOptions,
  ) {
    this.parser = this.parse();
    const first = this.parser.next();
    this.need = first.value as Need;
  }

  push(chunk: Buffer): void {
    if (this.passthrough) {
      this.emit(chunk);
      this.flushState();
      return;
    }
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    let off = 0;
    for (;;) {
      const need = this.need;
      if ("rest" in need) {
        this.passthrough = true;
        this.stats.deviceOffset = this.stats.stateBytes;
        this.emit(this.buf.subarray(off));
        off = this.buf.length;
        break;
      }
      if (need.ramWord && this.block === this.opts.ramBlock) off = this.basePages(off);
      if (this.buf.length - off < need.n) break;
      const slice = this.buf.subarray(off, off + need.n);
      if (!need.peek) off += need.n;
      const r = this.parser.next(slice);
      if (r.done) {
        throw new Error("migration stream parser ended before the stream did");
      }
      this.need = r.value;
    }
    this.buf = off === 0 ? this.buf : Buffer.from(this.buf.subarray(off));
    this.flushState();
  }

  /** Call at end of stream; throws if the stream stopped mid-way. */
  finish(): SplitStats {
    if (!this.passthrough) {
      throw new Error("migration stream ended before its device state (truncated or unexpected format)");
    }
    this.flushRun();
    this.flushState();
    return this.stats;
  }

  private emit(b: Buffer): void {
    if (b.length === 0) return;
    // Copy: the parser's slices point into a buffer that is replaced later.
    this.stateOut.push(Buffer.from(b));
    this.stateOutBytes += b.length;
    this.stats.stateBytes += b.length;
  }

  private flushState(): void {
    if (this.stateOutBytes === 0) return;
    const all = Buffer.concat(this.stateOut);
    this.stateOut.length = 0;
    this.stateOutBytes = 0;
    let off = 0;
    while (off < all.length) off += fs.writeSync(this.stateFd, all, off);
  }

  /**
   * Consumes consecutive CONTINUE entries of the base block (a page, or a fill
   * byte) straight from the buffer; stops at anything else, or at an entry not
   * yet fully received, and leaves it to the parser. Returns the new offset.
   */
  private basePages(off: number): number {
    const buf = this.buf;
    while (off + 8 <= buf.length) {
      const hi = buf.readUInt32BE(off);
      const lo = buf.readUInt32BE(off + 4);
      const flags = lo & FLAG_MASK;
      const addr = hi * 2 ** 32 + (lo - flags);
      if (flags === (F_PAGE | F_CONTINUE)) {
        if (off + 8 + PAGE > buf.length) break;
        this.writePage(addr, buf.subarray(off + 8, off + 8 + PAGE));
        this.stats.pagesToBase++;
        off += 8 + PAGE;
      } else if (flags === (F_ZERO | F_CONTINUE)) {
        if (off + 9 > buf.length) break;
        this.fillPage(addr, buf[off + 8] ?? 0);
        off += 9;
      } else break;
    }
    return off;
  }

  private fillPage(addr: number, fill: number): void {
    if (fill === 0) {
      this.stats.zeroPagesSkipped++;
      return;
    }
    this.writePage(addr, Buffer.alloc(PAGE, fill));
    this.stats.pagesToBase++;
  }

  /** Queues a page for the base; `page` is kept by reference (stream chunks are never reused). */
  private writePage(offset: number, page: Buffer): void {
    const r = this.run;
    if (r && r.offset + r.bytes === offset && r.bytes < 4 << 20) {
      r.parts.push(page);
      r.bytes += page.length;
      return;
    }
    this.flushRun();
    this.run = { offset, parts: [page], bytes: page.length };
  }

  private flushRun(): void {
    const r = this.run;
    if (!r) return;
    this.run = undefined;
    let done = fs.writevSync(this.ramFd, r.parts, r.offset);
    if (done === r.bytes) return;
    const data = Buffer.concat(r.parts); // short write: finish the rest plainly
    while (done < data.length) done += fs.writeSync(this.ramFd, data, done, data.length - done, r.offset + done);
  }

  private *parse(): Generator<Need, void, Buffer> {
    const header = yield { n: 8 };
    if (header.readUInt32BE(0) !== QEVM) throw new Error("not a QEMU migration stream (bad magic)");
    this.emit(header);
    for (;;) {
      const type = (yield { n: 1, peek: true })[0];
      if (type === SEC_CONFIGURATION) {
        yield* this.configuration();
      } else if (type === SEC_START) {
        const head = yield { n: 5 };
        const name = yield* this.shortString();
        const tail = yield { n: 8 };
        if (name.toString() !== "ram") {
          // Some other iterable section: we cannot know its length, so refuse
          // rather than emit a stream that fails to load later.
          throw new Error(`unexpected iterable section ${name.toString()} before RAM`);
        }
        this.emit(head);
        this.emit(Buffer.from([name.length]));
        this.emit(name);
        this.emit(tail);
        yield* this.ramBody();
        yield* this.footer();
      } else if (type === SEC_PART || type === SEC_END) {
        this.emit(yield { n: 5 });
        yield* this.ramBody();
        yield* this.footer();
      } else if (type === SEC_FULL || type === SEC_EOF) {
        // Device sections follow RAM to the end: copy them unchanged.
        yield { rest: true };
        return;
      } else {
        throw new Error(`unknown migration section type 0x${type?.toString(16)}`);
      }
    }
  }

  private *configuration(): Generator<Need, void, Buffer> {
    this.emit(yield { n: 1 });
    const len = yield { n: 4 };
    this.emit(len);
    this.emit(yield { n: len.readUInt32BE(0) });
    while ((yield { n: 1, peek: true })[0] === SEC_SUBSECTION) {
      this.emit(yield { n: 1 });
      const name = (yield* this.shortString()).toString();
      this.emit(Buffer.from([name.length]));
      this.emit(Buffer.from(name));
      this.emit(yield { n: 4 }); // version
      if (name === "configuration/target-page-bits") {
        this.emit(yield { n: 4 });
      } else if (name === "configuration/capabilities") {
        const count = yield { n: 4 };
        this.emit(count);
        for (let i = 0; i < count.readUInt32BE(0); i++) {
          const cap = yield* this.shortString();
          this.emit(Buffer.from([cap.length]));
          this.emit(cap);
        }
      } else if (name === "configuration/uuid") {
        this.emit(yield { n: 16 });
      } else {
        throw new Error(`unknown configuration subsection ${name}`);
      }
    }
  }

  private *footer(): Generator<Need, void, Buffer> {
    if ((yield { n: 1, peek: true })[0] === SEC_FOOTER) this.emit(yield { n: 5 });
  }

  private *shortString(): Generator<Need, Buffer, Buffer> {
    const len = (yield { n: 1 })[0] ?? 0;
    return Buffer.from(len === 0 ? Buffer.alloc(0) : yield { n: len });
  }

  /** RAM entries up to and including EOS. */
  private *ramBody(): Generator<Need, void, Buffer> {
    for (;;) {
      const word = yield { n: 8, ramWord: true };
      const v = word.readBigUInt64BE(0);
      const flags = Number(v & BigInt(FLAG_MASK));
      const addr = Number(v & ~BigInt(FLAG_MASK));
      if (flags & F_EOS) {
        this.emit(word);
        return;
      }
      if (flags & F_MEM_SIZE) {
        this.emit(word);
        let remaining = addr;
        while (remaining > 0) {
          const id = yield* this.shortString();
          const used = yield { n: 8 };
          this.emit(Buffer.from([id.length]));
          this.emit(id);
          this.emit(used);
          if (this.opts.ignoreShared) this.emit(yield { n: 8 });
          remaining -= Number(used.readBigUInt64BE(0));
        }
        continue;
      }
      if (!(flags & (F_ZERO | F_PAGE))) throw new Error(`unsupported RAM entry flags 0x${flags.toString(16)}`);
      let idBytes: Buffer | undefined;
      if (!(flags & F_CONTINUE)) {
        idBytes = yield* this.shortString();
        this.block = idBytes.toString();
      }
      const data = yield { n: flags & F_PAGE ? PAGE : 1 };
      if (this.block === this.opts.ramBlock) {
        if (flags & F_PAGE) {
          this.writePage(addr, data);
          this.stats.pagesToBase++;
        } else this.fillPage(addr, data[0] ?? 0);
        continue;
      }
      this.stats.pagesKept++;
      this.emit(word);
      if (idBytes) {
        this.emit(Buffer.from([idBytes.length]));
        this.emit(idBytes);
      }
      this.emit(data);
    }
  }
}
