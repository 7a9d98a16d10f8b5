// Templates and warm pools; build a template and watch its log as it runs.

import { useEffect, useState } from "preact/hooks";
import type { Api, PoolJson, TemplateJson } from "./api.js";
import { describe } from "./errors.js";

/** A build event as one log line (docs/templates.md "Build log"). */
function logLine(e: Record<string, unknown>): string {
  switch (e.type) {
    case "phase":
      return `== ${e.phase}: ${e.message}`;
    case "step":
      return `-- step ${e.step}/${e.of}${e.cached ? " (cached)" : ""}: ${e.command}`;
    case "output":
      return String(e.data).replace(/\n$/, "");
    case "step_done":
      return `-- step ${e.step} exited ${e.exit_code} in ${e.ms} ms`;
    case "template":
      return `== built ${(e.template as TemplateJson).id}`;
    case "error": {
      const err = e.error as { code: string; message: string; remediation?: string };
      return `!! ${err.code}: ${err.message}${err.remediation ? ` — ${err.remediation}` : ""}`;
    }
    default:
      return JSON.stringify(e);
  }
}

export function Templates(props: { api: Api }) {
  const { api } = props;
  const [templates, setTemplates] = useState<TemplateJson[]>([]);
  const [pools, setPools] = useState<PoolJson[] | string>([]);
  const [error, setError] = useState("");
  const [log, setLog] = useState<string[]>([]);
  const [building, setBuilding] = useState(false);
  const [reload, setReload] = useState(0);

  useEffect(() => {
    api.templates().then(setTemplates, (e: unknown) => setError(describe(e)));
    api.pools().then(setPools, (e: unknown) => setPools(describe(e)));
    const t = setInterval(() => api.pools().then(setPools, () => {}), 5000);
    return () => clearInterval(t);
  }, [api, reload]);

  const build = async (form: FormData) => {
    const lines = (name: string) =>
      String(form.get(name) ?? "")
        .split("\n")
        .map((l) => l.trim())
        .filter(Boolean);
    const spec: Record<string, unknown> = { id: String(form.get("id") ?? "").trim() };
    const image = String(form.get("image") ?? "").trim();
    if (image) spec.image = image;
    const packages = String(form.get("packages") ?? "")
      .split(/[\s,]+/)
      .filter(Boolean);
    if (packages.length) spec.packages = packages;
    if (lines("init").length) spec.init = lines("init");
    setBuilding(true);
    setLog([]);
    try {
      await api.buildTemplate(spec, (e) => setLog((l) => [...l, logLine(e)].slice(-2000)));
    } catch (e) {
      setLog((l) => [...l, `!! ${describe(e)}`]);
    } finally {
      setBuilding(false);
      setReload((n) => n + 1);
    }
  };
  const pool = (id: string) => (typeof pools === "string" ? undefined : pools.find((p) => p.template === id));

  return (
    <section aria-labelledby="templates-title">
      <h2 id="templates-title">Templates and pools</h2>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {typeof pools === "string" && <p class="note">Pools: {pools}</p>}
      <table>
        <thead>
          <tr>
            <th scope="col">Template</th>
            <th scope="col">Ready</th>
            <th scope="col">vCPU / RAM</th>
            <th scope="col">Built in</th>
            <th scope="col">Warm / target</th>
            <th scope="col">Claimed</th>
          </tr>
        </thead>
        <tbody>
          {templates.map((t) => {
            const p = pool(t.id);
            return (
              <tr key={t.id} data-template={t.id}>
                <td>
                  <code>{t.id}</code>
                  {t.image ? ` (${t.image})` : ""}
                </td>
                <td>{t.ready ? "yes" : "building"}</td>
                <td>{t.resources ? `${t.resources.vcpu_count} / ${t.resources.mem_size_mib} MiB` : "—"}</td>
                <td>{t.creation_time_ms ? `${(t.creation_time_ms / 1000).toFixed(1)} s` : "—"}</td>
                <td>{p ? `${p.warm} / ${p.target}` : "—"}</td>
                <td>{p ? p.claimed : "—"}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
      <h3>Build a template</h3>
      <form
        class="build"
        onSubmit={(e) => {
          e.preventDefault();
          void build(new FormData(e.currentTarget));
        }}
      >
        <label>
          Id <input name="id" required pattern="[A-Za-z0-9][A-Za-z0-9_\-]{0,63}" />
        </label>
        <label>
          OCI image (optional) <input name="image" placeholder="docker.io/library/python:3.12-slim" />
        </label>
        <label>
          Debian packages <input name="packages" placeholder="curl git" />
        </label>
        <label>
          Init commands (one a line) <textarea name="init" rows={3} />
        </label>
        <button type="submit" disabled={building}>
          {building ? "Building…" : "Build"}
        </button>
      </form>
      {log.length > 0 && (
        <pre class="log" aria-live="polite" data-testid="build-log">
          {log.join("\n")}
        </pre>
      )}
    </section>
  );
}
