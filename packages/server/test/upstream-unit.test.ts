// Unit tests of the pieces behind UPSTREAM-WIRE.md that need no VM: List
// paging and filters, the error envelope's cause, and the no-auth mode's
// loopback rule. The same rows are driven over the wire on real VMs in
// upstream-wire.test.ts.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { MitosError } from "@mitos/engine";
import { ErrorDetailSchema, type FileInfo, FileInfoSchema } from "@mitos/proto";
import { isLoopback, loadDaemonConfig } from "../src/config.js";
import { envelope, toConnectError, toMitosError } from "../src/errors.js";
import { listPage } from "../src/list-page.js";

const entry = (name: string, isDir = false): FileInfo => create(FileInfoSchema, { name, path: `/w/${name}`, isDir });
const names = (r: { entries: FileInfo[] }) => r.entries.map((e) => e.name);
const files = ["b.py", "a.txt", "d", "c.py", "e"].map((n) => entry(n, n.length === 1));

describe("List paging and filters", () => {
  it("sorts by name, and pages with a token naming the last entry", () => {
    const all = listPage({ pageSize: 0, pageToken: "", filter: "" })(files);
    assert.deepEqual(names(all), ["a.txt", "b.py", "c.py", "d", "e"]);
    assert.equal(all.nextPageToken, "");
    const p1 = listPage({ pageSize: 2, pageToken: "", filter: "" })(files);
    assert.deepEqual(names(p1), ["a.txt", "b.py"]);
    const p2 = listPage({ pageSize: 2, pageToken: p1.nextPageToken, filter: "" })(files);
    assert.deepEqual(names(p2), ["c.py", "d"]);
    const p3 = listPage({ pageSize: 2, pageToken: p2.nextPageToken, filter: "" })(files);
    assert.deepEqual(names(p3), ["e"]);
    assert.equal(p3.nextPageToken, "", "the last page has no token");
    // An entry removed between pages does not shift the next page.
    const p2b = listPage({ pageSize: 2, pageToken: p1.nextPageToken, filter: "" })(
      files.filter((f) => f.name !== "a.txt"),
    );
    assert.deepEqual(names(p2b), ["c.py", "d"]);
  });

  it("filters by is_dir and by name glob, joined by AND", () => {
    const f = (filter: string) => names(listPage({ pageSize: 0, pageToken: "", filter })(files));
    assert.deepEqual(f("is_dir=true"), ["d", "e"]);
    assert.deepEqual(f("is_dir = false"), ["a.txt", "b.py", "c.py"]);
    assert.deepEqual(f('name="*.py"'), ["b.py", "c.py"]);
    assert.deepEqual(f('name="?.py" AND is_dir=false'), ["b.py", "c.py"]);
    assert.deepEqual(f("name=a.txt"), ["a.txt"]);
    assert.deepEqual(f('name="a.t?t"'), ["a.txt"], "? is one character; . is literal");
    assert.deepEqual(f('name="a*t" AND is_dir=true'), []);
  });

  it("refuses a negative page size, a forged token and filters it does not understand", () => {
    const bad = (o: Partial<{ pageSize: number; pageToken: string; filter: string }>, re: RegExp) =>
      assert.throws(
        () => listPage({ pageSize: 0, pageToken: "", filter: "", ...o }),
        (e: MitosError) => e.code === "invalid_input" && re.test(e.message) && e.remediation.length > 0,
      );
    bad({ pageSize: -1 }, /negative/);
    bad({ pageToken: "not-a-token" }, /pageToken/);
    bad({ filter: "size>10" }, /unsupported filter clause/);
    bad({ filter: "is_dir=yes" }, /true or false/);
    bad({ filter: "is_dir=true OR name=x" }, /true or false|unsupported/);
  });
});

describe("error envelope", () => {
  it("omits cause when there is none, and never writes null", () => {
    const none = envelope(new MitosError("not_found", "no sandbox", { remediation: "List them." }));
    assert.equal("cause" in none.error, false);
    assert.equal(JSON.stringify(none).includes("null"), false);
    const some = envelope(new MitosError("file_failed", "x", { remediation: "r", cause: "ENOSPC in the guest" }));
    assert.equal(some.error.cause, "ENOSPC in the guest");
  });

  it("carries the envelope in a Connect error's details and reads it back", () => {
    const ce = toConnectError(new MitosError("conflict", "busy", { remediation: "Wait.", cause: "EBUSY" }));
    const [d] = ce.findDetails(ErrorDetailSchema);
    assert.equal(d?.code, "conflict");
    assert.equal(d?.cause, "EBUSY");
    assert.equal(d?.remediation, "Wait.");
    const noCause = toConnectError(new MitosError("not_found", "gone", { remediation: "Create one." }));
    assert.equal(noCause.findDetails(ErrorDetailSchema)[0]?.cause, undefined);
    const back = toMitosError(ce);
    assert.deepEqual([back.code, back.detail, back.remediation], ["conflict", "EBUSY", "Wait."]);
  });
});

describe("--auth none", () => {
  it("is loopback-only", () => {
    for (const h of ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]) assert.ok(isLoopback(h), h);
    for (const h of ["0.0.0.0", "::", "10.0.0.1", "192.168.1.2", "127.0.0.1.example.com", "example.com"]) {
      assert.ok(!isLoopback(h), h);
    }
  });

  it("is refused with a message on a non-loopback address, from a flag, the environment or the file", () => {
    assert.throws(
      () => loadDaemonConfig(["--auth", "none", "--host", "0.0.0.0"], {}),
      /auth "none" is refused on 0\.0\.0\.0/,
    );
    assert.throws(() => loadDaemonConfig(["--host", "10.1.2.3"], { MITOS_AUTH: "none" }), /refused on 10\.1\.2\.3/);
    assert.throws(() => loadDaemonConfig(["--auth", "off"], {}), /auth must be "token" or "none"/);
    assert.equal(loadDaemonConfig(["--auth", "none"], {}).options.auth, "none");
    assert.equal(loadDaemonConfig([], {}).options.auth, undefined, "never the default");
  });
});
