// Engine errors carry the API's error codes (shared/design API.md) so the
// server can turn them into the envelope without guessing.

import type { ErrorCode } from "@mitos/proto";

export type { ErrorCode };

export interface ErrorDetails {
  remediation: string;
  cause?: string;
  context?: Record<string, unknown>;
}

export class MitosError extends Error {
  readonly code: ErrorCode;
  readonly remediation: string;
  readonly detail: string | undefined;
  readonly context: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, details: ErrorDetails) {
    super(message);
    this.name = "MitosError";
    this.code = code;
    this.remediation = details.remediation;
    this.detail = details.cause;
    this.context = details.context ?? {};
  }
}

/** What to do when the RAM-file tmpfs (`dir`) has no room. */
export function shmSpaceRemediation(dir: string): string {
  return `Free space in ${dir} (a tmpfs, /dev/shm by default): terminate sandboxes you no longer need, or enlarge it (mount -o remount,size=<bigger> <mount point>), then retry.`;
}

/** The VM or its agent went away: every pending and later call fails with this. */
export class AgentGoneError extends MitosError {
  constructor(reason: string, context: Record<string, unknown> = {}) {
    super("unavailable", `sandbox agent is not reachable: ${reason}`, {
      remediation:
        "The sandbox VM stopped or its guest agent died. Check the VM console log named in context, then create a new sandbox.",
      cause: reason,
      context,
    });
    this.name = "AgentGoneError";
  }
}

const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  13: "EACCES",
  17: "EEXIST",
  20: "ENOTDIR",
  21: "EISDIR",
  22: "EINVAL",
  28: "ENOSPC",
  36: "ENAMETOOLONG",
  39: "ENOTEMPTY",
};

/** An operation the agent refused or failed, with the guest's errno. */
export class GuestError extends MitosError {
  readonly errno: number;

  constructor(op: "exec" | "file" | "agent", errno: number, message: string, context: Record<string, unknown> = {}) {
    const name = ERRNO_NAMES[errno] ?? `errno ${errno}`;
    const code: ErrorCode =
      errno === 2
        ? "not_found"
        : op === "file" && (errno === 17 || errno === 39)
          ? "conflict" // EEXIST, ENOTEMPTY: the path's state, not a failure
          : op === "file" && (errno === 20 || errno === 21)
            ? "invalid_input" // ENOTDIR, EISDIR: the path names the wrong kind of thing
            : op === "exec"
              ? "exec_failed"
              : op === "file"
                ? "file_failed"
                : "internal";
    super(code, message, {
      remediation: remediationFor(errno, op),
      cause: `${name} in the guest`,
      context: { ...context, errno },
    });
    this.name = "GuestError";
    this.errno = errno;
  }
}

function remediationFor(errno: number, op: string): string {
  switch (errno) {
    case 2:
      return "The path does not exist in the sandbox. List the parent directory to check the name, or create it first.";
    case 13:
    case 1:
      return "The sandbox user may not do this. Use a path under /root or /tmp, or run as root.";
    case 17:
      return "Something already exists at that path. Remove it first or choose another name.";
    case 20:
      return "A parent of the path is a file, not a directory. Fix the path.";
    case 21:
      return "The path is a directory. Use list for directories, or name a file.";
    case 39:
      return "The directory is not empty. Pass recursive=true to remove it and its contents.";
    case 28:
      return "The sandbox's memory-backed filesystem is full. Remove files or create a sandbox with more memory.";
    default:
      return op === "exec"
        ? "Check that the command exists in the sandbox image and that cwd is a directory."
        : "Check the path and try again; the message names the failing guest operation.";
  }
}

/** An unknown sandbox id (the server answers the same for one the caller may not see). */
export function noSandbox(id: string): MitosError {
  return new MitosError("not_found", `no sandbox ${JSON.stringify(id)}`, {
    remediation: "List sandboxes (GET /v1/sandboxes) for valid ids; terminated sandboxes are gone.",
    context: { sandbox: id },
  });
}

/** An unknown checkpoint id (or a hidden one, or another tenant's). */
export function noCheckpoint(id: string): MitosError {
  return new MitosError("not_found", `no checkpoint ${JSON.stringify(id)}`, {
    remediation: "List checkpoints (GET /v1/checkpoints) for valid ids.",
    context: { checkpoint: id },
  });
}
