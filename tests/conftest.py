"""Shared pytest set-up: the `slow` marker (example scripts and the benchmark smoke runs;
``pytest -m "not slow"`` leaves them out of a quick local run; CI runs everything)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs an example or benchmark script (seconds)")
