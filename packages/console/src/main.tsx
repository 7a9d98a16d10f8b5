// The Mitos console: sign in, the live fork tree, a sandbox's page, templates
// and pools, the host. Calls only mitosd's public HTTP API (docs/console.md).

import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { Api, ApiError, type SandboxJson, type TemplateJson } from "./api.js";
import { describe } from "./errors.js";
import { Host } from "./host.js";
import { type LiveState, watch } from "./live.js";
import { SandboxPage } from "./sandbox-page.js";
import "./style.css";
import { Templates } from "./templates.js";
import { ForkTree } from "./tree.js";

type View = "sandboxes" | "templates" | "host";

function viewOf(hash: string): View {
  const v = hash.replace(/^#\/?/, "");
  return v === "templates" || v === "host" ? v : "sandboxes";
}

/** Checks a token with a call that needs one; the error says what to do. */
async function check(token: string | null): Promise<Api> {
  // Sandbox tokens are `msb_<id>.<mac>` (docs/security.md): they reach one sandbox's runtime only.
  if (token?.startsWith("msb_")) {
    throw new Error("That is a sandbox's token: it reaches one sandbox's runtime, not the console. Use the daemon's token or an API key.");
  }
  const api = new Api(token);
  try {
    await api.sandboxes();
    return api;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      throw new Error(
        `mitosd refused this token (${e.code}). Paste the daemon's token or an API key. mitosd says: ${e.remediation || e.message}`,
      );
    }
    throw new Error(`Could not sign in: ${describe(e)}`);
  }
}

function SignIn(props: { error: string; onToken: (token: string) => void }) {
  const [token, setToken] = useState("");
  return (
    <main class="signin">
      <h1>Mitos</h1>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          if (token.trim()) props.onToken(token.trim());
        }}
      >
        <label for="token">API token</label>
        <input
          id="token"
          name="token"
          type="password"
          autocomplete="off"
          value={token}
          onInput={(e) => setToken(e.currentTarget.value)}
          aria-describedby="token-help"
          required
        />
        <p id="token-help" class="note">
          The daemon's token (its path is printed when mitosd starts; <code>/var/lib/mitos/token</code> by default) or
          an API key (<code>mitos key create</code>). Kept in this tab's session storage only.
        </p>
        <button type="submit">Sign in</button>
        {props.error && (
          <p class="error" role="alert" data-testid="signin-error">
            {props.error}
          </p>
        )}
      </form>
    </main>
  );
}

function Sandboxes(props: { api: Api; live: LiveState }) {
  const { api, live } = props;
  const [selected, setSelected] = useState<string | null>(null);
  const [templates, setTemplates] = useState<TemplateJson[]>([]);
  const [template, setTemplate] = useState("python");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");
  useEffect(() => {
    api.templates().then(setTemplates, (e: unknown) => setError(describe(e)));
  }, [api]);
  const create = async () => {
    setBusy(true);
    setError("");
    try {
      setSelected((await api.create(template)).id);
    } catch (e) {
      setError(describe(e));
    } finally {
      setBusy(false);
    }
  };
  const current: SandboxJson | undefined = selected ? live.sandboxes.get(selected) : undefined;
  return (
    <div class="split">
      <section class="left" aria-labelledby="tree-title">
        <h2 id="tree-title">
          Sandboxes <span class="count">{live.sandboxes.size}</span>
          <span class={`live ${live.connected ? "on" : "off"}`} role="status">
            {live.connected ? "live" : `reconnecting…${live.error ? ` (${live.error})` : ""}`}
          </span>
        </h2>
        <form
          class="row"
          onSubmit={(e) => {
            e.preventDefault();
            void create();
          }}
        >
          <label>
            Template{" "}
            <select value={template} onChange={(e) => setTemplate(e.currentTarget.value)} aria-label="Template">
              {(templates.length ? templates.map((t) => t.id) : ["python"]).map((id) => (
                <option key={id} value={id}>
                  {id}
                </option>
              ))}
            </select>
          </label>
          <button type="submit" disabled={busy}>
            {busy ? "Creating…" : "New sandbox"}
          </button>
        </form>
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <ForkTree sandboxes={live.sandboxes} selected={selected} onSelect={setSelected} />
      </section>
      <section class="right" aria-label="Selected sandbox">
        {current ? (
          <SandboxPage key={current.id} api={api} sandbox={current} />
        ) : (
          <p class="empty">
            {selected ? `Sandbox ${selected} is gone.` : "Select a sandbox in the tree to see it, open a terminal or browse its files."}
          </p>
        )}
      </section>
    </div>
  );
}

function App() {
  const [api, setApi] = useState<Api | null>(null);
  const [error, setError] = useState("");
  const [starting, setStarting] = useState(true);
  const [noAuth, setNoAuth] = useState(false);
  const [view, setView] = useState<View>(viewOf(location.hash));
  const [live, setLive] = useState<LiveState>({ sandboxes: new Map(), connected: false, error: "", history: [] });

  const signIn = (token: string | null) =>
    check(token).then(
      (a) => {
        Api.save(token);
        setError("");
        setApi(a);
      },
      (e: Error) => {
        Api.save(null);
        setError(e.message);
      },
    );

  useEffect(() => {
    const onHash = () => setView(viewOf(location.hash));
    window.addEventListener("hashchange", onHash);
    new Api(null)
      .health()
      .then(async (h) => {
        if (h.auth === "none") {
          setNoAuth(true);
          await signIn(null);
        } else if (Api.saved()) {
          await signIn(Api.saved());
        }
      })
      .catch((e: unknown) => setError(`mitosd is not answering: ${describe(e)}`))
      .finally(() => setStarting(false));
    return () => window.removeEventListener("hashchange", onHash);
  }, []);

  useEffect(() => {
    if (!api) return;
    return watch(api, setLive);
  }, [api]);

  if (starting) return <p class="note">Connecting to mitosd…</p>;
  if (!api) return <SignIn error={error} onToken={(t) => void signIn(t)} />;
  return (
    <>
      <header>
        <h1>Mitos</h1>
        <nav aria-label="Sections">
          {(["sandboxes", "templates", "host"] as const).map((v) => (
            <a key={v} href={`#/${v}`} aria-current={view === v ? "page" : undefined}>
              {v[0]?.toUpperCase() + v.slice(1)}
            </a>
          ))}
        </nav>
        {!noAuth && (
          <button
            type="button"
            onClick={() => {
              Api.save(null);
              setApi(null);
            }}
          >
            Sign out
          </button>
        )}
      </header>
      <main>
        {view === "sandboxes" && <Sandboxes api={api} live={live} />}
        {view === "templates" && <Templates api={api} />}
        {view === "host" && <Host api={api} sandboxes={live.sandboxes} history={live.history} />}
      </main>
    </>
  );
}

const root = document.getElementById("app");
if (root) render(<App />, root);
