import unittest

import mitos
from mitos.errors import (
    STATUS_BY_CODE,
    code_for_connect,
    error_from_connect,
    error_from_envelope,
    make_error,
    network_error,
)

EXPECTED_CLASS = {
    "invalid_input": mitos.InvalidInputError,
    "invalid_json": mitos.InvalidInputError,
    "timeout_too_large": mitos.TimeoutTooLargeError,
    "unauthorized": mitos.UnauthorizedError,
    "forbidden": mitos.ForbiddenError,
    "budget_exhausted": mitos.ForbiddenError,
    "not_found": mitos.NotFoundError,
    "conflict": mitos.ConflictError,
    "idle_timeout": mitos.SandboxExpiredError,
    "body_too_large": mitos.BodyTooLargeError,
    "quota_exceeded": mitos.QuotaExceededError,
    "rate_limited": mitos.RateLimitedError,
    "too_many_streams": mitos.RateLimitedError,
    "canceled": mitos.CanceledError,
    "internal": mitos.InternalError,
    "exec_failed": mitos.InternalError,
    "file_failed": mitos.InternalError,
    "fork_failed": mitos.InternalError,
    "unavailable": mitos.UnavailableError,
    "exec_timeout": mitos.ExecTimeoutError,
}


class ErrorMappingTest(unittest.TestCase):
    def test_status_table_matches_api(self):
        self.assertEqual(set(STATUS_BY_CODE), set(EXPECTED_CLASS))
        self.assertEqual(STATUS_BY_CODE["timeout_too_large"], 400)
        self.assertEqual(STATUS_BY_CODE["conflict"], 409)
        self.assertEqual(STATUS_BY_CODE["idle_timeout"], 410)
        self.assertEqual(STATUS_BY_CODE["canceled"], 499)
        self.assertEqual(STATUS_BY_CODE["exec_timeout"], 504)

    def test_every_code_has_its_class_and_status(self):
        for code, cls in EXPECTED_CLASS.items():
            e = make_error(code, "m")
            self.assertIs(type(e), cls, code)
            self.assertIsInstance(e, mitos.MitosError)
            self.assertEqual(e.status, STATUS_BY_CODE[code])
            self.assertTrue(e.remediation, code)
        self.assertIsInstance(make_error("timeout_too_large", "x"), mitos.InvalidInputError)

    def test_envelope(self):
        body = {
            "error": {
                "code": "not_found",
                "message": "no sandbox x",
                "cause": "gone",
                "remediation": "list them",
                "context": {"id": "x"},
            }
        }
        e = error_from_envelope(404, body)
        self.assertIsInstance(e, mitos.NotFoundError)
        self.assertEqual((e.code, e.message, e.cause, e.remediation, e.context, e.status),
                         ("not_found", "no sandbox x", "gone", "list them", {"id": "x"}, 404))
        self.assertIn("no sandbox x", str(e))
        self.assertEqual(e.to_dict()["name"], "NotFoundError")

    def test_envelope_unknown_code_and_no_envelope(self):
        e = error_from_envelope(429, {"error": {"code": "brand_new", "message": "m"}})
        self.assertIsInstance(e, mitos.RateLimitedError)
        self.assertEqual(e.context["serverCode"], "brand_new")
        e = error_from_envelope(502, "<html>bad gateway</html>")
        self.assertIsInstance(e, mitos.UnavailableError)
        self.assertIn("bad gateway", e.message)
        self.assertIsInstance(error_from_envelope(418, None), mitos.InternalError)

    def test_connect_header_code_wins(self):
        e = error_from_connect(
            {"code": "invalid_argument", "message": "timeoutSeconds 1000000 is above 3600"},
            metadata={"x-mitos-error-code": ["timeout_too_large"], "x-mitos-remediation": ["ask less"]},
        )
        self.assertIsInstance(e, mitos.TimeoutTooLargeError)
        self.assertEqual(e.remediation, "ask less")
        self.assertEqual(e.status, 400)
        self.assertEqual(e.context["connectCode"], "invalid_argument")
        e = error_from_connect({"code": "unauthenticated", "message": "m"}, headers={"x-mitos-error-code": "unauthorized"})
        self.assertIsInstance(e, mitos.UnauthorizedError)
        e = error_from_connect({"code": "not_found", "message": "m"}, headers={"trailer-x-mitos-error-code": "idle_timeout"})
        self.assertIsInstance(e, mitos.SandboxExpiredError)

    def test_connect_code_fallback(self):
        cases = {
            "not_found": mitos.NotFoundError,
            "permission_denied": mitos.ForbiddenError,
            "unauthenticated": mitos.UnauthorizedError,
            "deadline_exceeded": mitos.ExecTimeoutError,
            "invalid_argument": mitos.InvalidInputError,
            "failed_precondition": mitos.ConflictError,
            "resource_exhausted": mitos.QuotaExceededError,
            "unavailable": mitos.UnavailableError,
            "canceled": mitos.CanceledError,
            "unknown": mitos.InternalError,
            "internal": mitos.InternalError,
        }
        for connect_code, cls in cases.items():
            self.assertIs(type(error_from_connect({"code": connect_code, "message": "m"})), cls, connect_code)
        self.assertEqual(code_for_connect(None), "internal")
        # A bogus header value falls back to the Connect code.
        e = error_from_connect({"code": "not_found", "message": "m"}, headers={"x-mitos-error-code": "nonsense"})
        self.assertIsInstance(e, mitos.NotFoundError)

    def test_network_error(self):
        e = network_error("http://127.0.0.1:1", ConnectionRefusedError(111, "Connection refused"))
        self.assertIsInstance(e, mitos.UnavailableError)
        self.assertEqual(e.status, 0)
        self.assertIn("mitos up", e.remediation)
        self.assertIn("MITOS_BASE_URL", e.remediation)
        self.assertIn("ConnectionRefusedError", e.cause)


if __name__ == "__main__":
    unittest.main()
