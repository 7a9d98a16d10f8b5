// RunCodeStream and the bidi RunCode (UPSTREAM-WIRE.md): a cell in the
// sandbox's Jupyter kernel, streamed as stdout/stderr/result/error frames and
// always closed by an exit_code frame (0 ok, 1 raised, 124 timed out, 127 no
// kernel). A slow client slows the cell's output, never grows mitosd's memory.

import { create } from "@bufbuild/protobuf";
import { type CodeEvent, type Engine, MitosError } from "@mitos/engine";
import {
  type RunCodeResponse,
  RunCodeResponseSchema,
  type RunCodeStreamRequest,
  RunErrorSchema,
  RunResultSchema,
} from "@mitos/proto";
import { invalid } from "./errors.js";
import { StreamQueue } from "./stream-queue.js";

const QUEUE_BYTES = 1 << 20;
const LANGUAGES = new Set(["", "python", "python3"]);
const MAX_CODE_BYTES = 4 << 20;

export interface CellRequest {
  code: string;
  language: string;
  timeoutSeconds: number;
  contextId: string;
  env: Record<string, string>;
}

/** Validates a cell from the wire: RunCodeStreamRequest or RunCodeOpen. */
export function toCell(
  r: Omit<RunCodeStreamRequest, "$typeName" | "$unknown">,
  maxTimeoutSeconds: number,
): CellRequest {
  if (!LANGUAGES.has(r.language.toLowerCase())) {
    throw invalid(`language ${JSON.stringify(r.language)} is not served`, 'Use "python" (or leave it empty).', {
      field: "language",
    });
  }
  if (Buffer.byteLength(r.code) > MAX_CODE_BYTES) {
    throw invalid(
      `code is over ${MAX_CODE_BYTES} bytes`,
      "Send large data as a file (WriteFile), then read it in the cell.",
      {
        field: "code",
      },
    );
  }
  const timeout = Number(r.timeoutSeconds);
  if (timeout < 0)
    throw invalid(`timeoutSeconds ${timeout} is negative`, "Pass 0 for the default, or a positive number.");
  if (timeout > maxTimeoutSeconds) {
    throw new MitosError("timeout_too_large", `timeoutSeconds ${timeout} is above ${maxTimeoutSeconds}`, {
      remediation: `Ask for at most ${maxTimeoutSeconds} seconds; long work can run in a background thread of the kernel.`,
    });
  }
  const env: Record<string, string> = {};
  for (const e of r.env) env[e.key] = e.value;
  return {
    code: r.code,
    language: r.language.toLowerCase(),
    timeoutSeconds: timeout > 0 ? timeout : maxTimeoutSeconds,
    contextId: r.contextId,
    env,
  };
}

export async function* runCell(
  engine: Engine,
  id: string,
  cell: CellRequest,
  signal: AbortSignal,
  stdin?: AsyncIterable<Uint8Array>,
): AsyncGenerator<RunCodeResponse> {
  const release = engine.openStream(id);
  try {
    const interpreter = engine.interpreter(id);
    const queue = new StreamQueue<RunCodeResponse>(QUEUE_BYTES, sizeOf);
    const aborter = new AbortController();
    const onAbort = () => {
      aborter.abort();
      queue.end();
    };
    signal.addEventListener("abort", onAbort, { once: true });
    interpreter
      .run({
        code: cell.code,
        ...(cell.language ? { language: cell.language } : {}),
        ...(cell.contextId ? { context: cell.contextId } : {}),
        timeoutSeconds: cell.timeoutSeconds,
        env: cell.env,
        ...(stdin ? { stdin } : {}),
        signal: aborter.signal,
        onEvent: (e) => queue.push(frame(e)),
      })
      .then(
        (out) => queue.push(response({ case: "exitCode", value: out.exitCode })).then(() => queue.end()),
        (err: Error) => queue.end(err),
      );
    try {
      yield* queue;
    } finally {
      signal.removeEventListener("abort", onAbort);
      aborter.abort(); // the caller stopped reading: interrupt the cell
    }
  } finally {
    release();
  }
}

function frame(e: CodeEvent): RunCodeResponse {
  switch (e.kind) {
    case "stdout":
    case "stderr":
      return response({ case: e.kind, value: Buffer.from(e.text) });
    case "result": {
      const data: Record<string, Uint8Array> = {};
      for (const [mime, v] of Object.entries(e.result.data)) data[mime] = Buffer.from(v);
      return response({
        case: "result",
        // Upstream's clients take a non-empty text as "the main result" (the cell's value).
        value: create(RunResultSchema, {
          text: e.result.isMainResult ? (e.result.data["text/plain"] ?? "") : "",
          data,
        }),
      });
    }
    case "error":
      return response({ case: "error", value: create(RunErrorSchema, e.error) });
  }
}

function response(msg: RunCodeResponse["msg"]): RunCodeResponse {
  return create(RunCodeResponseSchema, { msg });
}

function sizeOf(m: RunCodeResponse): number {
  switch (m.msg.case) {
    case "stdout":
    case "stderr":
      return m.msg.value.length;
    case "result":
      return Object.values(m.msg.value.data).reduce((n, v) => n + v.length, 0);
    default:
      return 64;
  }
}
