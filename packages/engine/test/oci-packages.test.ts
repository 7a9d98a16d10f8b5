// `packages` on a template built from an OCI image, end to end on real VMs
// (docs/templates.md "Packages on OCI images"): a Debian image the test
// makes (mmdebstrap --variant=apt, then umoci) whose apt source is a
// repository in the test's "internet" namespace (test-support/world.ts),
// serving a package the test builds with dpkg-deb. The image's own apt
// installs it in a VM that reaches only that mirror; the template's
// sandboxes have the package and no network device.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { suiteEngine } from "../../../test-support/suite-engine.js";
import { startWorld, type World } from "../../../test-support/world.js";
import type { BuildEvent } from "../src/build-log.js";
import { MitosError } from "../src/index.js";

const suite = suiteEngine("test-oci-pkgs");
const work = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-oci-pkgs-"));
const TEST_CACHE = "/var/cache/mitos-test";
const REPO = "198.51.100.5";
const REPO_PORT = 8081;
const started = Date.now();
let world: World;
let debian = "";

const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { cwd: work, stdio: "pipe" }).toString();
const sha256 = (f: string) => createHash("sha256").update(fs.readFileSync(f)).digest("hex");

/** A flat apt repository with one package, mitos-hello, whose program prints a greeting. */
function makeRepo(dir: string): void {
  const pkg = path.join(work, "mitos-hello");
  fs.mkdirSync(path.join(pkg, "DEBIAN"), { recursive: true });
  fs.mkdirSync(path.join(pkg, "usr/bin"), { recursive: true });
  fs.writeFileSync(
    path.join(pkg, "DEBIAN/control"),
    "Package: mitos-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: Mitos tests <tests@mitos.invalid>\nDescription: prints a greeting\n",
  );
  fs.writeFileSync(path.join(pkg, "usr/bin/mitos-hello"), "#!/bin/sh\necho hello from a package\n", { mode: 0o755 });
  fs.mkdirSync(dir, { recursive: true });
  const deb = path.join(dir, "mitos-hello_1.0_all.deb");
  sh("dpkg-deb", ["--root-owner-group", "--build", pkg, deb]);
  const control = sh("dpkg-deb", ["-f", deb]).trimEnd();
  const packages = `${control}\nFilename: ./mitos-hello_1.0_all.deb\nSize: ${fs.statSync(deb).size}\nSHA256: ${sha256(deb)}\n\n`;
  fs.writeFileSync(path.join(dir, "Packages"), packages);
  const list = path.join(dir, "Packages");
  fs.writeFileSync(
    path.join(dir, "Release"),
    `Origin: mitos-test\nLabel: mitos-test\nDate: ${new Date().toUTCString()}\nSHA256:\n ${sha256(list)} ${fs.statSync(list).size} Packages\n`,
  );
}

/** An OCI layout `<dir>:1` of a minimal Debian with apt whose only source is the test's repository. */
function makeDebianImage(dir: string): string {
  const args = [
    "--quiet",
    "--variant=apt",
    "--format=tar",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--customize-hook=rm -f $1/etc/apt/sources.list.d/*",
    `--customize-hook=echo "deb [trusted=yes] http://${REPO}:${REPO_PORT}/ ./" > $1/etc/apt/sources.list`,
    "bookworm",
  ];
  // mmdebstrap takes a minute: its tar is kept outside the clone (as the Kubernetes build is) for a week.
  const tar = path.join(
    TEST_CACHE,
    `debian-apt-${createHash("sha256").update(args.join("\n")).digest("hex").slice(0, 12)}.tar`,
  );
  const st = fs.statSync(tar, { throwIfNoEntry: false });
  if (!st || Date.now() - st.mtimeMs > 7 * 86_400_000) {
    fs.mkdirSync(TEST_CACHE, { recursive: true });
    sh("mmdebstrap", [...args, `${tar}.tmp`]);
    fs.renameSync(`${tar}.tmp`, tar);
  }
  sh("umoci", ["init", "--layout", dir]);
  sh("umoci", ["new", "--image", `${dir}:1`]);
  sh("umoci", ["raw", "add-layer", "--image", `${dir}:1`, tar]);
  sh("umoci", ["config", "--image", `${dir}:1`, "--config.env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
  return `oci:${dir}:1`;
}

before(async () => {
  makeRepo(path.join(work, "repo"));
  debian = makeDebianImage(path.join(work, "debian"));
  world = await startWorld({
    extraIps: [REPO],
    http: [],
    files: [{ host: REPO, port: REPO_PORT, dir: path.join(work, "repo") }],
    zone: {},
  });
});

after(async () => {
  world?.close();
  fs.rmSync(work, { recursive: true, force: true });
  // The roots this run made (its image's digest is new every run): not worth keeping.
  for (const f of fs.readdirSync(suite.imagesDir)) {
    const p = path.join(suite.imagesDir, f);
    if (/^rootfs-oci-/.test(f) && fs.statSync(p).mtimeMs >= started) fs.rmSync(p, { force: true });
  }
});

describe("packages on OCI images", () => {
  it("installs packages on a Debian image with its own apt, from the mirror its sources name", async () => {
    const events: BuildEvent[] = [];
    await suite.engine.createTemplate(
      "deb-pkgs",
      { image: debian, packages: ["mitos-hello"] },
      { onEvent: (e) => events.push(e) },
    );
    assert.ok(
      events.some((e) => e.type === "phase" && e.phase === "packages" && e.message.includes(`${REPO}:${REPO_PORT}`)),
      "the install VM reaches the image's mirror only",
    );
    assert.ok(events.some((e) => e.type === "output" && e.step === 0 && /mitos-hello/.test(e.data)));
    const sb = (await suite.engine.create("deb-pkgs")).id;
    const run = async (command: string) => {
      const r = await suite.engine.exec(sb, { command, timeoutMs: 30_000 }).result;
      assert.equal(r.exitCode, 0, `${command}: ${r.stderr.toString()}`);
      return r.stdout.toString();
    };
    assert.equal(await run("mitos-hello"), "hello from a package\n");
    assert.match(await run("dpkg -s mitos-hello"), /Status: install ok installed/);
    assert.equal(await run("ls /sys/class/net"), "lo\n", "the template itself has no network device");
    await suite.engine.terminate(sb);

    // The same image and packages again: the root comes from the image cache.
    const again: BuildEvent[] = [];
    await suite.engine.createTemplate(
      "deb-pkgs-2",
      { image: debian, packages: ["mitos-hello"], env: { OTHER: "1" } },
      { onEvent: (e) => again.push(e) },
    );
    assert.ok(
      again.some((e) => e.type === "phase" && e.phase === "packages" && /from the image cache/.test(e.message)),
    );
  });

  it("an unknown package fails with apt's output; an image without apt or apk is refused", async () => {
    await assert.rejects(
      suite.engine.createTemplate("deb-bad", { image: debian, packages: ["no-such-package"] }),
      (e: unknown) => {
        assert.ok(e instanceof MitosError);
        assert.match(e.message, /installing no-such-package with apt failed/);
        assert.match(e.detail ?? "", /Unable to locate package no-such-package/);
        return true;
      },
    );
    const bare = path.join(work, "bare");
    sh("umoci", ["init", "--layout", bare]);
    sh("umoci", ["new", "--image", `${bare}:1`]);
    await assert.rejects(
      suite.engine.createTemplate("bare-pkgs", { image: `oci:${bare}:1`, packages: ["git"] }),
      /has neither apt nor apk/,
    );
  });
});
