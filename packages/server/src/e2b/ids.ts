// E2B sandbox ids must match ^[a-z0-9]+$ (E2B-COMPAT.md §1): the SDK builds
// `<port>-<id>.<domain>` hosts from them. Mitos ids are `sb-<hex>` by
// default, so the E2B id drops the dash; ids already E2B-shaped pass as
// they are, and other ids are not reachable through the E2B front door.

import type { Engine, SandboxInfo } from "@mitos/engine";

export const E2B_ID_RE = /^[a-z0-9]{1,64}$/;
const DEFAULT_ID_RE = /^sb-([0-9a-f]+)$/;

/** The E2B id of a Mitos sandbox, or undefined when it has none. */
export function toE2bId(id: string): string | undefined {
  const m = DEFAULT_ID_RE.exec(id);
  if (m) return `sb${m[1]}`;
  return E2B_ID_RE.test(id) ? id : undefined;
}

/** The Mitos id an E2B id names, when such a sandbox exists (an exact id wins). */
export function fromE2bId(engine: Engine, e2bId: string): SandboxInfo | undefined {
  if (!E2B_ID_RE.test(e2bId)) return undefined;
  const all = engine.list();
  const exact = all.find((s) => s.id === e2bId);
  if (exact) return exact;
  const m = /^sb([0-9a-f]+)$/.exec(e2bId);
  return m ? all.find((s) => s.id === `sb-${m[1]}`) : undefined;
}
