// Wire format of the guest agent protocol: docs/agent-protocol.md.
// Pure encode/decode, no I/O, so it can be property-tested.

export const MAGIC0 = 0x4d;
export const MAGIC1 = 0x54;
export const HEADER_SIZE = 12;
export const MAX_PAYLOAD = 1 << 20;
export const DEFAULT_WINDOW = 262_144;
export const STDIN_WINDOW = 262_144;
/** PORT_DATA the host may have unacknowledged on one port forward. */
export const PORT_WINDOW = 262_144;
/** HELLO's SESSION field: exactly this many bytes. */
export const SESSION_LEN = 16;
/**
 * Zero bytes a reconnecting host sends before its HELLO: enough to complete
 * any partial frame a dead host left in the agent's decoder (header + largest
 * payload), and zeros never start a frame, so the rest is one resync run.
 */
export const RESYNC_FLUSH_BYTES = HEADER_SIZE + MAX_PAYLOAD;

export const MsgType = {
  HELLO: 0x01,
  EXEC: 0x02,
  STDIN: 0x03,
  STDIN_CLOSE: 0x04,
  RESIZE: 0x05,
  SIGNAL: 0x06,
  CREDIT: 0x07,
  READ: 0x10,
  WRITE_OPEN: 0x11,
  WRITE_DATA: 0x12,
  WRITE_CLOSE: 0x13,
  LIST: 0x14,
  STAT: 0x15,
  MKDIR: 0x16,
  REMOVE: 0x17,
  RENAME: 0x18,
  FORK_NOTIFY: 0x20,
  PROCESSES: 0x21,
  KILL: 0x22,
  SET_CLOCK: 0x23,
  PORT_OPEN: 0x30,
  PORT_DATA: 0x31,
  PORT_SHUTDOWN: 0x32,
  PORT_CLOSE: 0x33,
  OK: 0x81,
  STARTED: 0x82,
  STDOUT: 0x83,
  STDERR: 0x84,
  EXIT: 0x85,
  STDIN_ACK: 0x86,
  DATA: 0x88,
  PORT_ACK: 0x89,
  PORT_EOF: 0x8a,
  ENTRY: 0x8b,
  PROC: 0x8c,
  ERROR: 0x8f,
} as const;
export type MsgTypeCode = (typeof MsgType)[keyof typeof MsgType];

export const Tag = {
  CMD: 1,
  ARG: 2,
  ENV: 3,
  CWD: 4,
  TIMEOUT_MS: 5,
  PTY_COLS: 6,
  PTY_ROWS: 7,
  STDIN_OPEN: 8,
  WINDOW: 9,
  UID: 10,
  GID: 11,
  PID: 12,
  EXIT_CODE: 13,
  SIGNAL: 14,
  TIMED_OUT: 15,
  DURATION_MS: 16,
  BYTES: 17,
  PATH: 20,
  TO: 21,
  MODE: 22,
  OFFSET: 23,
  LENGTH: 24,
  RECURSIVE: 25,
  APPEND: 26,
  NAME: 30,
  TYPE: 31,
  SIZE: 32,
  MTIME: 33,
  /** A symlink's target, as readlink gives it (ENTRY, STAT). */
  TARGET: 34,
  /** The nanoseconds part of MTIME (ENTRY, STAT). */
  MTIME_NSEC: 35,
  ENTROPY: 40,
  TIME_NS: 41,
  SANDBOX_ID: 42,
  HOSTNAME: 43,
  RESEEDED: 44,
  NOTIFIED: 45,
  CLOCK_STEP_NS: 46,
  SESSION: 47,
  VERSION: 50,
  UPTIME_MS: 51,
  MEM_TOTAL: 52,
  MEM_AVAILABLE: 53,
  BOOT_ID: 54,
  ERRNO: 60,
  MESSAGE: 61,
  PPID: 70,
  COMMAND: 71,
  STATE: 72,
  RSS: 73,
  CPU_PERMILLE: 74,
  PORT: 80,
  ADDRESS: 81,
} as const;

