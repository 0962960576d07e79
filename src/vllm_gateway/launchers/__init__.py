"""Launchers: what starts and stops model servers (subprocess, Docker, and a fake for tests)."""
