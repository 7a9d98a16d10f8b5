// A port forward on the host side (docs/agent-protocol.md, "Port forwarding"):
// a node Duplex over one PORT_OPEN stream. Bytes written go to the guest
// program as PORT_DATA, at most PORT_WINDOW unacknowledged; bytes it sends
// arrive as DATA within the output credit, which is granted back only as the
// reader consumes them. So neither a slow reader here nor a fast writer
// grows the agent's or this process's buffers past a window.

import { Duplex } from "node:stream";
import { MitosError } from "../errors.js";
import { FieldWriter, MsgType, PORT_WINDOW, Tag } from "./protocol.js";
import { InputWindow, OutputWindow } from "./windows.js";

/** PORT_DATA frames carry at most this much, so forwards sharing the channel interleave. */
const SEND_CHUNK = 64 * 1024;

/** What a PortStream needs from its AgentClient. */
export interface PortChannel {
  /** Sends a frame on this stream; throws once the agent is gone. */
  send(type: number, payload?: Buffer): void;
  /** The guest broke the protocol on this stream: the client drops the whole connection. */
  violation(reason: string): void;
}

export class PortStream extends Duplex {
  /** The guest address the agent connected to: "127.0.0.1", or "::1" when refused there. */
  address = "";
  private readonly credit = new OutputWindow();
  private readonly input = new InputWindow(PORT_WINDOW);
  /** Bytes pushed to the reader and not credited back yet (its buffer was full). */
  private held = 0;
  /** PORT_EOF received: the guest program sends no more. */
  private eof = false;
  /** PORT_SHUTDOWN sent: this side sends no more. */
  private shutSent = false;
  /** The agent ended the stream (final frame) or the connection is gone. */
  private over = false;

  constructor(
    readonly port: number,
    private readonly channel: PortChannel,
    allowHalfOpen: boolean,
  ) {
    super({ allowHalfOpen });
  }

  // --- frames from the agent (AgentClient's handler for this stream) ---

  /** DATA: bytes from the guest program. */
  received(chunk: Buffer): void {
    if (this.eof) {
      this.channel.violation(`port stream (${this.port}) sent DATA after PORT_EOF`);
      return;
    }
    if (!this.credit.take(chunk.length)) {
      this.channel.violation(`port stream (${this.port}) sent data beyond its credit`);
      return;
    }
    if (this.destroyed) return; // closing: the agent stops at its credit
    this.held += chunk.length;
    if (this.push(chunk)) this.release();
  }

  /** PORT_ACK: the agent wrote `n` of our bytes into the guest socket. */
  acked(n: number): void {
    if (!(n >= 0 && n <= this.input.unacked)) {
      this.channel.violation(`port stream (${this.port}) acknowledged ${n} bytes it was not sent`);
      return;
    }
    this.input.ack(n);
  }

  /** PORT_EOF: the guest program closed its side for writing. */
  guestEnded(): void {
    if (this.eof) return;
    this.eof = true;
    if (!this.destroyed) this.push(null);
  }

  /** The stream's final frame (OK, or ERROR as `err`), or the connection went away. */
  finished(err?: Error): void {
    this.over = true;
    this.input.fail(err ?? this.closedError());
    if (!err) {
      this.guestEnded();
      return;
    }
    // An ERROR can come in the same read as STARTED, before the caller of
    // openPort has resumed from its await and added an 'error' listener: an
    // 'error' then would be uncaught (and end the process). Destroy after it.
    setImmediate(() => this.destroy(err));
  }

  // --- Duplex ---

  override _read(): void {
    this.release();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.sendData(chunk).then(() => cb(), cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (this.over) {
      cb();
      return;
    }
    try {
      this.channel.send(MsgType.PORT_SHUTDOWN);
      this.shutSent = true;
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    // Both directions ended cleanly: the agent ends the stream itself once it
    // has written what it holds. Otherwise the socket is closed now.
    if (!this.over && !(this.shutSent && this.eof)) {
      try {
        this.channel.send(MsgType.PORT_CLOSE);
      } catch {
        // the agent is gone: nothing to close
      }
    }
    this.input.fail(err ?? this.closedError());
    cb(err);
  }

  private async sendData(chunk: Buffer): Promise<void> {
    let buf = chunk;
    while (buf.length > 0) {
      const n = await this.input.reserve(Math.min(buf.length, SEND_CHUNK));
      this.channel.send(MsgType.PORT_DATA, buf.subarray(0, n));
      buf = buf.subarray(n);
    }
  }

  /** Gives the guest credit for what the reader took (once a quarter window has built up). */
  private release(): void {
    const grant = this.credit.consumed(this.held);
    this.held = 0;
    if (grant > 0 && !this.over) {
      try {
        this.channel.send(MsgType.CREDIT, new FieldWriter().int(Tag.BYTES, grant).build());
      } catch {
        // the agent is gone; finished() follows
      }
    }
  }

  private closedError(): MitosError {
    return new MitosError("unavailable", `port forward to guest port ${this.port} is closed`, {
      remediation: "Open a new port forward.",
      context: { port: this.port },
    });
  }
}

/** Maps the agent's ERROR for a port stream (a Linux errno) to an API error with a remediation. */
export function portError(errno: number, message: string, port: number, context: Record<string, unknown>): MitosError {
  const details = (remediation: string) => ({
    remediation,
    cause: `errno ${errno} in the guest`,
    context: { ...context, port, errno },
  });
  switch (errno) {
    case 111: // ECONNREFUSED
      return new MitosError(
        "unavailable",
        message,
        details(
          `Nothing listens on port ${port} in the sandbox. Start the server first (bound to 127.0.0.1, ::1 or all addresses), wait until it listens, then retry.`,
        ),
      );
    case 110: // ETIMEDOUT
      return new MitosError(
        "unavailable",
        message,
        details(
          "The server in the sandbox did not accept the connection in time (hung, or its listen backlog is full). Check the server, then retry.",
        ),
      );
    case 104: // ECONNRESET
    case 32: // EPIPE
      return new MitosError(
        "unavailable",
        message,
        details("The program in the sandbox reset or closed the connection. Open a new port forward."),
      );
    case 24: // EMFILE
    case 23: // ENFILE
      return new MitosError(
        "too_many_streams",
        message,
        details(
          "The sandbox has too many open streams. Close port forwards and streams you no longer need, then retry.",
        ),
      );
    case 22: // EINVAL
      return new MitosError(
        "invalid_input",
        message,
        details("Pass a TCP port number from 1 to 65535 and a timeout >= 0."),
      );
    default:
      return new MitosError(
        "internal",
        message,
        details("The message names the failing guest operation. Retry; if it persists, check the sandbox console log."),
      );
  }
}
