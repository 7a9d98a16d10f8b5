// The host: sandboxes by state, memory over time (shared pages counted once,
// sampled from the live events since this page opened) and the fork latency
// histogram from /metrics.

import { useEffect, useState } from "preact/hooks";
import { type Api, bytes, type SandboxJson } from "./api.js";
import { describe } from "./errors.js";
import type { MemorySample } from "./live.js";
import { type Bucket, histogram } from "./prometheus.js";

function MemoryChart({ history }: { history: MemorySample[] }) {
  const points = history.filter((h) => h.host);
  if (points.length < 2) return <p class="note">Collecting memory samples (one every 3 s)…</p>;
  const w = 600;
  const h = 160;
  const max = Math.max(...points.map((p) => p.host?.total_bytes ?? 0), 1);
  const t0 = points[0]?.at ?? 0;
  const span = Math.max(1, (points[points.length - 1]?.at ?? 1) - t0);
  const line = (f: (p: MemorySample) => number) =>
    points.map((p) => `${(((p.at - t0) / span) * w).toFixed(1)},${(h - (f(p) / max) * h).toFixed(1)}`).join(" ");
  const last = points[points.length - 1]?.host;
  return (
    <figure>
      <svg viewBox={`0 0 ${w} ${h}`} role="img" aria-label={`Host memory over time, now ${bytes(last?.total_bytes ?? 0)}`}>
        <polyline class="total" fill="none" points={line((p) => p.host?.total_bytes ?? 0)} />
        <polyline class="shared" fill="none" points={line((p) => p.host?.shared_bytes ?? 0)} />
      </svg>
      <figcaption>
        Now: {bytes(last?.total_bytes ?? 0)} in all ({bytes(last?.private_bytes ?? 0)} private,{" "}
        {bytes(last?.shared_bytes ?? 0)} shared, counted once); peak on this chart {bytes(max)}. Solid line: all
        sandbox memory; dashed: the shared part.
      </figcaption>
    </figure>
  );
}

function Histogram({ buckets }: { buckets: Bucket[] }) {
  const total = buckets.reduce((n, b) => n + b.count, 0);
  if (total === 0) return <p class="note">No forks yet.</p>;
  const max = Math.max(...buckets.map((b) => b.count));
  return (
    <table class="histogram" aria-label="Fork latency histogram">
      <thead>
        <tr>
          <th scope="col">Up to</th>
          <th scope="col">Forks</th>
          <th scope="col" aria-hidden="true" />
        </tr>
      </thead>
      <tbody>
        {buckets.map((b) => (
          <tr key={b.le}>
            <td>{b.le === "+Inf" ? "more" : `${Number(b.le) * 1000} ms`}</td>
            <td>{b.count}</td>
            <td aria-hidden="true">
              <span class="bar" style={{ width: `${(b.count / max) * 100}%` }} />
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function Host(props: { api: Api; sandboxes: Map<string, SandboxJson>; history: MemorySample[] }) {
  const [buckets, setBuckets] = useState<Bucket[]>([]);
  const [error, setError] = useState("");
  useEffect(() => {
    const load = () =>
      props.api.metrics().then(
        (t) => {
          setBuckets(histogram(t, "mitos_fork_seconds"));
          setError("");
        },
        (e: unknown) => setError(describe(e)),
      );
    void load();
    const t = setInterval(load, 5000);
    return () => clearInterval(t);
  }, [props.api]);
  const states = new Map<string, number>();
  for (const s of props.sandboxes.values()) states.set(s.state, (states.get(s.state) ?? 0) + 1);

  return (
    <section aria-labelledby="host-title">
      <h2 id="host-title">Host</h2>
      <h3>Sandboxes by state</h3>
      <ul class="states">
        {[...states.entries()].map(([state, n]) => (
          <li key={state}>
            <span class={`dot ${state}`} aria-hidden="true" /> {state}: {n}
          </li>
        ))}
        {states.size === 0 && <li>none</li>}
      </ul>
      <h3>Memory over time</h3>
      <MemoryChart history={props.history} />
      <h3>Fork latency</h3>
      {error ? (
        <p class="note">The host's figures need an admin token: {error}</p>
      ) : (
        <Histogram buckets={buckets} />
      )}
    </section>
  );
}
