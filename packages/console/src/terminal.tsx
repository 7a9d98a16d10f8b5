// A terminal in a sandbox: xterm.js over mitosd's WebSocket exec route (API.md
// "Runtime": GET /sandbox.v1.Sandbox/Exec, subprotocol connect.sandbox.v1, one
// Connect envelope per message). A browser cannot set Authorization on a
// WebSocket, so the token rides in a second subprotocol (docs/console.md).

import { create, fromJson, type JsonValue, type MessageInitShape, toJson } from "@bufbuild/protobuf";
import { encodeEnvelope } from "@connectrpc/connect/protocol";
import { ExecRequestSchema, ExecResponseSchema } from "@mitos/proto";
import { FitAddon } from "@xterm/addon-fit";
import { Terminal as XTerm } from "@xterm/xterm";
import "@xterm/xterm/css/xterm.css";
import { useEffect, useRef, useState } from "preact/hooks";

const EXEC_SUBPROTOCOL = "connect.sandbox.v1";
const BEARER_SUBPROTOCOL = "base64url.bearer.mitos.";
const END_STREAM = 0x02;

function base64url(s: string): string {
  const b = btoa(String.fromCharCode(...new TextEncoder().encode(s)));
  return b.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export function Terminal(props: { sandbox: string; token: string | null; onClose: () => void }) {
  const host = useRef<HTMLDivElement>(null);
  const [status, setStatus] = useState("connecting…");

  useEffect(() => {
    const el = host.current;
    if (!el) return;
    const term = new XTerm({ cursorBlink: true, fontFamily: "monospace", fontSize: 14, scrollback: 5000 });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(el);
    fit.fit();
    const url = `${location.origin.replace(/^http/, "ws")}/sandbox.v1.Sandbox/Exec?sandbox=${encodeURIComponent(props.sandbox)}`;
    const protocols = [EXEC_SUBPROTOCOL, ...(props.token ? [BEARER_SUBPROTOCOL + base64url(props.token)] : [])];
    const ws = new WebSocket(url, protocols);
    ws.binaryType = "arraybuffer";
    const send = (input: MessageInitShape<typeof ExecRequestSchema>["input"]) => {
      if (ws.readyState !== WebSocket.OPEN) return;
      const json = toJson(ExecRequestSchema, create(ExecRequestSchema, { input }));
      ws.send(encodeEnvelope(0, new TextEncoder().encode(JSON.stringify(json))));
    };
    ws.onopen = () => {
      setStatus("connected");
      send({
        case: "open",
        value: {
          command: "",
          args: [],
          env: [],
          cwd: "",
          timeoutSeconds: 0,
          pty: { term: "xterm-256color", size: { cols: term.cols, rows: term.rows } },
        },
      });
      term.focus();
    };
    ws.onmessage = (m) => {
      const data = new Uint8Array(m.data as ArrayBuffer);
      const json = JSON.parse(new TextDecoder().decode(data.subarray(5))) as JsonValue & {
        error?: { code: string; message: string };
      };
      if (data[0] === END_STREAM) {
        setStatus(json.error ? `ended: ${json.error.code}: ${json.error.message}` : "ended");
        return;
      }
      const r = fromJson(ExecResponseSchema, json);
      if (r.event.case === "stdout" || r.event.case === "stderr") term.write(r.event.value);
      else if (r.event.case === "exit") setStatus(`exited with ${r.event.value.exitCode}`);
    };
    ws.onerror = () => setStatus("the terminal connection failed (is the sandbox running and the token right?)");
    ws.onclose = (e) => setStatus((s) => (s === "connected" || s.startsWith("connecting") ? `closed (${e.code})` : s));
    const input = term.onData((d) => send({ case: "stdin", value: new TextEncoder().encode(d) }));
    const resized = term.onResize(({ cols, rows }) => send({ case: "resize", value: { cols, rows } }));
    const observer = new ResizeObserver(() => fit.fit());
    observer.observe(el);
    return () => {
      observer.disconnect();
      input.dispose();
      resized.dispose();
      ws.close();
      term.dispose();
    };
  }, [props.sandbox, props.token]);

  return (
    <section class="terminal" aria-label={`Terminal in ${props.sandbox}`}>
      <div class="bar">
        <span role="status" data-testid="terminal-status">
          Terminal: {status}
        </span>
        <button type="button" onClick={props.onClose}>
          Close terminal
        </button>
      </div>
      <div class="xterm-host" ref={host} data-testid="terminal" />
    </section>
  );
}
