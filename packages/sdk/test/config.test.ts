import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { resolveConfig, tokenFilePath } from "../src/config.js";

const noFile = (file: string): string => {
  throw Object.assign(new Error(`ENOENT: ${file}`), { code: "ENOENT" });
};

describe("config resolution", () => {
  it("defaults to loopback:8080 without a token when nothing is set", () => {
    const c = resolveConfig({}, {}, noFile);
    assert.equal(c.baseUrl, "http://127.0.0.1:8080");
    assert.equal(c.apiKey, undefined);
    assert.equal(c.maxRetries, 2);
  });

  it("prefers options over the environment over the token file", () => {
    const env = { MITOS_BASE_URL: "http://env:1", MITOS_API_KEY: "env-key" };
    const file = () => "file-key\n";
    assert.deepEqual(resolveConfig({ baseUrl: "http://opt:2/", apiKey: "opt-key" }, env, file), {
      baseUrl: "http://opt:2",
      apiKey: "opt-key",
      maxRetries: 2,
    });
    const fromEnv = resolveConfig({}, env, file);
    assert.equal(fromEnv.baseUrl, "http://env:1");
    assert.equal(fromEnv.apiKey, "env-key");
    assert.equal(resolveConfig({}, {}, file).apiKey, "file-key");
  });

  it("treats empty strings as unset", () => {
    const c = resolveConfig({ apiKey: "" }, { MITOS_BASE_URL: "", MITOS_API_KEY: " " }, () => "tok");
    assert.equal(c.baseUrl, "http://127.0.0.1:8080");
    assert.equal(c.apiKey, "tok");
  });

  it("reads the token from $MITOS_DATA_DIR/token, default /var/lib/mitos/token", () => {
    const seen: string[] = [];
    const read = (f: string) => {
      seen.push(f);
      return "  t0k \n";
    };
    assert.equal(resolveConfig({}, { MITOS_DATA_DIR: "/srv/m" }, read).apiKey, "t0k");
    assert.equal(resolveConfig({}, {}, read).apiKey, "t0k");
    assert.deepEqual(seen, ["/srv/m/token", "/var/lib/mitos/token"]);
    assert.equal(tokenFilePath({}), "/var/lib/mitos/token");
  });

  it("goes without a token when the file is unreadable or empty", () => {
    assert.equal(resolveConfig({}, {}, noFile).apiKey, undefined);
    assert.equal(resolveConfig({}, {}, () => "\n").apiKey, undefined);
  });
});
