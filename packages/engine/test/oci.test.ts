// Root images from OCI images, against a real registry: docker-registry
// started here on loopback, images made with umoci and pushed with skopeo,
// pulled and unpacked by ensureOciRoot; an oci-archive; hostile layers
// (a `..` name, a write through a symlink to the host, a 10 GiB sparse
// file) refused with nothing written outside the build dir.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { distroOf, ensureOciRoot, isOciReference, skopeoSource } from "../src/image/oci.js";
import { pullAuth } from "../src/image/registries.js";
import { type BuildProgress, defaultDataDir, Engine, MitosError } from "../src/index.js";

const work = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-oci-test-"));
const cacheDir = path.join(work, "cache");
let registry: ReturnType<typeof spawn> | undefined;
let port = 0;

const sh = (cmd: string, args: string[], cwd = work) => execFileSync(cmd, args, { cwd, stdio: "pipe" }).toString();

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

/** An OCI layout `name:1` with the given files, ENV and WORKDIR, made with umoci. */
function makeImage(name: string, files: Record<string, string>, setup?: (rootfs: string) => void): string {
  const layout = path.join(work, name);
  sh("umoci", ["init", "--layout", layout]);
  sh("umoci", ["new", "--image", `${layout}:1`]);
  const bundle = path.join(work, `${name}-bundle`);
  sh("umoci", ["unpack", "--image", `${layout}:1`, bundle]);
  for (const [p, content] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(bundle, "rootfs", p)), { recursive: true });
    fs.writeFileSync(path.join(bundle, "rootfs", p), content);
  }
  setup?.(path.join(bundle, "rootfs"));
  sh("umoci", ["repack", "--image", `${layout}:1`, bundle]);
  sh("umoci", [
    "config",
    "--image",
    `${layout}:1`,
    "--config.env",
    "GREETING=hello from env",
    "--config.workingdir",
    "/app",
  ]);
  return layout;
}

/** The text of a file inside an ext4 image, read with debugfs (no mount). */
function catImage(img: string, p: string): string {
  return execFileSync("debugfs", ["-R", `cat ${p}`, img], { stdio: ["ignore", "pipe", "ignore"] }).toString();
}

