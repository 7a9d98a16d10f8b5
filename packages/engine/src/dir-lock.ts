// One engine per data dir: two would re-adopt, reap and journal the same
// VMs. The lock is a file naming the holder's pid and process start time; a
// holder that is gone (crash, SIGKILL) leaves a stale lock the next engine
// takes over.

import fs from "node:fs";
import path from "node:path";
import { MitosError } from "./errors.js";
import { processStartTime } from "./vm.js";

export class DataDirLock {
  private constructor(private readonly file: string) {}

  static take(dataDir: string): DataDirLock {
    const file = path.join(dataDir, "engine.lock");
    const mine = `${process.pid} ${processStartTime(process.pid) ?? 0}\n`;
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        fs.writeFileSync(file, mine, { flag: "wx", mode: 0o600 });
        return new DataDirLock(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      }
      const [pid, start] = fs.readFileSync(file, "utf8").trim().split(" ").map(Number);
      if (pid !== undefined && pid > 0 && processStartTime(pid) === start) {
        throw new MitosError("conflict", `data dir ${dataDir} is in use by another mitosd (pid ${pid})`, {
          remediation: `Stop that mitosd first, or give this one another data dir (--data-dir / MITOS_DATA_DIR). The lock is ${file}.`,
          context: { data_dir: dataDir, pid },
        });
      }
      fs.rmSync(file, { force: true }); // stale: its holder is gone
    }
    throw new MitosError("conflict", `could not lock data dir ${dataDir}`, {
      remediation: "Another mitosd is starting on it at the same moment; start only one.",
    });
  }

  release(): void {
    fs.rmSync(this.file, { force: true });
  }
}
