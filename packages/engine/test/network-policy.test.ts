// The network policy's rules and the ruleset made from them (no VM): what
// each rule form means, what is refused, and that the generated ruleset is
// one nft accepts (checked by the real nft in a throwaway namespace).

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { describe, it } from "node:test";
import { MitosError } from "../src/errors.js";
import { checkPolicy, nameVerdict, parsePolicy, parseRule } from "../src/network/policy.js";
import { changePins, ruleset } from "../src/network/ruleset.js";

const hasNft = (() => {
  try {
    execFileSync("nft", ["--version"], { stdio: "ignore" });
    return process.getuid?.() === 0;
  } catch {
    return false;
  }
})();

describe("network policy rules", () => {
  it("parses every rule form, with and without a port", () => {
    assert.deepEqual(parseRule("10.1.2.3/16"), { kind: "cidr", cidr: { addr: "10.1.0.0", prefix: 16 } });
    assert.deepEqual(parseRule("198.51.100.7:8080"), {
      kind: "cidr",
      cidr: { addr: "198.51.100.7", prefix: 32 },
      port: 8080,
    });
    assert.deepEqual(parseRule("API.Example.com."), { kind: "name", name: "api.example.com", wildcard: false });
    assert.deepEqual(parseRule("*.example.com:443"), { kind: "name", name: "example.com", wildcard: true, port: 443 });
  });

  it("refuses what makes no sense, naming the rule", () => {
    for (const bad of [
      "",
      "10.0.0.0/33",
      "300.1.1.1",
      "host:0",
      "host:70000",
      "localhost",
      "a..b",
      "::1",
      "[::1]:80",
    ]) {
      assert.throws(
        () => parseRule(bad),
        (e: MitosError) => e instanceof MitosError && e.code === "invalid_input" && e.remediation.length > 0,
        bad,
      );
    }
    assert.throws(() => checkPolicy({ egress: "sometimes" }), /egress/);
    assert.throws(() => checkPolicy({ egress: "deny", allow: [] }), /unknown network field "allow"/);
    assert.throws(() => checkPolicy({ allow_out: "a.com" }), /list of strings/);
    assert.throws(() => checkPolicy({ allow_out: Array.from({ length: 257 }, (_, i) => `h${i}.com`) }), /at most 256/);
    assert.throws(() => checkPolicy([]), /object/);
  });

  it("normalizes: defaults, lower case, duplicates dropped", () => {
    assert.deepEqual(checkPolicy({}), { egress: "deny", allow_out: [], deny_out: [] });
    assert.deepEqual(checkPolicy({ egress: "allow", deny_out: ["A.com", "a.com"] }), {
      egress: "allow",
      allow_out: [],
      deny_out: ["a.com"],
    });
  });

  it("decides names: deny wins, wildcards match below the suffix only, ports pass through", () => {
    const p = parsePolicy(
      checkPolicy({ egress: "deny", allow_out: ["api.example.com:443", "*.cdn.net"], deny_out: ["bad.cdn.net"] }),
    );
    assert.deepEqual(nameVerdict(p, "api.example.com"), { allowed: true, ports: [443] });
    assert.deepEqual(nameVerdict(p, "x.cdn.net"), { allowed: true });
    assert.deepEqual(nameVerdict(p, "cdn.net"), { allowed: false });
    assert.deepEqual(nameVerdict(p, "bad.cdn.net"), { allowed: false });
    assert.deepEqual(nameVerdict(p, "other.example.com"), { allowed: false });
    const open = parsePolicy(checkPolicy({ egress: "allow", deny_out: ["evil.com"] }));
    assert.deepEqual(nameVerdict(open, "any.org"), { allowed: true, ports: [] });
    assert.deepEqual(nameVerdict(open, "evil.com"), { allowed: false });
  });
});

describe("the namespace ruleset", { skip: !hasNft && "needs root and nft" }, () => {
  it("is accepted by nft (check mode) for a policy using every rule form, and so are pin changes", () => {
    const p = parsePolicy(
      checkPolicy({
        egress: "deny",
        allow_out: ["198.51.100.0/24:8080", "10.5.0.0/16", "api.example.com", "*.foo.org:443"],
        deny_out: ["198.51.100.9", "198.51.100.7:22"],
      }),
    );
    const text = ruleset(
      p,
      { nsIp: "10.201.0.1", resolverIp: "10.201.0.0", resolverPort: 40000, extraDenied: ["192.0.2.5/32"] },
      [
        { ip: "203.0.113.4", ttl: 5 },
        { ip: "203.0.113.5", port: 443, ttl: 5 },
      ],
    );
    const ns = `mitos-rs-test-${process.pid}`;
    execFileSync("ip", ["netns", "add", ns]);
    try {
      execFileSync("ip", ["-n", ns, "link", "add", "tap0", "type", "veth", "peer", "name", "eth0"]);
      const nft = (input: string, check = true) =>
        execFileSync("nsenter", [`--net=/run/netns/${ns}`, "--", "nft", ...(check ? ["-c"] : []), "-f", "-"], {
          input,
        });
      nft(text, false);
      nft(text, false); // replacing a loaded table is one transaction too
      nft(
        changePins("add", [
          { ip: "203.0.113.6", ttl: 1 },
          { ip: "203.0.113.6", port: 80, ttl: 1 },
        ]),
        false,
      );
      nft(changePins("delete", [{ ip: "203.0.113.6", ttl: 1 }]), false);
      const listed = execFileSync("nsenter", [
        `--net=/run/netns/${ns}`,
        "--",
        "nft",
        "list",
        "set",
        "inet",
        "mitos",
        "pin_port",
      ]).toString();
      assert.match(listed, /203\.0\.113\.6 \. 80/);
      assert.match(listed, /203\.0\.113\.5 \. 443/);
    } finally {
      execFileSync("ip", ["netns", "del", ns]);
    }
  });
});
