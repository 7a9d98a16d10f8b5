// HTTP/1.1 and HTTP/2 cleartext on one port: a connection that starts with
// the HTTP/2 preface goes to an http2 server, any other to the HTTP/1.1
// server (fastify). HTTP/1 requests never start with "PRI ".

import type { Server } from "node:http";
import http2 from "node:http2";
import type net from "node:net";
import { Duplex } from "node:stream";

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

export function serveH2c(
  h1: Server,
  handler: (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void,
): { close(): void } {
  const h2 = http2.createServer({}, handler);
  // Sessions live on sockets the HTTP/1.1 server accepted: closing that server
  // waits for them, so close() ends them.
  const sessions = new Set<http2.ServerHttp2Session>();
  h2.on("session", (s) => {
    sessions.add(s);
    s.once("close", () => sessions.delete(s));
  });
  const h1Listeners = h1.listeners("connection") as Array<(s: net.Socket) => void>;
  h1.removeAllListeners("connection");
  h1.on("connection", (socket: net.Socket) => {
    let seen = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      seen = Buffer.concat([seen, chunk]);
      const n = Math.min(seen.length, PREFACE.length);
      const isH2 = seen.subarray(0, n).equals(PREFACE.subarray(0, n));
      if (isH2 && seen.length < PREFACE.length) return; // need more bytes to decide
      socket.off("data", onData);
      if (isH2) {
        h2.emit("connection", replaying(socket, seen));
        return;
      }
      socket.pause();
      socket.unshift(seen);
      for (const l of h1Listeners) l.call(h1, socket);
      socket.resume();
    };
    socket.on("data", onData);
  });
  return {
    close: () => {
      for (const s of sessions) s.destroy();
      h2.close();
    },
  };
}

/**
 * The socket as a stream that first replays the bytes already read. HTTP/2
 * sessions read a net.Socket's native handle directly, past anything
 * unshifted, so they get this JS stream instead.
 */
function replaying(socket: net.Socket, first: Buffer): Duplex {
  const d = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk: Buffer, _enc, cb) {
      socket.write(chunk, cb);
    },
    final(cb) {
      socket.end(cb);
    },
    destroy(err, cb) {
      socket.destroy(err ?? undefined);
      cb(err);
    },
  });
  d.push(first);
  socket.on("data", (c: Buffer) => {
    if (!d.push(c)) socket.pause();
  });
  socket.on("end", () => d.push(null));
  socket.on("error", (e) => d.destroy(e));
  socket.on("close", () => d.destroy());
  return d;
}
