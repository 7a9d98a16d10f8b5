// A one-line spinner with elapsed time on stderr while waiting; on a
// non-terminal it prints the start and end lines only.

import { formatElapsed } from "./format.js";

const FRAMES = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

export interface Spinner {
  stop(finalLine: string): void;
}

export function startSpinner(
  text: string,
  stream: NodeJS.WriteStream = process.stderr,
  interactive = Boolean(stream.isTTY),
): Spinner {
  const t0 = Date.now();
  if (!interactive) {
    stream.write(`${text}...\n`);
    return { stop: (line) => stream.write(`${line}\n`) };
  }
  let i = 0;
  const draw = () => {
    stream.write(`\r\x1b[2K${FRAMES[i++ % FRAMES.length]} ${text} (${formatElapsed(Date.now() - t0)})`);
  };
  draw();
  const timer = setInterval(draw, 100);
  return {
    stop(line) {
      clearInterval(timer);
      stream.write(`\r\x1b[2K${line}\n`);
    },
  };
}
