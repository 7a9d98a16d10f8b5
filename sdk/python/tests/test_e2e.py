"""End to end against a real mitosd: set MITOS_BASE_URL and MITOS_API_KEY.

packages/sdk/test/python-sdk.test.ts starts a mitosd and runs this suite.
"""

import base64
import os
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.request

import mitos

BASE_URL = os.environ.get("MITOS_BASE_URL", "").strip()
API_KEY = os.environ.get("MITOS_API_KEY", "").strip()
HERE = os.path.dirname(os.path.abspath(__file__))
SDK_DIR = os.path.dirname(HERE)

SKIP_REASON = "e2e: set MITOS_BASE_URL and MITOS_API_KEY to run against a real mitosd"


@unittest.skipUnless(BASE_URL and API_KEY, SKIP_REASON)
class E2ETest(unittest.TestCase):
    server = None  # type: mitos.SandboxServer
    sb = None  # type: mitos.Sandbox

    @classmethod
    def setUpClass(cls):
        cls.server = mitos.SandboxServer(base_url=BASE_URL, api_key=API_KEY)
        cls.sb = cls.server.create("python")

    @classmethod
    def tearDownClass(cls):
        try:
            cls.sb.terminate()
        except mitos.MitosError:
            pass

    def _ids(self):
        return {s.id for s in self.server.list_sandboxes()}

    def test_api_example_verbatim(self):
        before = self._ids()
        env = dict(os.environ, MITOS_BASE_URL=BASE_URL, MITOS_API_KEY=API_KEY)
        env["PYTHONPATH"] = SDK_DIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            proc = subprocess.run(
                [sys.executable, os.path.join(SDK_DIR, "examples", "fork_swarm.py")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=120,
            )
        finally:
            # The example leaves its sandboxes running: clean up after it.
            for sid in self._ids() - before:
                try:
                    self.server.get(sid).terminate()
                except mitos.NotFoundError:
                    pass
        self.assertEqual(proc.returncode, 0, proc.stderr.decode())
        # print() of stdout that already ends in "\n": each square, then a blank line.
        expected = "".join("%d\n\n" % (i * i) for i in range(8))
        self.assertEqual(proc.stdout.decode(), expected)

    def test_sandbox_token_reaches_its_sandbox_only(self):
        self.assertTrue(self.sb.token and self.sb.token.startswith("msb_"))
        self.assertTrue(self.sb.fork_token and self.sb.fork_token != self.sb.token)
        own = mitos.SandboxServer(base_url=BASE_URL, api_key=self.sb.token)
        mine = own.get(self.sb.id)
        self.assertIsNone(mine.token)  # its own token does not read its tokens back
        self.assertEqual(mine.exec("echo via-token").stdout, "via-token\n")
        with self.assertRaises(mitos.NotFoundError):
            own.list_sandboxes()

    def test_exec_stdout_stderr_exit_code(self):
        r = self.sb.exec("echo out; echo err >&2; exit 3")
        self.assertEqual((r.stdout, r.stderr, r.exit_code), ("out\n", "err\n", 3))
        self.assertGreaterEqual(r.exec_time_ms, 0)
        r = self.sb.exec("echo $FOO; pwd", env={"FOO": "bar"}, cwd="/tmp")
        self.assertEqual((r.exit_code, r.stdout), (0, "bar\n/tmp\n"))
        r = self.sb.exec("python3", args=["-c", "import sys; print(sys.argv[1:])", "a b"])
        self.assertEqual(r.stdout, "['a b']\n")
        r = self.sb.exec("printf 'caf\\303\\251 \\342\\230\\203'")
        self.assertEqual(r.stdout, "café ☃")

    def test_callbacks_get_output_before_the_command_ends(self):
        chunks = []
        errs = []
        t0 = time.monotonic()
        r = self.sb.exec(
            "echo first; echo oops >&2; sleep 1.5; echo second",
            on_stdout=lambda s: chunks.append((time.monotonic() - t0, s)),
            on_stderr=errs.append,
        )
        self.assertEqual(r.exit_code, 0)
        self.assertEqual(r.stdout, "first\nsecond\n")
        self.assertEqual("".join(errs), "oops\n")
        self.assertGreaterEqual(len(chunks), 2, chunks)
        self.assertEqual(chunks[0][1], "first\n")
        self.assertEqual("".join(c for _, c in chunks), "first\nsecond\n")
        self.assertGreaterEqual(chunks[-1][0] - chunks[0][0], 1.0, chunks)

    def test_run_code(self):
        self.assertEqual(self.sb.run_code("x = 41").exit_code, 0)
        e = self.sb.run_code("x + 1")
        self.assertEqual((e.text, e.exit_code, e.error), ("42", 0, None))
        seen = []
        e = self.sb.run_code("print('hi')\n1/0", on_stdout=seen.append)
        self.assertEqual(seen, ["hi\n"])
        self.assertEqual(e.logs.stdout, ["hi\n"])
        self.assertEqual((e.exit_code, e.error.name, e.error.value), (1, "ZeroDivisionError", "division by zero"))
        self.assertIn("ZeroDivisionError", e.error.traceback)
        e = self.sb.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
        png = [r for r in e.results if r.png]
        self.assertEqual(len(png), 1, e.results)
        self.assertEqual(base64.b64decode(png[0].png)[:8], b"\x89PNG\r\n\x1a\n")
        self.assertFalse(png[0].is_main_result)
        self.assertIn("image/png", png[0].formats())
        ctx = self.sb.create_code_context()
        self.assertEqual(self.sb.run_code("x", context=ctx).error.name, "NameError")
        self.assertIn(ctx.id, [c.id for c in self.sb.list_code_contexts()])
        self.sb.remove_code_context(ctx)
        with self.assertRaises(mitos.NotFoundError):
            self.sb.run_code("1", context=ctx.id)
        e = self.sb.run_code("while True: pass", timeout=2)
        self.assertEqual((e.exit_code, e.error.name), (124, "TimeoutError"))
        child = self.sb.fork(1)[0]
        try:
            self.assertEqual(child.run_code("x").text, "41")
        finally:
            child.terminate()

    def test_files_round_trip(self):
        data = os.urandom(1 << 20)
        files = self.sb.files
        files.mkdir("/root/py/dir")
        self.assertEqual(files.write("/root/py/blob.bin", data), len(data))
        self.assertEqual(files.read("/root/py/blob.bin"), data)
        files.write("/root/py/hello.txt", "héllo")
        self.assertEqual(files.read_text("/root/py/hello.txt"), "héllo")
        self.assertEqual(sorted(f.name for f in files.list("/root/py")), ["blob.bin", "dir", "hello.txt"])
        st = files.stat("/root/py/blob.bin")
        self.assertEqual((st.size, st.is_dir, st.path), (1 << 20, False, "/root/py/blob.bin"))
        self.assertTrue(files.stat("/root/py/dir").is_dir)
        self.assertGreater(st.modified_at_unix, 1_600_000_000)
        check = self.sb.exec("sha256sum /root/py/blob.bin")
        import hashlib

        self.assertEqual(check.stdout.split()[0], hashlib.sha256(data).hexdigest())
        files.remove("/root/py", recursive=True)
        with self.assertRaises(mitos.NotFoundError):
            files.stat("/root/py")
        self.assertFalse(files.exists("/root/py"))

    def test_checkpoint_create_and_fork_from_it(self):
        self.sb.files.write("/workspace/cp.txt", "saved")
        cp = self.sb.checkpoint(name="py")
        self.assertIsInstance(cp, mitos.CheckpointInfo)
        self.assertEqual((cp.name, cp.sandbox_id), ("py", self.sb.id))
        self.assertGreater(cp.bytes, 0)
        self.assertIn(cp.id, [c.id for c in self.server.list_checkpoints()])
        made = []
        try:
            made.append(self.server.from_checkpoint(cp.id))
            made.extend(self.server.fork_checkpoint(cp.id, 2))
            self.assertEqual(len(made), 3)
            for s in made:
                self.assertEqual(s.files.read_text("/workspace/cp.txt"), "saved")
        finally:
            for s in made:
                s.terminate()
            self.server.delete_checkpoint(cp.id)
        self.assertNotIn(cp.id, [c.id for c in self.server.list_checkpoints()])
        with self.assertRaises(mitos.NotFoundError):
            self.server.from_checkpoint(cp.id)

    def test_hibernate_and_resume(self):
        sb = self.server.create("python")
        try:
            sb.files.write("/workspace/h.txt", "asleep")
            sb.pause(hibernate=True)
            self.assertEqual(self.server.get(sb.id).memory.private_bytes, 0)
            sb.resume()
            self.assertEqual(sb.files.read_text("/workspace/h.txt"), "asleep")
        finally:
            sb.terminate()

    def test_template_build_log(self):
        events = []
        t = self.server.create_template(
            "py-follow", image="base", resources={"mem_size_mib": 256}, init=["echo py-step-out"], on_event=events.append
        )
        self.assertEqual(t.id, "py-follow")
        self.assertRegex(t.version or "", r"^[0-9a-f]{12}$")
        self.assertEqual(t.steps, 1)
        self.assertTrue(any(e["type"] == "step" and e["step"] == 1 and e["of"] == 1 for e in events), events)
        self.assertTrue(any(e["type"] == "output" and "py-step-out" in e["data"] for e in events), events)
        with self.assertRaises(mitos.InvalidInputError) as cm:
            self.server.create_template("py-follow-bad", image="base", init=["exit 5"], on_event=events.append)
        self.assertIn("step 1 of 1 failed with exit 5", str(cm.exception))
        self.server.delete_template("py-follow")

    def test_workspace_disk_template(self):
        self.server.create_template("py-disk", image="base", disk_size_mib=128)
        sb = self.server.create("py-disk")
        try:
            dev = sb.exec("df -k /workspace | tail -1").stdout.split()[0]
            self.assertRegex(dev, r"^/dev/vd[a-z]$")
            sb.files.write("/workspace/d.txt", "on-disk")
            sb.pause(hibernate=True)
            self.assertTrue(sb.hibernated)
            self.assertTrue(self.server.get(sb.id).hibernated)
            sb.resume()
            self.assertFalse(sb.hibernated)
            self.assertEqual(sb.files.read_text("/workspace/d.txt"), "on-disk")
        finally:
            sb.terminate()
        self.server.delete_template("py-disk")

    def test_network_policy(self):
        self.server.create_template("py-net", image="base", network={"egress": "deny"})
        sb = self.server.create("py-net", network={"egress": "deny", "allow_out": ["192.0.2.0/24:443"]})
        try:
            self.assertEqual(sb.network, {"egress": "deny", "allow_out": ["192.0.2.0/24:443"], "deny_out": []})
            # Refused by the kernel at once (exit 7: could not connect), not after curl's 5 s.
            t0 = time.time()
            self.assertEqual(sb.exec("curl -sS -m 5 http://198.51.100.3/").exit_code, 7)
            self.assertLess(time.time() - t0, 4)
            sb.set_network("allow", deny_out=["203.0.113.0/24"])
            self.assertEqual(self.server.get(sb.id).network["egress"], "allow")
            with self.assertRaises(mitos.InvalidInputError):
                sb.set_network("sometimes")
        finally:
            sb.terminate()
        with self.assertRaises(mitos.InvalidInputError):
            self.server.create("python", network={"egress": "allow"})
        self.server.delete_template("py-net")

    def test_ports_through_mitosd(self):
        self.sb.exec("mkdir -p /srv/p && echo from-python > /srv/p/x.txt")
        self.sb.exec("cd /srv/p && nohup python3 -m http.server 8001 >/dev/null 2>&1 &")
        host = self.sb.get_host(8001)
        self.assertTrue(host.startswith("8001-%s." % self.sb.id), host)
        exposed = self.sb.expose(8001)
        for _ in range(50):
            req = urllib.request.Request(exposed["url"] + "x.txt", headers={exposed["token_header"]: exposed["token"]})
            try:
                with urllib.request.urlopen(req, timeout=10) as res:
                    self.assertEqual(res.read(), b"from-python\n")
                    break
            except urllib.error.HTTPError as e:
                if e.code != 502:
                    raise
                time.sleep(0.2)
        else:
            self.fail("the guest server never answered")

    def test_fork_children_are_distinct_vms(self):
        self.sb.files.write("/root/marker", "from parent")
        kids = self.sb.fork(3)
        try:
            self.assertEqual(len(kids), 3)
            self.assertEqual(len({k.id for k in kids}), 3)
            for k in kids:
                self.assertEqual(k.parent_id, self.sb.id)
                self.assertEqual(k.exec("hostname").stdout.strip(), k.id)
                self.assertEqual(k.files.read_text("/root/marker"), "from parent")
            kids[0].files.write("/root/marker", "changed")
            self.assertEqual(kids[1].files.read_text("/root/marker"), "from parent")
            self.assertEqual(self.sb.files.read_text("/root/marker"), "from parent")
        finally:
            for k in kids:
                k.terminate()

    def test_errors(self):
        with self.assertRaises(mitos.NotFoundError):
            self.server.get("no-such-sandbox")
        bad = mitos.SandboxServer(base_url=BASE_URL, api_key="wrong-token")
        with self.assertRaises(mitos.UnauthorizedError) as cm:
            bad.list_sandboxes()
        self.assertEqual(cm.exception.status, 401)
        with self.assertRaises(mitos.UnauthorizedError):
            mitos.Sandbox(bad._http, bad._runtime, self.sb._info).exec("true")
        with self.assertRaises(mitos.TimeoutTooLargeError) as cm:
            self.sb.exec("true", timeout=10**6)
        self.assertIsInstance(cm.exception, mitos.InvalidInputError)
        with self.assertRaises(mitos.TimeoutTooLargeError):
            self.sb.set_timeout(10**7)
        ghost = mitos.Sandbox(self.server._http, self.server._runtime, self.sb._info.__class__(**dict(self.sb.to_dict(), id="ghost-1", memory=None)))
        with self.assertRaises(mitos.NotFoundError):
            ghost.exec("true")
        with self.assertRaises(mitos.NotFoundError):
            self.sb.files.read("/no/such/file")
        r = self.sb.exec("sleep 20", timeout=1)
        self.assertEqual(r.exit_code, 124)

    def test_lifecycle(self):
        sb = self.server.create("python", timeout=300)
        try:
            self.assertEqual(sb.template_id, "python")
            self.assertIsNotNone(sb.deadline_unix)
            sb.pause()
            self.assertEqual(sb.info().state, "paused")
            self.assertEqual(sb.state, "paused")
            with self.assertRaises(mitos.ConflictError):
                sb.exec("true")
            sb.resume()
            self.assertEqual(sb.exec("echo back").stdout, "back\n")
            t = sb.set_timeout(600)
            self.assertEqual(t.timeout_seconds, 600)
            self.assertGreater(t.deadline_unix, time.time() + 500)
            self.assertEqual(sb.deadline_unix, t.deadline_unix)
            self.assertIn(sb.id, self._ids())
            self.assertIn("python", [tpl.id for tpl in self.server.list_templates()])
            self.assertEqual(self.server.health().status, "ok")
        finally:
            sb.terminate()
        self.assertEqual(sb.state, "terminated")
        with self.assertRaises(mitos.NotFoundError):
            self.server.get(sb.id)

    def test_context_manager_terminates(self):
        with mitos.create("python", base_url=BASE_URL, api_key=API_KEY) as sb:
            self.assertEqual(sb.exec("echo in").stdout, "in\n")
            sid = sb.id
        with self.assertRaises(mitos.NotFoundError):
            self.server.get(sid)


if __name__ == "__main__":
    unittest.main()