before(async () => {
  port = await freePort();
  const cfg = path.join(work, "registry.yml");
  fs.writeFileSync(
    cfg,
    `version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: ${work}/registry\nhttp:\n  addr: 127.0.0.1:${port}\nlog:\n  level: error\n`,
  );
  registry = spawn("docker-registry", ["serve", cfg], { stdio: "ignore" });
  for (let i = 0; i < 100; i++) {
    const ok = await fetch(`http://127.0.0.1:${port}/v2/`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("docker-registry did not come up");
});

after(() => {
  registry?.kill();
  fs.rmSync(work, { recursive: true, force: true });
});

describe("OCI references", () => {
  it("tells OCI references from built-in roots, and loopback registries from others", () => {
    for (const r of [
      "python:3.12-slim",
      "docker.io/library/python:3.12",
      "127.0.0.1:5000/t/a:1",
      "oci-archive:/x.tar",
    ]) {
      assert.ok(isOciReference(r), r);
    }
    for (const r of ["base", "python"]) assert.ok(!isOciReference(r), r);
    assert.deepEqual(skopeoSource("127.0.0.1:5000/t/a:1"), { source: "docker://127.0.0.1:5000/t/a:1", tls: false });
    assert.deepEqual(skopeoSource("localhost:5000/a"), { source: "docker://localhost:5000/a", tls: false });
    assert.deepEqual(skopeoSource("registry.example:5000/a:1"), {
      source: "docker://registry.example:5000/a:1",
      tls: true,
    });
    assert.deepEqual(skopeoSource("registry.example:5000/a:1", ["registry.example:5000"]).tls, false);
    assert.deepEqual(skopeoSource("python:3.12"), { source: "docker://python:3.12", tls: true });
  });
});

describe("package managers of unpacked roots", () => {
  const tree = (files: Record<string, string>, links: Record<string, string> = {}) => {
    const root = fs.mkdtempSync(path.join(work, "distro-"));
    for (const [p, content] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(root, p)), { recursive: true });
      fs.writeFileSync(path.join(root, p), content);
    }
    for (const [p, target] of Object.entries(links)) {
      fs.mkdirSync(path.dirname(path.join(root, p)), { recursive: true });
      fs.symlinkSync(target, path.join(root, p));
    }
    return root;
  };

  it("finds apt and the mirrors of one-line and deb822 sources, apk and its repositories, or neither", () => {
    const apt = tree({
      "usr/bin/apt-get": "",
      "etc/apt/sources.list": "# comment\ndeb [trusted=yes] http://mirror.example/debian bookworm main\n",
      "etc/apt/sources.list.d/debian.sources":
        "Types: deb\nURIs: http://deb.debian.org/debian https://security.example/ds\nSuites: bookworm\n",
    });
    assert.deepEqual(distroOf(apt), {
      packageManager: "apt",
      mirrors: ["http://mirror.example/debian", "http://deb.debian.org/debian", "https://security.example/ds"],
    });
    const apk = tree({
      "etc/alpine-release": "3.20.0\n",
      "etc/apk/repositories": "https://dl-cdn.alpinelinux.org/alpine/v3.20/main\n@local /srv/repo\n",
    });
    assert.deepEqual(distroOf(apk), {
      packageManager: "apk",
      mirrors: ["https://dl-cdn.alpinelinux.org/alpine/v3.20/main"],
    });
    assert.deepEqual(distroOf(tree({ "bin/busybox": "" })), { mirrors: [] });
  });

  it("reads nothing through a symlink the image made (a source list linked to a host file)", () => {
    const secret = path.join(work, "host-secret");
    fs.writeFileSync(secret, "deb http://leaked.example/ x main\n");
    const linked = tree({ "usr/bin/apt-get": "" }, { "etc/apt/sources.list": secret });
    assert.deepEqual(distroOf(linked), { packageManager: "apt", mirrors: [] });
    const dirLinked = tree({ "usr/bin/apt-get": "" }, { etc: path.dirname(secret) });
    assert.deepEqual(distroOf(dirLinked).mirrors, []);
  });
});

