"""Fixtures shared by every test."""

import logging

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "allow_warnings: the test expects omerofs to log warnings")


@pytest.fixture(autouse=True)
def fail_on_unexpected_warnings(request, caplog):
    """Fail a test whose in-process omerofs code logged a warning it did not expect."""
    caplog.set_level(logging.DEBUG, logger="omerofs")
    yield
    if request.node.get_closest_marker("allow_warnings"):
        return
    unexpected = [r for r in caplog.get_records("call")
                  if r.levelno >= logging.WARNING and r.name.startswith("omerofs")]
    assert not unexpected, "unexpected warnings: " + "; ".join(r.getMessage() for r in unexpected)
