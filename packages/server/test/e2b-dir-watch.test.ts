// Unit tests of envd's directory watch done by polling (e2b/dir-watch.ts)
// and of the entry helpers it shares with the filesystem RPCs
// (e2b/envd-entries.ts): the pure snapshot diff, the tree walk, the polling
// loop against an in-memory agent, and EntryInfo's fields. No VM.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, type ConnectError } from "@connectrpc/connect";
import { AgentGoneError, type FileInfo, MitosError } from "@mitos/engine";
import { envdFilesystem as pb } from "@mitos/proto/envd";
import { type DirEvent, DirWatch, diffSnapshots, type Snapshot, snapshot } from "../src/e2b/dir-watch.js";
import { entryInfo, GuestNames, permissions, statFollow, walk } from "../src/e2b/envd-entries.js";
import { FakeFsAgent } from "./fixtures/fake-fs-agent.js";

const E = pb.EventType;

function info(name: string, over: Partial<FileInfo> = {}): FileInfo {
  return {
    name,
    path: `/w/${name}`,
    type: "file",
    size: 1,
    mode: 0o644,
    mtime: 100,
    mtimeNsec: 5,
    uid: 0,
    gid: 0,
    ...over,
  };
}

function snap(...entries: Array<[string, Partial<FileInfo>?]>): Snapshot {
  return new Map(entries.map(([name, over]) => [name, info(name, over)]));
}

const brief = (events: DirEvent[]) => events.map((e) => `${E[e.type]} ${e.name}`);

describe("diffSnapshots", () => {
  it("reports nothing for equal listings", () => {
    assert.deepEqual(diffSnapshots(snap(["a"], ["d", { type: "dir" }]), snap(["a"], ["d", { type: "dir" }])), []);
  });

  it("reports a new file with content as CREATE then WRITE, as inotify does; an empty file or a directory as CREATE", () => {
    const events = diffSnapshots(
      snap(),
      snap(["a", { size: 3 }], ["e", { size: 0 }], ["d", { type: "dir", size: 4096 }]),
    );
    assert.deepEqual(brief(events), ["CREATE a", "WRITE a", "CREATE d", "CREATE e"]);
    assert.equal(events[0]?.info?.name, "a", "creations carry the new entry");
  });

  it("reports removals children first, before any creation", () => {
    const events = diffSnapshots(snap(["d", { type: "dir" }], ["d/x"], ["d/y"], ["k"]), snap(["k"], ["n"]));
    assert.deepEqual(brief(events), ["REMOVE d/y", "REMOVE d/x", "REMOVE d", "CREATE n", "WRITE n"]);
    assert.equal(events[0]?.info, undefined, "a removed entry has no entry info");
  });

  it("reports a file whose size or mtime (to the nanosecond) changed as WRITE", () => {
    assert.deepEqual(brief(diffSnapshots(snap(["a"]), snap(["a", { size: 2 }]))), ["WRITE a"]);
    assert.deepEqual(brief(diffSnapshots(snap(["a"]), snap(["a", { mtimeNsec: 6 }]))), ["WRITE a"]);
    assert.deepEqual(brief(diffSnapshots(snap(["a"]), snap(["a", { mtime: 101 }]))), ["WRITE a"]);
  });

  it("ignores a directory's own size and mtime (its children have their own events)", () => {
    const d = { type: "dir" as const };
    assert.deepEqual(diffSnapshots(snap(["d", d]), snap(["d", { ...d, mtime: 200, size: 8192 }])), []);
  });

  it("reports mode and owner changes as CHMOD, after a WRITE of the same entry", () => {
    assert.deepEqual(brief(diffSnapshots(snap(["a"]), snap(["a", { mode: 0o755 }]))), ["CHMOD a"]);
    assert.deepEqual(brief(diffSnapshots(snap(["a"]), snap(["a", { uid: 1000, gid: 1000 }]))), ["CHMOD a"]);
    assert.deepEqual(brief(diffSnapshots(snap(["a"]), snap(["a", { mode: 0o600, size: 9 }]))), ["WRITE a", "CHMOD a"]);
  });

  it("reports a changed type as REMOVE then CREATE", () => {
    assert.deepEqual(brief(diffSnapshots(snap(["a"]), snap(["a", { type: "dir" }]))), ["REMOVE a", "CREATE a"]);
  });

  it("reports a move as RENAME of the old name and CREATE of the new, without WRITE", () => {
    const events = diffSnapshots(snap(["old", { size: 7 }], ["keep"]), snap(["new", { size: 7 }], ["keep"]));
    assert.deepEqual(brief(events), ["RENAME old", "CREATE new"]);
  });

  it("does not guess a rename when twins are ambiguous", () => {
    const events = diffSnapshots(snap(["a"], ["b"]), snap(["c"], ["d"]));
    assert.deepEqual(brief(events), ["REMOVE b", "REMOVE a", "CREATE c", "WRITE c", "CREATE d", "WRITE d"]);
  });
});

