// A Connect (or gRPC) call to a method mitosd does not serve gets the
// protocol's own `unimplemented` error, as connect-go answers it, rather than
// the lifecycle API's 404 envelope: Connect clients cannot parse that one.
// Framing comes from @connectrpc/connect; nothing is hand-rolled here.

import { Code, ConnectError } from "@connectrpc/connect";
import { encodeEnvelope } from "@connectrpc/connect/protocol";
import {
  codeToHttpStatus,
  contentTypeStreamRegExp,
  endStreamFlag,
  endStreamToJson,
  errorToJsonBytes,
} from "@connectrpc/connect/protocol-connect";
import type { FastifyReply, FastifyRequest } from "fastify";

/** `/<package>.<Service>/<Method>`, as Connect and gRPC address a procedure. */
const PROCEDURE = /^\/([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)+)\/([A-Za-z_]\w*)$/;

/** Answers the request and returns true when it is an RPC to an unknown method. */
export function unknownConnectMethod(req: FastifyRequest, reply: FastifyReply): boolean {
  const path = req.url.split("?")[0] ?? "";
  const m = PROCEDURE.exec(path);
  if (req.method !== "POST" || !m) return false;
  const contentType = String(req.headers["content-type"] ?? "application/json");
  const err = new ConnectError(
    `${m[1]}/${m[2]} is not a method mitosd serves (see the sandbox.v1 proto for the served ones)`,
    Code.Unimplemented,
  );
  if (contentType.startsWith("application/grpc")) {
    // gRPC and gRPC-web: a trailers-only answer.
    reply
      .code(200)
      .header("content-type", contentType)
      .header("grpc-status", String(Code.Unimplemented))
      .header("grpc-message", encodeURIComponent(err.rawMessage))
      .send("");
  } else if (contentTypeStreamRegExp.test(contentType)) {
    // Streaming Connect: HTTP 200, the error in the end-of-stream message.
    const end = new TextEncoder().encode(JSON.stringify(endStreamToJson(new Headers(), err, undefined)));
    reply
      .code(200)
      .header("content-type", contentType)
      .send(Buffer.from(encodeEnvelope(endStreamFlag, end)));
  } else {
    // Unary Connect: the HTTP status Connect maps the code to, a JSON error body.
    reply
      .code(codeToHttpStatus(Code.Unimplemented))
      .header("content-type", "application/json")
      .send(Buffer.from(errorToJsonBytes(err, undefined)));
  }
  return true;
}
