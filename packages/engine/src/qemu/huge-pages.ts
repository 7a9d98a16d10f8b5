// QEMU without transparent huge pages (docs/decisions/0032): QEMU madvises
// every RAM block and TCG's code buffer for huge pages, so a 2 MiB ACPI blob
// holding a few KiB costs each VM a whole 2 MiB page. mitosd starts QEMU
// through a small static helper that sets PR_SET_THP_DISABLE, which QEMU and
// everything between (nice, nsenter, setpriv) inherit across exec.

import fs from "node:fs";
import path from "node:path";
import { guestDir } from "../config.js";

/** Built by `npm run build` (make -C packages/engine/native). */
export const THP_OFF_HELPER = path.join(guestDir.root, "packages", "engine", "native", "build", "mitos-thp-off");

/**
 * The helper to start QEMU through, or undefined to start it as is:
 * `MITOS_QEMU_THP=on` keeps huge pages (read at each start, so a benchmark
 * can compare both), and a checkout whose helper was not built has none.
 */
export function thpOffHelper(
  env: NodeJS.ProcessEnv = process.env,
  helper: string = THP_OFF_HELPER,
): string | undefined {
  if (env.MITOS_QEMU_THP === "on") return undefined;
  try {
    fs.accessSync(helper, fs.constants.X_OK);
    return helper;
  } catch {
    return undefined;
  }
}

/** What the engine logs when it opens: whether QEMU gets huge pages, and why. */
export function thpLogLine(env: NodeJS.ProcessEnv = process.env): [string, Record<string, string>] {
  const helper = thpOffHelper(env);
  if (helper) return ["QEMU starts without transparent huge pages", { helper }];
  const why = env.MITOS_QEMU_THP === "on" ? "MITOS_QEMU_THP=on" : "helper not built (npm run build)";
  return ["QEMU starts with transparent huge pages", { helper: THP_OFF_HELPER, why }];
}