function tree(): FakeFsAgent {
  const fs = new FakeFsAgent();
  fs.put("/w", { type: "dir" });
  fs.put("/w/b.txt", { data: Buffer.from("bb") });
  fs.put("/w/a", { type: "dir" });
  fs.put("/w/a/z.txt");
  fs.put("/w/a/deep", { type: "dir" });
  fs.put("/w/a/deep/y.txt");
  fs.put("/w/link", { type: "symlink", target: "a" });
  return fs;
}

describe("walk and snapshot", () => {
  it("walks in filepath.WalkDir's order down to a depth, and never into symlinks", async () => {
    const fs = tree();
    const rels = async (depth: number) => (await walk(fs, "/w", depth, 100)).map((e) => e.rel);
    assert.deepEqual(await rels(1), ["a", "b.txt", "link"]);
    assert.deepEqual(await rels(2), ["a", "a/deep", "a/z.txt", "b.txt", "link"]);
    assert.deepEqual(await rels(9), ["a", "a/deep", "a/deep/y.txt", "a/z.txt", "b.txt", "link"]);
  });

  it("refuses a tree larger than the limit with resource_exhausted", async () => {
    await assert.rejects(snapshot(tree(), "/w", true, 5), (e: ConnectError) => e.code === Code.ResourceExhausted);
    assert.equal((await snapshot(tree(), "/w", true, 6)).size, 6);
    assert.equal((await snapshot(tree(), "/w", false, 3)).size, 3, "a flat watch counts the top level only");
  });
});

describe("DirWatch", () => {
  const opts = { recursive: true, intervalMs: 5 };
  // Poll timers are unref'd (a forgotten watcher must not keep mitosd alive): hold the loop open here.
  let keeper: NodeJS.Timeout;
  before(() => {
    keeper = setInterval(() => {}, 1000);
  });
  after(() => clearInterval(keeper));

  it("checks the path as envd does: missing is not_found, a file is invalid_argument", async () => {
    const fs = tree();
    await assert.rejects(
      DirWatch.open(() => fs, "/nope", opts),
      (e: ConnectError) => e.code === Code.NotFound,
    );
    await assert.rejects(
      DirWatch.open(() => fs, "/w/b.txt", opts),
      (e: ConnectError) => e.code === Code.InvalidArgument,
    );
    const w = await DirWatch.open(() => fs, "/w/link", opts);
    assert.equal(w.dir, "/w/a", "a symlinked directory is watched where it leads");
  });

  it("reports changes made after open, with names relative to the watched directory", async () => {
    const fs = tree();
    const w = await DirWatch.open(() => fs, "/w", opts);
    const seen: string[] = [];
    let done!: () => void;
    const got = new Promise<void>((r) => {
      done = r;
    });
    w.start(
      async (events) => {
        seen.push(...brief(events));
        if (seen.includes("WRITE a/deep/new.txt")) done();
      },
      (err) => assert.fail(err),
    );
    fs.touch("/w/b.txt", "changed");
    fs.put("/w/a/deep/new.txt", { data: Buffer.from("x") });
    await got;
    w.stop();
    assert.ok(seen.includes("WRITE b.txt"), seen.join(", "));
    assert.ok(seen.includes("CREATE a/deep/new.txt"), seen.join(", "));
  });

  it("lists a removed watched directory as empty and keeps watching", async () => {
    const fs = tree();
    const w = await DirWatch.open(() => fs, "/w/a", opts);
    const seen: string[] = [];
    let done!: () => void;
    const got = new Promise<void>((r) => {
      done = r;
    });
    w.start(
      async (events) => {
        seen.push(...brief(events));
        if (seen.includes("CREATE again")) done();
      },
      (err) => assert.fail(err),
    );
    await fs.remove("/w/a");
    await new Promise((r) => setTimeout(r, 30));
    fs.put("/w/a/again", { type: "dir" });
    await got;
    w.stop();
    assert.deepEqual(seen, ["REMOVE z.txt", "REMOVE deep/y.txt", "REMOVE deep", "CREATE again"]);
  });

  it("rides out a few agent hiccups, then ends when the sandbox is gone", async () => {
    const fs = tree();
    let fail: Error | undefined;
    let calls = 0;
    const w = await DirWatch.open(
      () => {
        calls++;
        if (fail) throw fail;
        return fs;
      },
      "/w",
      opts,
    );
    const ended = new Promise<Error>((resolve) => w.start(async () => {}, resolve));
    fail = new AgentGoneError("reconnecting");
    await new Promise((r) => setTimeout(r, 12));
    fail = undefined; // transient: the watch goes on
    await new Promise((r) => setTimeout(r, 20));
    const before = calls;
    fail = new MitosError("conflict", "sandbox sb-1 is stopped", { remediation: "Create a new sandbox." });
    const err = await ended;
    assert.match(err.message, /stopped/);
    assert.ok(calls > before);
  });
});

