"""Connect framing, plus the clients against a small in-process fake server
(no mitosd needed)."""

import base64
import json
import struct
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mitos
from mitos._connect import (
    FLAG_END_STREAM,
    StreamText,
    b64decode,
    decode_envelopes,
    encode_envelope,
    end_stream_error,
    int64,
    read_envelope,
)


class EnvelopeTest(unittest.TestCase):
    def test_encode(self):
        env = encode_envelope({"path": "/a"})
        self.assertEqual(env[0], 0)
        self.assertEqual(struct.unpack(">I", env[1:5])[0], len(env) - 5)
        self.assertEqual(json.loads(env[5:]), {"path": "/a"})
        self.assertEqual(encode_envelope({}, FLAG_END_STREAM)[:5], b"\x02\x00\x00\x00\x02")

    def test_round_trip_several(self):
        body = encode_envelope({"open": {"path": "/f", "mode": 0}}) + encode_envelope({"data": "aGk="}) + encode_envelope({}, 2)
        self.assertEqual(decode_envelopes(body), [(0, {"open": {"path": "/f", "mode": 0}}), (0, {"data": "aGk="}), (2, {})])

    def test_big_length_is_big_endian(self):
        payload = {"data": "A" * 70000}
        env = encode_envelope(payload)
        self.assertEqual(env[1:5], struct.pack(">I", len(json.dumps(payload, separators=(",", ":")))))
        self.assertEqual(decode_envelopes(env), [(0, payload)])

    def test_truncated(self):
        env = encode_envelope({"a": 1})
        with self.assertRaises(mitos.InternalError):
            decode_envelopes(env[:-1])
        with self.assertRaises(mitos.InternalError):
            decode_envelopes(env[:3])

    def test_reads_from_a_trickling_stream(self):
        data = encode_envelope({"stdout": "eA=="}) + encode_envelope({}, 2)
        pos = [0]

        def read(n):  # one byte at a time, like a slow socket
            chunk = data[pos[0] : pos[0] + min(n, 1)]
            pos[0] += len(chunk)
            return chunk

        self.assertEqual(read_envelope(read), (0, b'{"stdout":"eA=="}'))
        self.assertEqual(read_envelope(read), (2, b"{}"))
        self.assertIsNone(read_envelope(read))

    def test_end_stream_error(self):
        self.assertIsNone(end_stream_error({}))
        e = end_stream_error(
            {"error": {"code": "not_found", "message": 'no sandbox "x"'}, "metadata": {"x-mitos-error-code": ["not_found"]}}
        )
        self.assertIsInstance(e, mitos.NotFoundError)
        self.assertEqual(e.message, 'no sandbox "x"')

    def test_base64_and_int64(self):
        self.assertEqual(b64decode(base64.b64encode(b"\x00\xff\xfe").decode()), b"\x00\xff\xfe")
        self.assertEqual(b64decode("_-8"), b"\xff\xef")  # URL-safe, unpadded
        self.assertEqual(b64decode(None), b"")
        self.assertEqual(int64("1048576"), 1048576)
        self.assertEqual(int64(7), 7)
        self.assertEqual(int64(None), 0)

    def test_stream_text_keeps_split_characters(self):
        chunks = []
        st = StreamText(chunks.append)
        snow = "☃".encode()
        st.push(b"a" + snow[:1])
        st.push(snow[1:])
        st.push(b"b")
        self.assertEqual(st.end(), "a☃b")
        self.assertEqual("".join(chunks), "a☃b")
        self.assertEqual(chunks[0], "a")


