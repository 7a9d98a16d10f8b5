import os
import unittest

from mitos._config import DEFAULT_BASE_URL, resolve_config, token_file_path


def no_file(path):
    raise FileNotFoundError(path)


class ConfigTest(unittest.TestCase):
    def test_defaults(self):
        c = resolve_config(env={}, read=no_file)
        self.assertEqual(c.base_url, DEFAULT_BASE_URL)
        self.assertEqual(c.base_url, "http://127.0.0.1:8080")
        self.assertIsNone(c.api_key)
        self.assertEqual(c.max_retries, 2)

    def test_environment(self):
        c = resolve_config(env={"MITOS_BASE_URL": "http://h:1/", "MITOS_API_KEY": " k "}, read=no_file)
        self.assertEqual(c.base_url, "http://h:1")
        self.assertEqual(c.api_key, "k")

    def test_arguments_win(self):
        env = {"MITOS_BASE_URL": "http://env:1", "MITOS_API_KEY": "env"}
        c = resolve_config(base_url="http://arg:2//", api_key="arg", max_retries=0, env=env, read=no_file)
        self.assertEqual((c.base_url, c.api_key, c.max_retries), ("http://arg:2", "arg", 0))

    def test_token_file(self):
        seen = []

        def read(path):
            seen.append(path)
            return "tok-from-file\n"

        self.assertEqual(resolve_config(env={}, read=read).api_key, "tok-from-file")
        self.assertEqual(seen, ["/var/lib/mitos/token"])
        c = resolve_config(env={"MITOS_DATA_DIR": "/d"}, read=read)
        self.assertEqual(seen[-1], os.path.join("/d", "token"))
        self.assertEqual(c.api_key, "tok-from-file")
        self.assertEqual(token_file_path({"MITOS_DATA_DIR": "/x"}), "/x/token")
        self.assertEqual(token_file_path({"MITOS_DATA_DIR": " "}), "/var/lib/mitos/token")

    def test_env_key_beats_file_and_empty_is_ignored(self):
        c = resolve_config(env={"MITOS_API_KEY": "env"}, read=lambda p: "file")
        self.assertEqual(c.api_key, "env")
        c = resolve_config(api_key="", env={"MITOS_API_KEY": "  "}, read=lambda p: "file")
        self.assertEqual(c.api_key, "file")
        c = resolve_config(env={}, read=lambda p: "   ")
        self.assertIsNone(c.api_key)


if __name__ == "__main__":
    unittest.main()
