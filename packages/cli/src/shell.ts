// `mitos sandbox shell`: an interactive terminal in a sandbox. The local
// terminal goes to raw mode so keys (Ctrl-C included) reach the guest; window
// size changes follow; the terminal is restored however the session ends.

import type { Sandbox } from "@mitos/sdk";

export async function runShell(sandbox: Sandbox, command: string | undefined): Promise<number> {
  const stdin = process.stdin;
  const stdout = process.stdout;
  const size = () => ({ cols: stdout.columns || 80, rows: stdout.rows || 24 });
  const pty = await sandbox.createPty({
    ...(command ? { command } : {}),
    ...size(),
    onData: (d) => {
      stdout.write(d);
    },
  });
  const raw = Boolean(stdin.isTTY);
  const onData = (d: Buffer) => pty.write(d);
  let last = size();
  const onResize = () => {
    const s = size();
    if (s.cols === last.cols && s.rows === last.rows) return;
    last = s;
    pty.resize(s.cols, s.rows);
  };
  if (raw) stdin.setRawMode(true);
  stdin.on("data", onData);
  stdin.resume();
  process.on("SIGWINCH", onResize);
  stdout.on("resize", onResize);
  try {
    const { exitCode } = await pty.wait();
    return exitCode < 0 ? 1 : exitCode;
  } finally {
    process.off("SIGWINCH", onResize);
    stdout.off("resize", onResize);
    stdin.off("data", onData);
    if (raw) stdin.setRawMode(false);
    stdin.pause();
    pty.kill();
  }
}
