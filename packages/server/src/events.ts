// Live sandbox changes as server-sent events (docs/console.md "Live events"):
// GET /v1/events answers `text/event-stream` with a `snapshot` of every sandbox
// the caller sees, then `sandbox` (created or changed) and `removed` events as
// they happen, and a `memory` event every few seconds. The console's fork tree
// is drawn from it; any client may use it.
//
// One watcher per server diffs the engine's in-memory table (no guest is asked)
// while anyone listens: a change reaches listeners within WATCH_MS, including
// ones no route made (a deadline reaping a sandbox, a QEMU that died). Memory
// is the expensive read (smaps of every VM), so it comes on its own, slower
// beat, which slows further when the reads take long (hundreds of VMs).

import type { Engine, SandboxInfo } from "@mitos/engine";
import type { FastifyInstance } from "fastify";
import type { Access, Principal } from "./access.js";
import { authorizationOf } from "./auth.js";
import { routeSchemas } from "./openapi.js";

const WATCH_MS = 150;
const MEMORY_MS = 3000;
/** Memory reads may take at most 1/MEMORY_SHARE of the time: with hundreds of VMs, the beat slows. */
const MEMORY_SHARE = 20;
const HEARTBEAT_MS = 15_000;
/** How often each listener's credential is checked again (a revoked key's stream ends). */
const RECHECK_MS = 1000;
/** A client that stops reading is cut off once this much waits for it. */
const MAX_BUFFERED = 4 << 20;

type SandboxJson = (p: Principal, s: SandboxInfo) => unknown;

interface Listener {
  principal: Principal;
  /** The credential as sent, checked again every RECHECK_MS. */
  authorization: string | undefined;
  send(event: string, data: unknown): void;
  /** Ends the stream (its credential no longer holds). */
  close(): void;
}

/** Whether `now` is still the principal `was` (the same key, the same rights). */
function same(was: Principal, now: Principal | undefined): boolean {
  return now !== undefined && JSON.stringify(was) === JSON.stringify(now);
}

/** What, in a sandbox, a listener would want to hear about (memory comes separately). */
function signature(s: SandboxInfo): string {
  return JSON.stringify([s.state, s.deadlineUnix, s.hibernated, s.network ?? null, s.parentId, s.templateId]);
}

export class SandboxWatch {
  readonly #listeners = new Set<Listener>();
  #seen = new Map<string, { sig: string; info: SandboxInfo }>();
  #timer: NodeJS.Timeout | undefined;
  #memoryTimer: NodeJS.Timeout | undefined;
  #lastCheck = 0;

  constructor(
    private readonly engine: Engine,
    private readonly access: Access,
    private readonly sandboxJson: SandboxJson,
  ) {}

  /** Adds a listener, sends it the snapshot, and returns how to remove it. */
  listen(l: Listener): () => void {
    if (this.#listeners.size === 0) this.#start();
    this.#listeners.add(l);
    const visible = this.engine.list().filter((s) => this.access.seesSandbox(l.principal, s));
    l.send("snapshot", { sandboxes: visible.map((s) => this.sandboxJson(l.principal, s)) });
    return () => {
      if (this.#listeners.delete(l) && this.#listeners.size === 0) this.#stop();
    };
  }

  #start(): void {
    this.#seen = new Map(this.engine.list().map((s) => [s.id, { sig: signature(s), info: s }]));
    this.#timer = setInterval(() => this.#tick(), WATCH_MS);
    this.#scheduleMemory(MEMORY_MS);
  }

  #scheduleMemory(ms: number): void {
    this.#memoryTimer = setTimeout(() => {
      const started = performance.now();
      this.#memory();
      if (this.#timer) this.#scheduleMemory(Math.max(MEMORY_MS, (performance.now() - started) * MEMORY_SHARE));
    }, ms);
  }

  #stop(): void {
    clearInterval(this.#timer);
    clearTimeout(this.#memoryTimer);
    this.#timer = this.#memoryTimer = undefined;
  }

  #tick(): void {
    if (Date.now() - this.#lastCheck >= RECHECK_MS) {
      this.#lastCheck = Date.now();
      for (const l of this.#listeners) if (!same(l.principal, this.access.resolve(l.authorization))) l.close();
    }
    const now = new Map(this.engine.list().map((s) => [s.id, { sig: signature(s), info: s }]));
    for (const [id, { sig, info }] of now) {
      if (this.#seen.get(id)?.sig === sig) continue;
      // Built once for all listeners: admins and tenants see the same object (route-policy.ts keeps sandbox tokens out),
      // and building it reads the VM's memory.
      let json: unknown;
      for (const l of this.#listeners) {
        if (!this.access.seesSandbox(l.principal, info)) continue;
        json ??= this.sandboxJson(l.principal, info);
        l.send("sandbox", json);
      }
    }
    for (const [id, { info }] of this.#seen) {
      if (now.has(id)) continue;
      for (const l of this.#listeners) {
        if (this.access.seesSandbox(l.principal, info)) l.send("removed", { id });
      }
    }
    this.#seen = now;
  }

  #memory(): void {
    const m = this.engine.metering();
    for (const l of this.#listeners) {
      const mine = m.sandboxes.filter((s) => {
        const info = this.#seen.get(s.id)?.info;
        return info !== undefined && this.access.seesSandbox(l.principal, info);
      });
      l.send("memory", {
        at: Date.now(),
        sandboxes: mine.map((s) => ({ id: s.id, private_bytes: s.privateBytes, shared_bytes: s.sharedBytes })),
        // The host's totals (shared pages counted once) are the admin's to see.
        ...(l.principal.kind === "admin"
          ? {
              host: {
                private_bytes: m.host.privateBytes,
                shared_bytes: m.host.sharedBytes,
                total_bytes: m.host.totalBytes,
              },
            }
          : {}),
      });
    }
  }
}

export function registerEvents(app: FastifyInstance, watch: SandboxWatch): void {
  // No automatic HEAD: it would hold a listener open and send nothing.
  app.get("/v1/events", { schema: routeSchemas.events, exposeHeadRoute: false }, async (req, reply) => {
    const principal = req.principal;
    if (!principal) return; // the onRequest hook has answered 401
    reply.hijack();
    const out = reply.raw;
    out.writeHead(200, {
      "content-type": "text/event-stream",
      "cache-control": "no-store",
      "x-accel-buffering": "no",
    });
    let beat: NodeJS.Timeout | undefined;
    let stop = () => {};
    const finish = () => {
      clearInterval(beat);
      stop();
    };
    stop = watch.listen({
      principal,
      authorization: authorizationOf(req.headers),
      send(event, data) {
        if (out.destroyed || out.writableEnded) return;
        if (out.writableLength > MAX_BUFFERED) out.destroy();
        else out.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
      },
      close: () => {
        finish();
        out.end();
      },
    });
    // A comment line now and then keeps proxies from closing an idle stream.
    beat = setInterval(() => {
      if (!out.destroyed && !out.writableEnded) out.write(": keep-alive\n\n");
    }, HEARTBEAT_MS);
    req.raw.once("close", finish);
  });
}