describe("entries", () => {
  it("spells permissions as Go's os.FileMode.String(), which envd sends", () => {
    assert.equal(permissions("file", 0o644), "-rw-r--r--");
    assert.equal(permissions("dir", 0o755), "drwxr-xr-x");
    assert.equal(permissions("symlink", 0o777), "Lrwxrwxrwx");
    assert.equal(permissions("dir", 0o1777), "dtrwxrwxrwx");
    assert.equal(permissions("file", 0o4755), "urwxr-xr-x");
    assert.equal(permissions("other", 0o600), "?rw-------");
  });

  it("builds EntryInfo with names, permission-bit mode, nanosecond mtime and an absolute symlink target", () => {
    const names = { users: new Map([[1000, "user"]]), groups: new Map<number, string>() };
    const e = entryInfo(info("ln", { type: "symlink", mode: 0o777, uid: 1000, gid: 42, target: "../t/x" }), names);
    assert.equal(e.type, pb.FileType.SYMLINK);
    assert.equal(e.mode, 0o777);
    assert.equal(e.owner, "user");
    assert.equal(e.group, "42", "an unknown gid is its number");
    assert.equal(e.symlinkTarget, "/t/x");
    assert.equal(e.modifiedTime?.seconds, 100n);
    assert.equal(e.modifiedTime?.nanos, 5);
    const f = entryInfo(info("s", { mode: 0o4755 }), names);
    assert.equal(f.mode, 0o755, "mode is FileMode.Perm(): no setuid bit");
    assert.equal(f.symlinkTarget, undefined);
    assert.equal(entryInfo(info("p", { type: "other" }), names).type, pb.FileType.UNSPECIFIED);
  });

  it("follows symlink chains and refuses loops", async () => {
    const fs = tree();
    fs.put("/w/l2", { type: "symlink", target: "/w/link" });
    assert.equal((await statFollow(fs, "/w/l2")).path, "/w/a");
    fs.put("/w/loop", { type: "symlink", target: "loop" });
    await assert.rejects(statFollow(fs, "/w/loop"), (e: ConnectError) => e.code === Code.FailedPrecondition);
  });

  it("reads owner names from the guest once per sandbox for a while", async () => {
    const fs = new FakeFsAgent();
    fs.put("/etc/passwd", {
      data: Buffer.from("root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/sh\n"),
    });
    let reads = 0;
    const counting = Object.assign(Object.create(fs) as FakeFsAgent, {
      readFile: (p: string, o?: { length?: number }) => {
        reads++;
        return fs.readFile(p, o);
      },
    });
    let now = 0;
    const names = new GuestNames(1000, () => now);
    const n = await names.get("sb", counting);
    assert.equal(n.users.get(1000), "user");
    assert.equal(n.groups.size, 0, "no /etc/group: numbers only");
    await names.get("sb", counting);
    assert.equal(reads, 2, "cached: passwd and group read once");
    now = 5000;
    await names.get("sb", counting);
    assert.equal(reads, 4, "re-read once stale");
  });
});
