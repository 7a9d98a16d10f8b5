// QEMU Machine Protocol client: newline-delimited JSON over a Unix socket,
// commands matched to answers by id, events delivered to listeners.

import { EventEmitter } from "node:events";
import type net from "node:net";
import { MitosError } from "../errors.js";
import { connectWhenReady } from "../unix-socket.js";

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
  command: string;
}

export class QmpClient extends EventEmitter<{ event: [QmpEvent]; close: [] }> {
  private buf = "";
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closedReason: string | undefined;

  private constructor(private readonly socket: net.Socket) {
    super();
    socket.setEncoding("utf8");
    socket.on("data", (d: string) => this.onData(d));
    socket.on("error", (e) => this.fail(`QMP socket error: ${e.message}`));
    socket.on("close", () => this.fail("QMP connection closed (QEMU exited)"));
  }

  /** Connects (retrying until the socket exists) and negotiates capabilities. */
  static async connect(path: string, deadlineMs: number): Promise<QmpClient> {
    try {
      const qmp = new QmpClient(await connectWhenReady(path, deadlineMs));
      await qmp.execute("qmp_capabilities", undefined, deadlineMs);
      return qmp;
    } catch (err) {
      if (err instanceof MitosError) throw err;
      throw new MitosError("unavailable", `cannot reach QEMU's QMP socket ${path}: ${(err as Error).message}`, {
        remediation: "QEMU did not start or exited at once; read the VM's qemu.log.",
      });
    }
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 30_000): Promise<T> {
    if (this.closedReason) return Promise.reject(this.closedError(command));
    const id = String(this.nextId++);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(
          new MitosError("unavailable", `QEMU did not answer ${command} within ${timeoutMs} ms`, {
            remediation: "QEMU is hung or overloaded; terminate the sandbox.",
          }),
        );
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer, command });
      this.socket.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`);
    });
  }

  /** Resolves on the next event named `name` for which `match` holds. */
  waitEvent(name: string, timeoutMs: number, match: (e: QmpEvent) => boolean = () => true): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        reject(
          new MitosError("unavailable", `QEMU event ${name} did not come within ${timeoutMs} ms`, {
            remediation: "QEMU is hung or overloaded; terminate the sandbox.",
          }),
        );
      }, timeoutMs);
      const onEvent = (e: QmpEvent) => {
        if (e.event === name && match(e)) {
          cleanup();
          resolve(e);
        }
      };
      const onClose = () => {
        cleanup();
        reject(this.closedError(`waiting for ${name}`));
      };
      const cleanup = () => {
        clearTimeout(timer);
        this.off("event", onEvent);
        this.off("close", onClose);
      };
      this.on("event", onEvent);
      this.on("close", onClose);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private onData(d: string): void {
    this.buf += d;
    let i = this.buf.indexOf("\n");
    while (i >= 0) {
      const line = this.buf.slice(0, i).trim();
      this.buf = this.buf.slice(i + 1);
      i = this.buf.indexOf("\n");
      if (line === "") continue;
      let msg: {
        id?: string;
        return?: unknown;
        error?: { class: string; desc: string };
        event?: string;
        data?: Record<string, unknown>;
      };
      try {
        msg = JSON.parse(line);
      } catch {
        continue;
      }
      if (msg.event) {
        this.emit("event", { event: msg.event, ...(msg.data ? { data: msg.data } : {}) });
        continue;
      }
      if (msg.id === undefined) continue; // greeting
      const p = this.pending.get(msg.id);
      if (!p) continue;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.error) {
        p.reject(
          new MitosError("internal", `QEMU refused ${p.command}: ${msg.error.desc}`, {
            remediation: "This is a Mitos bug or an unsupported QEMU version; report it with the VM's qemu.log.",
            cause: msg.error.class,
          }),
        );
      } else p.resolve(msg.return);
    }
  }

  private closedError(what: string): MitosError {
    return new MitosError("unavailable", `QMP unavailable for ${what}: ${this.closedReason ?? "closed"}`, {
      remediation: "QEMU exited; the sandbox is gone. Create a new one.",
    });
  }

  private fail(reason: string): void {
    if (this.closedReason) return;
    this.closedReason = reason;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(this.closedError(p.command));
    }
    this.emit("close");
  }
}
