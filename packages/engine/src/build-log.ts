// A template build's log: what it is doing (image, boot, each step with its
// output, the snapshot) as events a caller can follow. A build is shared by
// every caller asking for the same template id, so a caller that joins late
// is replayed what it missed before the live events.

/** One event of a template build; JSON-ready (the API streams them as NDJSON). */
export type BuildEvent =
  | { type: "phase"; phase: BuildPhase; message: string }
  | {
      type: "step";
      /** 1-based, as a person counts them. */
      step: number;
      of: number;
      command: string;
      /** Taken from the step cache: the command did not run. */
      cached: boolean;
    }
  | { type: "output"; step: number; stream: "stdout" | "stderr"; data: string }
  | { type: "step_done"; step: number; exit_code: number; ms: number };

/** `packages`: installing a template's packages on an OCI image (its output comes as step 0). */
export type BuildPhase = "image" | "packages" | "boot" | "restore" | "interpreter" | "snapshot" | "cache";

export type BuildListener = (e: BuildEvent) => void;

/** Kept for late joiners; a build that prints more keeps its newest events. */
const MAX_HISTORY = 2000;

export class BuildLog {
  private readonly history: BuildEvent[] = [];
  private readonly listeners = new Set<BuildListener>();

  emit(e: BuildEvent): void {
    this.history.push(e);
    if (this.history.length > MAX_HISTORY) this.history.splice(0, this.history.length - MAX_HISTORY);
    for (const l of this.listeners) {
      try {
        l(e);
      } catch {
        // A follower's failure (a closed socket) must not stop the build.
      }
    }
  }

  /** Replays what happened so far, then delivers live events until the returned function is called. */
  follow(listener: BuildListener): () => void {
    for (const e of this.history) listener(e);
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
