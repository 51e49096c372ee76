"""Third-party token servers the tests start on 127.0.0.1 (settings only, no token logic of ours)."""
