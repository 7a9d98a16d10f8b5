// How `mitos sandbox run` shows a cell's results in a terminal: the value's
// text, and for images a line saying where the file went (or how to keep it).

import fs from "node:fs";
import path from "node:path";
import type { Result } from "@mitos/sdk";

const IMAGE_EXT: Record<string, string> = { "image/png": "png", "image/jpeg": "jpg", "image/svg+xml": "svg" };

/** One result as terminal text; images are written under saveDir when given. */
export function renderResult(r: Result, n: number, saveDir?: string): string {
  const lines: string[] = [];
  for (const [mime, ext] of Object.entries(IMAGE_EXT)) {
    const v = r.data[mime];
    if (v === undefined) continue;
    const bytes = mime === "image/svg+xml" ? Buffer.from(v) : Buffer.from(v, "base64");
    if (saveDir) {
      fs.mkdirSync(saveDir, { recursive: true });
      const file = path.join(saveDir, `result-${n}.${ext}`);
      fs.writeFileSync(file, bytes);
      lines.push(`[${mime}, ${bytes.length} bytes: ${file}]`);
    } else {
      lines.push(`[${mime}, ${bytes.length} bytes; keep it with --save-images DIR]`);
    }
  }
  const hasImage = lines.length > 0;
  // A figure's text/plain is "<Figure size …>": noise next to the image line.
  if (r.text !== undefined && (!hasImage || r.isMainResult)) lines.unshift(r.text);
  else if (!hasImage && r.html !== undefined) lines.push(r.html);
  return lines.length > 0 ? `${lines.join("\n")}\n` : "";
}
