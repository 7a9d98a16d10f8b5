// A Connect client of the runtime service for tests: bearer token and the
// target sandbox set on every call, as the SDK does.

import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Sandbox as SandboxService } from "@mitos/proto";

export function runtimeClient(
  server: { url: string; token: string },
  sandboxId: string,
  o: { httpVersion?: "1.1" | "2"; useBinaryFormat?: boolean } = {},
) {
  return createClient(
    SandboxService,
    createConnectTransport({
      baseUrl: server.url,
      httpVersion: o.httpVersion ?? "1.1",
      useBinaryFormat: o.useBinaryFormat ?? false,
      interceptors: [
        (next) => async (req) => {
          req.header.set("authorization", `Bearer ${server.token}`);
          req.header.set("x-sandbox-id", sandboxId);
          return next(req);
        },
      ],
    }),
  );
}