export interface Frame {
  type: number;
  stream: number;
  payload: Buffer;
}

export function encodeFrame(type: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new RangeError(`frame payload ${payload.length} > ${MAX_PAYLOAD}`);
  const header = Buffer.alloc(HEADER_SIZE);
  header[0] = MAGIC0;
  header[1] = MAGIC1;
  header[2] = type;
  header[3] = 0;
  header.writeUInt32BE(stream >>> 0, 4);
  header.writeUInt32BE(payload.length, 8);
  return Buffer.concat([header, payload]);
}

/**
 * Incremental frame decoder. Bad magic, flags or an oversize length make it
 * drop one byte and search for the next magic; `resyncs` counts those events.
 */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);
  resyncs = 0;
  /** Bytes skipped while resyncing. */
  dropped = 0;

  push(chunk: Buffer): Frame[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const frames: Frame[] = [];
    let off = 0;
    let skipping = false;
    while (this.buf.length - off >= HEADER_SIZE) {
      const b = this.buf;
      const len = b.readUInt32BE(off + 8);
      if (b[off] !== MAGIC0 || b[off + 1] !== MAGIC1 || b[off + 3] !== 0 || len > MAX_PAYLOAD) {
        if (!skipping) this.resyncs++;
        skipping = true;
        this.dropped++;
        off++;
        continue;
      }
      skipping = false;
      if (b.length - off - HEADER_SIZE < len) break;
      const start = off + HEADER_SIZE;
      frames.push({
        type: b[off + 2] as number,
        stream: b.readUInt32BE(off + 4),
        payload: Buffer.from(b.subarray(start, start + len)),
      });
      off = start + len;
    }
    this.buf = off === 0 ? this.buf : Buffer.from(this.buf.subarray(off));
    return frames;
  }

  get buffered(): number {
    return this.buf.length;
  }
}

export type FieldValue = string | number | bigint | boolean | Buffer;

/** Builds a fields payload; integers are 8-byte signed big-endian. */
export class FieldWriter {
  private parts: Buffer[] = [];

  private raw(tag: number, value: Buffer): this {
    const h = Buffer.alloc(5);
    h[0] = tag;
    h.writeUInt32BE(value.length, 1);
    this.parts.push(h, value);
    return this;
  }

  str(tag: number, value: string): this {
    if (value.includes("\0")) throw new RangeError("strings sent to the agent cannot contain NUL bytes");
    return this.raw(tag, Buffer.from(value, "utf8"));
  }

  int(tag: number, value: number | bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigInt64BE(BigInt(value));
    return this.raw(tag, b);
  }

  bytes(tag: number, value: Buffer): this {
    return this.raw(tag, value);
  }

