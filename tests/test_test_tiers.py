"""The tiers of the suite: every test that builds test hosts is a `hosts` test, so -m "not hosts" builds none.

Checked by running a small suite in a pytest of its own (pytester)."""

from __future__ import annotations


def test_a_test_that_builds_hosts_without_the_marker_fails_and_one_with_the_fixture_is_marked(pytester):
    pytester.makeconftest('pytest_plugins = ["flambe_cluster.testing.pytest_plugin"]\n')
    pytester.makepyfile(
        """
        import pytest
        from flambe_cluster.testing.hosts import TestHostNetwork

        def test_unmarked_builds_hosts():
            TestHostNetwork(1)

        def test_the_fixture_marks_its_tests(flambe_test_hosts, request):
            assert request.node.get_closest_marker("hosts") is not None

        @pytest.mark.hosts
        def test_marked_may_try(monkeypatch):
            from flambe_cluster.testing import pytest_plugin
            pytest_plugin.require_hosts_marker()  # no failure: it is marked
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(["*test_unmarked_builds_hosts builds test hosts: mark it @pytest.mark.hosts*"])
    fast = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-m", "not hosts")
    fast.assert_outcomes(failed=1, deselected=2)
