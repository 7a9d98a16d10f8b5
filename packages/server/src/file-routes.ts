// Files over plain HTTP (docs/files.md): GET /v1/sandboxes/{id}/files?path=
// downloads a file's bytes, PUT with the bytes as the body uploads one. The
// Connect ReadFile/WriteFile calls stay the SDKs' way; these are for browsers
// (fetch cannot send a client stream) and for curl. Both stream: nothing is
// held whole in mitosd's memory, whatever the size.

import path from "node:path";
import { PassThrough, type Readable } from "node:stream";
import type { Engine } from "@mitos/engine";
import { MitosError } from "@mitos/engine";
import type { FastifyInstance } from "fastify";
import { routeSchemas } from "./openapi.js";
import { guestPath } from "./runtime.js";

interface FileRoute {
  Params: { id: string };
  Querystring: { path?: string; mode?: string };
}

export function registerFileRoutes(app: FastifyInstance, engine: Engine): void {
  // No automatic HEAD: it would read the whole file to throw it away.
  app.get<FileRoute>(
    "/v1/sandboxes/:id/files",
    { schema: routeSchemas.downloadFile, exposeHeadRoute: false },
    async (req, reply) => {
      const id = req.params.id;
      const file = guestPath(req.query.path ?? "", "path");
      await engine.awake(id);
      const agent = engine.agent(id);
      const info = await agent.stat(file);
      if (info.type === "dir") {
        throw new MitosError("invalid_input", `${file} is a directory`, {
          remediation: "Download a file; list a directory with the List call (POST /sandbox.v1.Sandbox/List).",
          context: { path: file },
        });
      }
      const release = engine.openStream(id);
      const body = new PassThrough();
      // Backpressure: the guest's next chunk waits until the client has taken this one. A client
      // gone (the body destroyed) never drains: the rest of the read is then dropped as it comes,
      // so the read ends and its stream slot is released.
      const write = (chunk: Buffer) =>
        new Promise<void>((resolve) => {
          if (body.destroyed || body.write(chunk)) return resolve();
          body.once("drain", resolve);
          body.once("close", resolve);
        });
      agent
        .readFile(file, { onData: write })
        .then(
          () => body.end(),
          // Headers are gone by now: cutting the body is how the client learns.
          (err: Error) => body.destroy(err),
        )
        .finally(release);
      // No Content-Length: stat's size is not the bytes a read gives for /proc and /sys files, or a
      // file still being written; a wrong length would desync the connection. The body is chunked.
      reply
        .header("content-type", "application/octet-stream")
        .header("content-disposition", `attachment; filename="${encodeURIComponent(path.posix.basename(file))}"`)
        .header("cache-control", "no-store");
      return reply.send(body);
    },
  );

  // Raw bodies of any type: the route reads the stream itself, so no parser may consume it first.
  app.register(async (scope) => {
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser("*", (_req, payload, done) => done(null, payload));
    scope.put<FileRoute>("/v1/sandboxes/:id/files", { schema: routeSchemas.uploadFile }, async (req) => {
      const id = req.params.id;
      const file = guestPath(req.query.path ?? "", "path");
      const mode = req.query.mode ? Number.parseInt(req.query.mode, 8) : 0o644;
      await engine.awake(id);
      const release = engine.openStream(id);
      try {
        const stream = (req.body as Readable | undefined) ?? req.raw;
        const bytes = await engine.agent(id).writeFile(file, stream as AsyncIterable<Buffer>, { mode });
        return { path: file, bytes_written: bytes };
      } finally {
        release();
      }
    });
  });
}