  build(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** Parsed fields payload: repeated tags keep every value, in order. */
export class Fields {
  private constructor(private readonly map: Map<number, Buffer[]>) {}

  static parse(payload: Buffer): Fields {
    const map = new Map<number, Buffer[]>();
    let off = 0;
    while (off < payload.length) {
      if (payload.length - off < 5) throw new RangeError("truncated field header");
      const tag = payload[off] as number;
      const len = payload.readUInt32BE(off + 1);
      off += 5;
      if (len > payload.length - off) throw new RangeError(`field ${tag} runs past the payload`);
      const value = payload.subarray(off, off + len);
      off += len;
      const list = map.get(tag);
      if (list) list.push(value);
      else map.set(tag, [value]);
    }
    return new Fields(map);
  }

  has(tag: number): boolean {
    return this.map.has(tag);
  }

  bytes(tag: number): Buffer | undefined {
    return this.map.get(tag)?.[0];
  }

  str(tag: number): string | undefined {
    return this.bytes(tag)?.toString("utf8");
  }

  strs(tag: number): string[] {
    return (this.map.get(tag) ?? []).map((b) => b.toString("utf8"));
  }

  bigint(tag: number): bigint | undefined {
    const b = this.bytes(tag);
    if (!b) return undefined;
    if (b.length !== 8) throw new RangeError(`field ${tag} is not an 8-byte integer`);
    return b.readBigInt64BE();
  }

  int(tag: number): number | undefined {
    const v = this.bigint(tag);
    return v === undefined ? undefined : Number(v);
  }
}

/**
 * PORT_OPEN's fields: the guest TCP port (1..65535), the initial output
 * credit, and the connect timeout (ms; 0 = none, absent = the agent's 10 s).
 */
export function portOpenFields(req: { port: number; window?: number; timeoutMs?: number }): Buffer {
  if (!Number.isInteger(req.port) || req.port < 1 || req.port > 65535) {
    throw new RangeError(`port must be an integer in 1..65535, got ${req.port}`);
  }
  const w = new FieldWriter().int(Tag.PORT, req.port).int(Tag.WINDOW, req.window ?? DEFAULT_WINDOW);
  if (req.timeoutMs !== undefined) {
    if (!Number.isFinite(req.timeoutMs) || req.timeoutMs < 0) throw new RangeError("timeoutMs must be >= 0");
    w.int(Tag.TIMEOUT_MS, Math.ceil(req.timeoutMs));
  }
  return w.build();
}

/**
 * Finds a reconnecting host's place in a channel a dead host left behind:
 * scans raw bytes for the header of an OK frame on `stream` whose fields carry
 * SESSION = `session`, discarding everything before it (stale frames of the
 * dead host's streams, a frame cut in half, noise). It never trusts a length
 * it has not checked and never holds more than one frame of payload.
 */
export class ResyncScanner {
  private buf: Buffer = Buffer.alloc(0);
  private readonly pattern: Buffer;
  /** Bytes thrown away so far. */
  discarded = 0;
  /** The matching OK's fields, once found. */
  fields: Fields | undefined;

  constructor(
    stream: number,
    private readonly session: Buffer,
  ) {
    if (session.length !== SESSION_LEN) throw new RangeError(`session must be ${SESSION_LEN} bytes`);
    this.pattern = Buffer.alloc(8);
    this.pattern[0] = MAGIC0;
    this.pattern[1] = MAGIC1;
    this.pattern[2] = MsgType.OK;
    this.pattern[3] = 0;
    this.pattern.writeUInt32BE(stream >>> 0, 4);
  }

  /**
   * Feeds received bytes. Returns the bytes after the matching OK (they start
   * on a frame boundary: feed them to a FrameDecoder), or undefined while it
   * is still looking.
   */
  push(chunk: Buffer): Buffer | undefined {
    if (this.fields) throw new Error("ResyncScanner already matched");
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    for (;;) {
      const at = this.buf.indexOf(this.pattern);
      if (at < 0) {
        // Keep a tail that may be the start of the pattern.
        this.drop(Math.max(0, this.buf.length - (this.pattern.length - 1)));
        return undefined;
      }
      this.drop(at);
      if (this.buf.length < HEADER_SIZE) return undefined;
      const len = this.buf.readUInt32BE(8);
      if (len <= MAX_PAYLOAD) {
        if (this.buf.length - HEADER_SIZE < len) return undefined;
        const fields = this.matches(this.buf.subarray(HEADER_SIZE, HEADER_SIZE + len));
        if (fields) {
          this.fields = fields;
          const rest = Buffer.from(this.buf.subarray(HEADER_SIZE + len));
          this.buf = Buffer.alloc(0);
          return rest;
        }
      }
      // Looked like our answer but is not: go on from the next byte.
      this.drop(1);
    }
  }

  /** Bytes held while a candidate frame is incomplete. */
  get buffered(): number {
    return this.buf.length;
  }

  private matches(payload: Buffer): Fields | undefined {
    try {
      const f = Fields.parse(payload);
      return f.bytes(Tag.SESSION)?.equals(this.session) ? f : undefined;
    } catch {
      return undefined; // not a fields payload: not our answer
    }
  }

  private drop(n: number): void {
    if (n <= 0) return;
    this.discarded += n;
    this.buf = this.buf.subarray(n);
  }
}
