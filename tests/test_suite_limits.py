"""The suite's own promises: every test runs under the one time limit, so a hang fails the test that hangs."""

from __future__ import annotations

from tests.harness import TEST_LIMIT_S, WAIT_S


def test_every_test_has_the_time_limit_and_the_plugin_that_enforces_it(request):
    assert request.config.pluginmanager.hasplugin("timeout"), "pytest-timeout is in the test extra"
    limits = {item.nodeid: item.get_closest_marker("timeout") for item in request.session.items}
    unbounded = [nodeid for nodeid, marker in limits.items() if marker is None]
    assert not unbounded, f"tests without a time limit: {unbounded[:5]}"
    assert request.node.get_closest_marker("timeout").args == (TEST_LIMIT_S,)
    assert 0 < WAIT_S < TEST_LIMIT_S  # a wait fails with what it waited for before the limit ends the test