class FakeMitosd(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    calls = []  # (path, headers, body)
    fork_failures = 1

    def log_message(self, *a):
        pass

    def _send(self, status, body, content_type="application/json", headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        FakeMitosd.calls.append((self.path, dict(self.headers), body))
        sb = {"id": "sb-1", "template_id": "python", "parent_id": None, "state": "ready", "fork_time_ms": 3}
        if self.path == "/v1/fork":
            if FakeMitosd.fork_failures > 0:
                FakeMitosd.fork_failures -= 1
                err = {"error": {"code": "rate_limited", "message": "slow down", "remediation": "wait"}}
                return self._send(429, json.dumps(err).encode(), headers={"Retry-After": "0.05"})
            return self._send(200, json.dumps(sb).encode())
        if self.path == "/v1/sandboxes/sb-1/fork":
            kids = [dict(sb, id="sb-c%d" % i, parent_id="sb-1") for i in range(json.loads(body)["count"])]
            return self._send(200, json.dumps({"sandboxes": kids, "fork_time_ms": 5}).encode())
        if self.path == "/sandbox.v1.Sandbox/ExecStream":
            (flags, req), = decode_envelopes(body)
            out = b"".join(
                [
                    encode_envelope({"stdout": base64.b64encode(b"hi\n").decode()}),
                    encode_envelope({"stderr": base64.b64encode(req["command"].encode()).decode()}),
                    encode_envelope({"exit": {"exitCode": 3, "execTimeMs": 12, "error": ""}}),
                    encode_envelope({}, FLAG_END_STREAM),
                ]
            )
            return self._send(200, out, "application/connect+json")
        if self.path == "/sandbox.v1.Sandbox/WriteFile":
            msgs = decode_envelopes(body)
            n = sum(len(base64.b64decode(m["data"])) for _, m in msgs[1:])
            out = encode_envelope({"bytesWritten": str(n)}) + encode_envelope({}, FLAG_END_STREAM)
            return self._send(200, out, "application/connect+json")
        if self.path == "/sandbox.v1.Sandbox/ReadFile":
            out = encode_envelope(
                {"error": {"code": "not_found", "message": "open /x: no such file"}, "metadata": {"x-mitos-error-code": ["not_found"]}},
                FLAG_END_STREAM,
            )
            return self._send(200, out, "application/connect+json")
        if self.path == "/sandbox.v1.Sandbox/Stat":
            info = {"name": "f", "path": "/f", "isDir": False, "size": "5000000000", "mode": 420, "modifiedAtUnix": "1700000000"}
            return self._send(200, json.dumps(info).encode())
        if self.path == "/sandbox.v1.Sandbox/Mkdir":
            err = {"code": "failed_precondition", "message": "sandbox is paused"}
            return self._send(412, json.dumps(err).encode(), headers={"x-mitos-error-code": "conflict"})
        self._send(404, b'{"error":{"code":"not_found","message":"no route","remediation":"r"}}')


class FakeServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeMitosd)
        cls.thread = threading.Thread(target=cls.httpd.serve_forever, daemon=True)
        cls.thread.start()
        cls.server = mitos.SandboxServer(base_url="http://127.0.0.1:%d" % cls.httpd.server_port, api_key="tok")

    @classmethod
    def tearDownClass(cls):
        cls.httpd.shutdown()
        cls.httpd.server_close()

    def setUp(self):
        FakeMitosd.calls.clear()

    def test_create_retries_429_with_the_same_idempotency_key(self):
        FakeMitosd.fork_failures = 1
        sb = self.server.create("python")
        self.assertEqual(sb.id, "sb-1")
        self.assertEqual(len(FakeMitosd.calls), 2)
        keys = [h.get("Idempotency-Key") for _, h, _ in FakeMitosd.calls]
        self.assertTrue(keys[0])
        self.assertEqual(keys[0], keys[1])
        self.assertEqual(FakeMitosd.calls[0][1]["Authorization"], "Bearer tok")
        self.assertEqual(json.loads(FakeMitosd.calls[0][2]), {"template": "python"})

    def test_fork_count_is_one_request(self):
        FakeMitosd.fork_failures = 0
        kids = self.server.create("python").fork(3)
        self.assertEqual([k.id for k in kids], ["sb-c0", "sb-c1", "sb-c2"])
        self.assertEqual(kids[0].parent_id, "sb-1")
        forks = [c for c in FakeMitosd.calls if c[0].endswith("/fork") and c[0] != "/v1/fork"]
        self.assertEqual(len(forks), 1)
        self.assertEqual(json.loads(forks[0][2]), {"count": 3})
        with self.assertRaises(mitos.InvalidInputError):
            kids[0].fork(0)

    def test_exec_stream(self):
        FakeMitosd.fork_failures = 0
        sb = self.server.create("python")
        seen = []
        r = sb.exec("echo hi", timeout=5, env={"A": "1"}, cwd="/root", on_stdout=seen.append)
        self.assertEqual((r.exit_code, r.stdout, r.stderr, r.exec_time_ms, r.error), (3, "hi\n", "echo hi", 12, None))
        self.assertEqual(seen, ["hi\n"])
        path, headers, body = FakeMitosd.calls[-1]
        self.assertEqual(headers["Content-Type"], "application/connect+json")
        self.assertEqual(headers["Connect-Protocol-Version"], "1")
        self.assertEqual(headers["X-Sandbox-Id"], "sb-1")
        self.assertEqual(headers["Authorization"], "Bearer tok")
        (_, req), = decode_envelopes(body)
        self.assertEqual(req, {"command": "echo hi", "args": [], "env": [{"key": "A", "value": "1"}], "cwd": "/root", "timeoutSeconds": 5})

    def test_files(self):
        FakeMitosd.fork_failures = 0
        sb = self.server.create("python")
        data = bytes(range(256)) * 2000  # 512000 bytes: two data chunks
        self.assertEqual(sb.files.write("/f", data, mode=0o600), len(data))
        msgs = decode_envelopes(FakeMitosd.calls[-1][2])
        self.assertEqual(msgs[0], (0, {"open": {"path": "/f", "mode": 0o600}}))
        self.assertEqual(len(msgs), 3)
        self.assertEqual(b"".join(base64.b64decode(m["data"]) for _, m in msgs[1:]), data)
        info = sb.files.stat("/f")
        self.assertEqual((info.size, info.modified_at_unix, info.is_dir, info.mode), (5000000000, 1700000000, False, 420))
        self.assertEqual(FakeMitosd.calls[-1][1]["Content-Type"], "application/json")
        with self.assertRaises(mitos.NotFoundError) as cm:
            sb.files.read("/x")
        self.assertIn("no such file", cm.exception.message)
        with self.assertRaises(mitos.ConflictError):
            sb.files.mkdir("/d")

    def test_unreachable(self):
        s = mitos.SandboxServer(base_url="http://127.0.0.1:9", api_key="t", max_retries=0)
        with self.assertRaises(mitos.UnavailableError) as cm:
            s.health()
        self.assertEqual(cm.exception.status, 0)


if __name__ == "__main__":
    unittest.main()
