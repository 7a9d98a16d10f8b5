// The "internet" of network tests, run inside a namespace the test creates
// (test-support/world.ts): HTTP servers on given address:port pairs (each
// answers "<address>:<port> <Host header>", and GET /big a body of
// bigMiB MiB), static file servers, a UDP echo, and a DNS server
// answering the zone it is given. Prints "ready" once everything listens.

import dgram from "node:dgram";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import dnsPacket from "dns-packet";

const config = JSON.parse(process.argv[2]);
const pending = [];

for (const { host, port } of config.http) {
  const server = http.createServer((req, res) => {
    if (req.url === "/big") {
      // A body for throughput figures, written as fast as the reader takes it.
      const chunk = Buffer.alloc(1 << 20);
      let left = config.bigMiB;
      res.setHeader("content-length", String(left << 20));
      const more = () => {
        while (left > 0) {
          left--;
          if (!res.write(chunk)) return void res.once("drain", more);
        }
        res.end();
      };
      return more();
    }
    res.setHeader("content-type", "text/plain");
    res.end(`${host}:${port} ${req.headers.host ?? ""}\n`);
  });
  pending.push(new Promise((r) => server.listen(port, host, r)));
}

for (const { host, port, dir } of config.files ?? []) {
  const root = path.resolve(dir);
  const server = http.createServer((req, res) => {
    const file = path.resolve(root, `.${decodeURIComponent(new URL(req.url, "http://x").pathname)}`);
    if (!file.startsWith(`${root}/`) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.statusCode = 404;
      return res.end("not found\n");
    }
    res.setHeader("content-length", String(fs.statSync(file).size));
    fs.createReadStream(file).pipe(res);
  });
  pending.push(new Promise((r) => server.listen(port, host, r)));
}

for (const { host, port } of config.udpEcho ?? []) {
  const sock = dgram.createSocket("udp4");
  sock.on("message", (msg, rinfo) => sock.send(msg, rinfo.port, rinfo.address));
  pending.push(new Promise((r) => sock.bind(port, host, r)));
}

if (config.dns) {
  const sock = dgram.createSocket("udp4");
  sock.on("message", (msg, rinfo) => {
    let q;
    try {
      q = dnsPacket.decode(msg);
    } catch {
      return;
    }
    const question = q.questions?.[0];
    const name = question?.name.toLowerCase();
    const ips = name && question.type === "A" ? config.dns.zone[name] : undefined;
    const known = name !== undefined && name in config.dns.zone;
    const reply = dnsPacket.encode({
      type: "response",
      id: q.id,
      flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | (known ? 0 : 3),
      questions: q.questions,
      answers: (ips ?? []).map((data) => ({ type: "A", name: question.name, ttl: 5, data })),
    });
    sock.send(reply, rinfo.port, rinfo.address);
  });
  pending.push(new Promise((r) => sock.bind(53, config.dns.host, r)));
}

await Promise.all(pending);
process.stdout.write("ready\n");
