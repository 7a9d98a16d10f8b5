// The live sandbox table, kept from mitosd's GET /v1/events (server-sent
// events, read with fetch so the token goes in a header, not the URL).
// Reconnects with backoff; every reconnect starts from a fresh snapshot.

import { createParser } from "eventsource-parser";
import type { Api, SandboxJson } from "./api.js";

export interface MemorySample {
  at: number;
  host?: { private_bytes: number; shared_bytes: number; total_bytes: number };
}

export interface LiveState {
  sandboxes: Map<string, SandboxJson>;
  connected: boolean;
  /** Why the stream dropped last (a revoked key, mitosd gone), until it is back. */
  error: string;
  /** Host memory over time, since this page opened (newest last). */
  history: MemorySample[];
}

const HISTORY = 600;

export function watch(api: Api, onChange: (s: LiveState) => void): () => void {
  const state: LiveState = { sandboxes: new Map(), connected: false, error: "", history: [] };
  const stop = new AbortController();
  const emit = () => onChange({ ...state, sandboxes: new Map(state.sandboxes) });

  const handle = (event: string | undefined, data: string) => {
    const v = JSON.parse(data) as Record<string, unknown>;
    if (event === "snapshot") {
      state.sandboxes = new Map((v.sandboxes as SandboxJson[]).map((s) => [s.id, s]));
    } else if (event === "sandbox") {
      const s = v as unknown as SandboxJson;
      // Keep the last memory reading: a state change carries a fresh one only when ready.
      const old = state.sandboxes.get(s.id);
      state.sandboxes.set(s.id, old && s.memory.private_bytes === 0 ? { ...s, memory: old.memory } : s);
    } else if (event === "removed") {
      state.sandboxes.delete(v.id as string);
    } else if (event === "memory") {
      for (const m of v.sandboxes as Array<{ id: string; private_bytes: number; shared_bytes: number }>) {
        const s = state.sandboxes.get(m.id);
        if (s)
          state.sandboxes.set(m.id, { ...s, memory: { private_bytes: m.private_bytes, shared_bytes: m.shared_bytes } });
      }
      state.history = [
        ...state.history,
        { at: v.at as number, ...(v.host ? { host: v.host as MemorySample["host"] } : {}) },
      ].slice(-HISTORY);
    }
    emit();
  };

  void (async () => {
    for (let attempt = 0; !stop.signal.aborted; attempt++) {
      try {
        const res = await fetch("/v1/events", {
          headers: api.headers({ accept: "text/event-stream" }),
          signal: stop.signal,
        });
        if (!res.ok || !res.body) {
          const body = (await res.json().catch(() => ({}))) as { error?: { message?: string } };
          throw new Error(body.error?.message ?? `GET /v1/events answered HTTP ${res.status}`);
        }
        attempt = 0;
        state.connected = true;
        state.error = "";
        emit();
        const parser = createParser({ onEvent: (e) => handle(e.event, e.data) });
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          parser.feed(decoder.decode(value, { stream: true }));
        }
      } catch (err) {
        if (stop.signal.aborted) return;
        state.error = (err as Error).message;
      }
      state.connected = false;
      emit();
      await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** attempt)));
    }
  })();
  return () => stop.abort();
}
