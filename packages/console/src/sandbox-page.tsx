// One sandbox: what it is, its actions (fork, pause, resume, terminate,
// extend the deadline), a terminal and its files.

import { useEffect, useState } from "preact/hooks";
import { type Api, bytes, type SandboxJson } from "./api.js";
import { describe } from "./errors.js";
import { Files } from "./files.js";
import { Ports } from "./ports.js";
import { Terminal } from "./terminal.js";

function useNow(ms: number): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(t);
  }, [ms]);
  return now;
}

function left(deadlineUnix: number, now: number): string {
  const s = Math.max(0, Math.round(deadlineUnix - now / 1000));
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min` : `${Math.floor(s / 60)} min ${s % 60} s`;
}

export function SandboxPage(props: { api: Api; sandbox: SandboxJson }) {
  const { api, sandbox: s } = props;
  const [busy, setBusy] = useState("");
  const [error, setError] = useState("");
  const [note, setNote] = useState("");
  const [count, setCount] = useState(3);
  const [terminal, setTerminal] = useState(false);
  const now = useNow(1000);

  const act = async (what: string, f: () => Promise<string | undefined>) => {
    setBusy(what);
    setError("");
    try {
      setNote((await f()) ?? "");
    } catch (e) {
      setError(describe(e));
    } finally {
      setBusy("");
    }
  };
  const live = s.state === "ready" || s.state === "paused";

  return (
    <article class="sandbox" aria-labelledby="sandbox-title" data-testid="sandbox-page">
      <h2 id="sandbox-title">
        Sandbox <code>{s.id}</code>
      </h2>
      <dl class="facts">
        <dt>State</dt>
        <dd data-testid="state">{s.hibernated ? "paused (hibernated)" : s.state}</dd>
        <dt>Template</dt>
        <dd>{s.template_id}</dd>
        <dt>Parent</dt>
        <dd>{s.parent_id ?? "—"}</dd>
        <dt>Deadline</dt>
        <dd>
          {new Date(s.deadline_unix * 1000).toLocaleTimeString()} ({left(s.deadline_unix, now)} left)
        </dd>
        <dt>Accel</dt>
        <dd>{s.accel}</dd>
        <dt>Memory</dt>
        <dd>
          {bytes(s.memory.private_bytes)} private, {bytes(s.memory.shared_bytes)} shared
        </dd>
        <dt>Fork time</dt>
        <dd>{s.fork_time_ms} ms</dd>
        <dt>Network</dt>
        <dd>
          {s.network
            ? `egress ${s.network.egress ?? "?"}${s.network.allow_out?.length ? `, allow ${s.network.allow_out.join(" ")}` : ""}`
            : "none (sealed)"}
        </dd>
        {s.tenant && (
          <>
            <dt>Tenant</dt>
            <dd>{s.tenant}</dd>
          </>
        )}
      </dl>
      <div class="actions" role="group" aria-label="Actions">
        <form
          class="row"
          onSubmit={(e) => {
            e.preventDefault();
            void act("fork", async () => {
              const r = await api.fork(s.id, count);
              return `forked ${r.sandboxes.length} in ${Math.round(r.fork_time_ms)} ms`;
            });
          }}
        >
          <label>
            Children{" "}
            <input
              type="number"
              min={1}
              max={64}
              value={count}
              onInput={(e) => setCount(Number(e.currentTarget.value))}
              aria-label="Number of children"
            />
          </label>
          <button type="submit" disabled={!live || busy !== ""}>
            {busy === "fork" ? "Forking…" : "Fork"}
          </button>
        </form>
        <button
          type="button"
          disabled={s.state !== "ready" || busy !== ""}
          onClick={() => act("pause", async () => (await api.pause(s.id), "paused"))}
        >
          Pause
        </button>
        <button
          type="button"
          disabled={s.state !== "paused" || busy !== ""}
          onClick={() => act("resume", async () => (await api.resume(s.id), "resumed"))}
        >
          Resume
        </button>
        <button
          type="button"
          disabled={!live || busy !== ""}
          onClick={() =>
            act("extend", async () => {
              const remaining = Math.max(0, Math.round(s.deadline_unix - Date.now() / 1000));
              await api.setTimeout(s.id, remaining + 600);
              return "deadline extended by 10 min";
            })
          }
        >
          Extend 10 min
        </button>
        <button
          type="button"
          class="danger"
          disabled={busy !== ""}
          onClick={() => act("terminate", async () => (await api.terminate(s.id), "terminated"))}
        >
          {busy === "terminate" ? "Terminating…" : "Terminate"}
        </button>
      </div>
      {busy && <p role="status">{busy}…</p>}
      {note && !busy && <p role="status">{note}</p>}
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {live &&
        (terminal ? (
          <Terminal sandbox={s.id} token={api.token} onClose={() => setTerminal(false)} />
        ) : (
          <button type="button" onClick={() => setTerminal(true)} disabled={s.state !== "ready"}>
            Open terminal
          </button>
        ))}
      {s.state === "ready" && <Files api={api} sandbox={s.id} />}
      {s.state === "ready" && <Ports api={api} sandbox={s.id} />}
    </article>
  );
}
