// The file browser of a sandbox: list (the runtime's List call), view a text
// file, download and upload (GET/PUT /v1/sandboxes/{id}/files).

import type { FileInfo } from "@mitos/proto";
import { useEffect, useState } from "preact/hooks";
import { type Api, bytes } from "./api.js";
import { describe } from "./errors.js";

const VIEW_LIMIT = 256 << 10;

function join(dir: string, name: string): string {
  return dir.endsWith("/") ? dir + name : `${dir}/${name}`;
}

function parentOf(dir: string): string {
  const i = dir.replace(/\/+$/, "").lastIndexOf("/");
  return i <= 0 ? "/" : dir.slice(0, i);
}

export function Files(props: { api: Api; sandbox: string }) {
  const { api, sandbox } = props;
  const [dir, setDir] = useState("/root");
  const [entries, setEntries] = useState<FileInfo[]>([]);
  const [error, setError] = useState("");
  const [note, setNote] = useState("");
  const [view, setView] = useState<{ path: string; text: string } | null>(null);
  const [reload, setReload] = useState(0);

  useEffect(() => {
    let live = true;
    api.runtime
      .list({ parent: dir }, { headers: { "x-sandbox-id": sandbox } })
      .then((r) => {
        if (!live) return;
        setEntries([...r.entries].sort((a, b) => Number(b.isDir) - Number(a.isDir) || a.name.localeCompare(b.name)));
        setError("");
      })
      .catch((e: unknown) => {
        if (!live) return;
        // The old folder's names would be joined to the new folder's path.
        setEntries([]);
        setError(describe(e));
      });
    return () => {
      live = false;
    };
  }, [api, sandbox, dir, reload]);

  const download = async (path: string) => {
    try {
      const blob = await api.download(sandbox, path);
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = path.split("/").pop() || "file";
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
    } catch (e) {
      setError(describe(e));
    }
  };
  const open = async (path: string, size: number) => {
    if (size > VIEW_LIMIT) return setError(`${path} is ${bytes(size)}: download it to view (the viewer takes ${bytes(VIEW_LIMIT)})`);
    try {
      setView({ path, text: await (await api.download(sandbox, path)).text() });
    } catch (e) {
      setError(describe(e));
    }
  };
  const upload = async (files: FileList | null) => {
    for (const f of Array.from(files ?? [])) {
      const path = join(dir, f.name);
      try {
        const n = await api.upload(sandbox, path, f);
        setNote(`uploaded ${path} (${bytes(n)})`);
      } catch (e) {
        setError(describe(e));
      }
    }
    setReload((n) => n + 1);
  };

  return (
    <section class="files" aria-label="Files">
      <h3>Files</h3>
      <form
        class="row"
        onSubmit={(e) => {
          e.preventDefault();
          const v = (new FormData(e.currentTarget).get("dir") as string) || "/";
          setDir(v);
        }}
      >
        <label>
          Folder <input name="dir" value={dir} key={dir} aria-label="Folder path" />
        </label>
        <button type="submit">Go</button>
        <button type="button" onClick={() => setDir(parentOf(dir))} disabled={dir === "/"}>
          Up
        </button>
        <label class="upload">
          Upload <input type="file" multiple data-testid="upload" onChange={(e) => upload(e.currentTarget.files)} />
        </label>
      </form>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {note && <p role="status">{note}</p>}
      <table>
        <thead>
          <tr>
            <th scope="col">Name</th>
            <th scope="col">Size</th>
            <th scope="col">Actions</th>
          </tr>
        </thead>
        <tbody>
          {entries.map((f) => {
            const path = join(dir, f.name);
            return (
              <tr key={f.name}>
                <td>
                  {f.isDir ? (
                    <button type="button" class="link" onClick={() => setDir(path)}>
                      {f.name}/
                    </button>
                  ) : (
                    f.name
                  )}
                </td>
                <td>{f.isDir ? "" : bytes(Number(f.size))}</td>
                <td>
                  {!f.isDir && (
                    <>
                      <button type="button" onClick={() => open(path, Number(f.size))} aria-label={`View ${f.name}`}>
                        View
                      </button>{" "}
                      <button type="button" onClick={() => download(path)} aria-label={`Download ${f.name}`}>
                        Download
                      </button>
                    </>
                  )}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
      {view && (
        <figure class="viewer">
          <figcaption>
            {view.path}{" "}
            <button type="button" onClick={() => setView(null)}>
              Close
            </button>
          </figcaption>
          <pre>{view.text}</pre>
        </figure>
      )}
    </section>
  );
}
