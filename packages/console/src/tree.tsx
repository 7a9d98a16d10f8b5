// The fork tree: every live sandbox under its parent, roots under their
// template; coloured by state, labelled with private memory. Wide fans stay
// readable: a node shows its first children and a count of the rest, and any
// node folds away. Arrow keys move between nodes (WAI-ARIA tree pattern, simplified).

import { useState } from "preact/hooks";
import { bytes, type SandboxJson } from "./api.js";

const SHOWN = 12;

interface Props {
  sandboxes: Map<string, SandboxJson>;
  selected: string | null;
  onSelect: (id: string) => void;
}

export function ForkTree({ sandboxes, selected, onSelect }: Props) {
  const [folded, setFolded] = useState<Set<string>>(new Set());
  const [expanded, setExpanded] = useState<Set<string>>(new Set());
  const children = new Map<string, SandboxJson[]>();
  const byTemplate = new Map<string, SandboxJson[]>();
  for (const s of sandboxes.values()) {
    if (s.parent_id && sandboxes.has(s.parent_id)) {
      children.set(s.parent_id, [...(children.get(s.parent_id) ?? []), s]);
    } else {
      byTemplate.set(s.template_id, [...(byTemplate.get(s.template_id) ?? []), s]);
    }
  }
  const order = (a: SandboxJson, b: SandboxJson) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id);
  const toggle = (set: Set<string>, update: (s: Set<string>) => void, id: string) => {
    const next = new Set(set);
    if (next.has(id)) next.delete(id);
    else next.add(id);
    update(next);
  };
  const descendants = (id: string): number =>
    (children.get(id) ?? []).reduce((n, c) => n + 1 + descendants(c.id), 0);

  const list = (items: SandboxJson[], key: string, depth: number) => {
    const sorted = [...items].sort(order);
    const all = expanded.has(key);
    const shown = all ? sorted : sorted.slice(0, SHOWN);
    return (
      <ul role="group">
        {shown.map((s) => node(s, depth))}
        {sorted.length > shown.length && (
          <li role="none">
            <button type="button" class="more" onClick={() => toggle(expanded, setExpanded, key)}>
              show {sorted.length - shown.length} more
            </button>
          </li>
        )}
      </ul>
    );
  };

  const node = (s: SandboxJson, depth: number) => {
    const kids = children.get(s.id) ?? [];
    const open = !folded.has(s.id);
    return (
      <li
        key={s.id}
        role="treeitem"
        aria-level={depth}
        aria-selected={selected === s.id}
        aria-expanded={kids.length ? open : undefined}
        data-id={s.id}
        data-parent={s.parent_id ?? ""}
        data-state={s.state}
      >
        <div class={`node ${selected === s.id ? "selected" : ""}`}>
          {kids.length > 0 ? (
            <button
              type="button"
              class="fold"
              aria-label={`${open ? "Fold" : "Unfold"} ${s.id} (${descendants(s.id)} below)`}
              onClick={() => toggle(folded, setFolded, s.id)}
            >
              {open ? "▾" : "▸"}
            </button>
          ) : (
            <span class="fold" aria-hidden="true" />
          )}
          <button type="button" class="pick" data-node={s.id} onClick={() => onSelect(s.id)} onKeyDown={moveFocus}>
            <span class={`dot ${s.state}`} aria-hidden="true" />
            <span class="id">{s.id}</span>
            <span class="state">{s.hibernated ? "hibernated" : s.state}</span>
            <span class="mem" title="private memory (pages this sandbox alone holds)">
              {s.memory.private_bytes ? bytes(s.memory.private_bytes) : "—"}
            </span>
            {kids.length > 0 && <span class="count">{descendants(s.id)} below</span>}
          </button>
        </div>
        {kids.length > 0 && open && list(kids, s.id, depth + 1)}
      </li>
    );
  };

  if (sandboxes.size === 0) return <p class="empty">No sandboxes yet. Create one above.</p>;
  return (
    <div class="tree" role="tree" aria-label="Fork tree">
      {[...byTemplate.entries()]
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([template, roots]) => (
          <div key={template} class="template-group" data-template={template}>
            <h3>
              template <code>{template}</code>
            </h3>
            {list(roots, `template:${template}`, 1)}
          </div>
        ))}
    </div>
  );
}

/** Up and down arrows walk the visible nodes in order. */
function moveFocus(e: KeyboardEvent) {
  if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
  const all = Array.from(document.querySelectorAll<HTMLButtonElement>(".tree button.pick"));
  const i = all.indexOf(e.currentTarget as HTMLButtonElement);
  const next = all[e.key === "ArrowDown" ? i + 1 : i - 1];
  if (next) {
    e.preventDefault();
    next.focus();
  }
}
