// The one thing the console reads from /metrics: a histogram's buckets.

export interface Bucket {
  le: string;
  count: number;
}

/** The per-bucket counts of a Prometheus histogram (its cumulative `_bucket` lines, summed over labels). */
export function histogram(text: string, name: string): Bucket[] {
  const cumulative = new Map<string, number>();
  const re = new RegExp(`^${name}_bucket\\{(?:[^}]*,)?le="([^"]+)"[^}]*\\}\\s+([0-9.eE+-]+)`, "gm");
  for (const m of text.matchAll(re)) {
    const le = m[1] as string;
    cumulative.set(le, (cumulative.get(le) ?? 0) + Number(m[2]));
  }
  const sorted = [...cumulative.entries()].sort(([a], [b]) =>
    a === "+Inf" ? 1 : b === "+Inf" ? -1 : Number(a) - Number(b),
  );
  return sorted.map(([le, n], i) => ({ le, count: n - (i ? (sorted[i - 1]?.[1] ?? 0) : 0) }));
}