describe("root images from OCI images", () => {
  it("pulls from a registry on loopback: files, ENV and WORKDIR, pinned by digest, cached", async () => {
    const layout = makeImage("app", { "app/hello.txt": "hello from the image\n", "etc/os-release": "ID=test\n" });
    sh("skopeo", [
      "copy",
      "--quiet",
      "--dest-tls-verify=false",
      `oci:${layout}:1`,
      `docker://127.0.0.1:${port}/test/app:1`,
    ]);
    const steps: string[] = [];
    const onProgress = (p: BuildProgress) => steps.push(p.step);
    const root = await ensureOciRoot(`127.0.0.1:${port}/test/app:1`, { cacheDir, onProgress });
    assert.match(root.digest, /^sha256:[0-9a-f]{64}$/);
    assert.equal(catImage(root.rootfs, "/app/hello.txt"), "hello from the image\n");
    assert.equal(root.config.env.GREETING, "hello from env");
    assert.equal(root.config.workdir, "/app");
    assert.ok(
      steps.some((s) => s.startsWith("pull:") && s.includes(`@${root.digest}`)),
      steps.join("; "),
    );
    const again = await ensureOciRoot(`127.0.0.1:${port}/test/app:1`, {
      cacheDir,
      onProgress: (p) => steps.push(p.step),
    });
    assert.equal(again.rootfs, root.rootfs);
    assert.equal(steps.at(-1), "cached");
    assert.deepEqual(again.config, root.config);
  });

  it("pulls from a registry that wants credentials: refused without, pulled with the configured ones", async () => {
    const authPort = await freePort();
    const htpasswd = path.join(work, "htpasswd");
    const hashed = execFileSync("python3", [
      "-c",
      "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
      "s3cret-pw",
    ])
      .toString()
      .trim();
    fs.writeFileSync(htpasswd, `puller:${hashed}\n`);
    const cfg = path.join(work, "registry-auth.yml");
    fs.writeFileSync(
      cfg,
      `version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: ${work}/registry-auth\nhttp:\n  addr: 127.0.0.1:${authPort}\n` +
        `auth:\n  htpasswd:\n    realm: mitos-test\n    path: ${htpasswd}\nlog:\n  level: error\n`,
    );
    const private_ = spawn("docker-registry", ["serve", cfg], { stdio: "ignore" });
    try {
      for (let i = 0; i < 100; i++) {
        const status = await fetch(`http://127.0.0.1:${authPort}/v2/`).then(
          (r) => r.status,
          () => 0,
        );
        if (status === 401) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      const layout = makeImage("private", { "app/secret.txt": "only with credentials\n" });
      const ref = `127.0.0.1:${authPort}/team/private:1`;
      sh("skopeo", [
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--dest-creds",
        "puller:s3cret-pw",
        `oci:${layout}:1`,
        `docker://${ref}`,
      ]);
      await assert.rejects(ensureOciRoot(ref, { cacheDir }), (e: unknown) => {
        assert.ok(e instanceof MitosError);
        assert.match(e.remediation, /registry_auth_file|registry_credentials/);
        return true;
      });
      const dataDir = path.join(work, "pull-data");
      fs.mkdirSync(dataDir);
      const auth = pullAuth(
        { credentials: { [`127.0.0.1:${authPort}`]: { username: "puller", password: "s3cret-pw" } } },
        dataDir,
      );
      assert.ok(auth.authFile);
      assert.equal(fs.statSync(auth.authFile).mode & 0o777, 0o600, "the auth file is its owner's only");
      const root = await ensureOciRoot(ref, { cacheDir, authFile: auth.authFile });
      assert.equal(catImage(root.rootfs, "/app/secret.txt"), "only with credentials\n");
      assert.throws(() => pullAuth({ insecure: ["http://registry.example/x"] }, dataDir), /not a registry host/);
    } finally {
      private_.kill();
    }
  });

  it("takes an oci-archive", async () => {
    const layout = makeImage("arch", { "data/x.txt": "from an archive\n" });
    const archive = path.join(work, "arch.tar");
    sh("skopeo", ["copy", "--quiet", `oci:${layout}:1`, `oci-archive:${archive}`]);
    const root = await ensureOciRoot(`oci-archive:${archive}`, { cacheDir });
    assert.equal(catImage(root.rootfs, "/data/x.txt"), "from an archive\n");
  });

  it("refuses hostile layers and writes nothing outside its build dir", async () => {
    const escapeDir = path.join(work, "escaped");
    fs.mkdirSync(escapeDir);
    const cases: Array<{ name: string; make: (dir: string) => void; want: RegExp }> = [
      {
        name: "dotdot",
        make: (dir) => {
          fs.mkdirSync(path.join(dir, "a"));
          fs.writeFileSync(path.join(dir, "a", "x"), "x");
          // GNU tar keeps a `../` name with -P; the layer then names ../../escaped-x.
          sh("tar", ["-cPf", path.join(work, "dotdot.tar"), "--transform", "s,^a/x,../../escaped-x,", "a/x"], dir);
        },
        want: /leaves the root/,
      },
      {
        name: "symlink",
        make: (dir) => {
          fs.symlinkSync(escapeDir, path.join(dir, "esc"));
          fs.mkdirSync(path.join(dir, "esc2"));
          fs.writeFileSync(path.join(dir, "esc2", "pwned"), "bad");
          sh("tar", ["-cf", path.join(work, "symlink.tar"), "esc", "--transform", "s,^esc2,esc,", "esc2/pwned"], dir);
        },
        want: /through the symlink esc/,
      },
      {
        name: "sparse",
        make: (dir) => {
          sh("truncate", ["-s", "10G", path.join(dir, "big.img")]);
          sh("tar", ["--sparse", "-cf", path.join(work, "sparse.tar"), "big.img"], dir);
        },
        want: /entry of type S/,
      },
      {
        // A PAX sparse file is a plain entry to tar readers that skip its map; unpacked, it is 10 GiB.
        name: "paxsparse",
        make: (dir) => {
          sh("truncate", ["-s", "10G", path.join(dir, "big.img")]);
          sh("tar", ["--sparse", "--format=pax", "-cf", path.join(work, "paxsparse.tar"), "big.img"], dir);
        },
        want: /unpacks to more than|sparse/,
      },
    ];
    for (const c of cases) {
      const dir = path.join(work, `src-${c.name}`);
      fs.mkdirSync(dir);
      c.make(dir);
      const layout = makeImage(`hostile-${c.name}`, {});
      sh("umoci", ["raw", "add-layer", "--image", `${layout}:1`, path.join(work, `${c.name}.tar`)]);
      await assert.rejects(ensureOciRoot(`oci:${layout}:1`, { cacheDir }), (e: unknown) => {
        assert.ok(e instanceof MitosError, String(e));
        assert.equal(e.code, "invalid_input", `${c.name}: ${e.message} ${e.detail ?? ""}`);
        assert.match(e.message, c.want);
        return true;
      });
    }
    assert.deepEqual(fs.readdirSync(escapeDir), [], "nothing written through the symlink");
    assert.ok(!fs.existsSync(path.join(work, "..", "escaped-x")), "nothing written above the build dir");
    assert.deepEqual(
      fs.readdirSync(cacheDir).filter((n) => n.startsWith(".oci-") || n.includes(".tmp-")),
      [],
      "no build dir left behind",
    );
  });
});

/** A shell for a FROM-scratch image: the host's static busybox and the applets the test runs. */
function withBusybox(rootfs: string): void {
  fs.mkdirSync(path.join(rootfs, "bin"), { recursive: true });
  fs.copyFileSync("/bin/busybox", path.join(rootfs, "bin", "busybox"));
  fs.chmodSync(path.join(rootfs, "bin", "busybox"), 0o755);
  for (const applet of ["sh", "cat", "pwd", "id", "env", "ls", "true"]) {
    fs.symlinkSync("busybox", path.join(rootfs, "bin", applet));
  }
}

describe("templates from OCI images (real VMs)", () => {
  it("a sandbox of a template from 127.0.0.1:PORT/test/app:1 sees the image's files, ENV and WORKDIR; an oci-archive too", async () => {
    const layout = makeImage("vmapp", { "app/hello.txt": "hello from the registry\n" }, withBusybox);
    sh("skopeo", [
      "copy",
      "--quiet",
      "--dest-tls-verify=false",
      `oci:${layout}:1`,
      `docker://127.0.0.1:${port}/test/vmapp:1`,
    ]);
    const archive = path.join(work, "vmapp.tar");
    sh("skopeo", ["copy", "--quiet", `oci:${layout}:1`, `oci-archive:${archive}`]);
    const dataDir = tempDataDir("test-oci-templates");
    const engine = await Engine.open({ dataDir, imagesDir: path.join(defaultDataDir(), "images"), poolTargets: {} });
    try {
      for (const [id, image] of [
        ["oci-app", `127.0.0.1:${port}/test/vmapp:1`],
        ["oci-archive", `oci-archive:${archive}`],
      ] as const) {
        await engine.createTemplate(id, { image, resources: { memSizeMib: 256 } });
        const rec = engine.templateRecord(id);
        assert.equal(rec?.image?.reference, image);
        assert.match(rec?.image?.digest ?? "", /^sha256:[0-9a-f]{64}$/);
        const s = await engine.create(id);
        const r = await engine.exec(s.id, { command: 'cat hello.txt; echo "$GREETING"; pwd; ls -d /workspace' }).result;
        assert.equal(r.exitCode, 0, r.stderr.toString());
        assert.equal(r.stdout.toString(), "hello from the registry\nhello from env\n/app\n/workspace\n");
        // A call's own cwd still wins over the image's WORKDIR.
        const w = await engine.exec(s.id, { command: "pwd", cwd: "/workspace" }).result;
        assert.equal(w.stdout.toString(), "/workspace\n");
        await engine.terminate(s.id);
      }
    } finally {
      await engine.close({ killSandboxes: true });
      removeDataDir(dataDir);
    }
  });
});
