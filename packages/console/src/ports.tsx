// Reach a server in the sandbox (docs/ports.md): expose a guest port, get its
// URLs and the port's own token, which a browser tab cannot send by itself.

import { useState } from "preact/hooks";
import type { Api } from "./api.js";
import { describe } from "./errors.js";

export function Ports(props: { api: Api; sandbox: string }) {
  const [port, setPort] = useState(8000);
  const [shown, setShown] = useState<Awaited<ReturnType<Api["expose"]>>[]>([]);
  const [error, setError] = useState("");
  return (
    <section class="ports" aria-label="Ports">
      <h3>Ports</h3>
      <form
        class="row"
        onSubmit={(e) => {
          e.preventDefault();
          props.api.expose(props.sandbox, port).then(
            (p) => {
              setShown((s) => [...s.filter((x) => x.port !== p.port), p]);
              setError("");
            },
            (err: unknown) => setError(describe(err)),
          );
        }}
      >
        <label>
          Guest port{" "}
          <input
            type="number"
            min={1}
            max={65535}
            value={port}
            onInput={(e) => setPort(Number(e.currentTarget.value))}
            aria-label="Guest port"
          />
        </label>
        <button type="submit">Expose</button>
      </form>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {shown.length > 0 && (
        <ul>
          {shown.map((p) => (
            <li key={p.port}>
              <code>{p.url}</code> (or <code>http://{p.host}/</code>); send{" "}
              <code>
                {p.token_header}: {p.token}
              </code>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}
