"""Shared pytest set-up: the `slow` marker (example scripts and the benchmark smoke runs;
``pytest -m "not slow"`` leaves them out of a quick local run; CI runs everything), and a
thread cap of at least 4, so the tests that compare 1, 2, 3 and 4 threads run uneven work
splits even on a machine with fewer CPUs (the cap itself is tested with its own value)."""
import pytest

from clstm import _threads


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs an example or benchmark script (seconds)")


@pytest.fixture(autouse=True, scope="session")
def _thread_cap_of_at_least_four():
    real = _threads._team_cap
    _threads._team_cap = lambda: max(4, real())
    yield
    _threads._team_cap = real
