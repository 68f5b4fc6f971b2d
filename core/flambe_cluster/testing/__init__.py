"""Test support for flambe-cluster and its providers.

- :mod:`flambe_cluster.testing.hosts`: real OpenSSH test hosts in Linux
  namespaces on one machine (needs root), with fault injection, built on the
  production :mod:`flambe_cluster.localhosts` (which never imports this package).
- :mod:`flambe_cluster.testing.pytest_plugin`: pytest fixtures around them;
  opt in with ``pytest_plugins = ["flambe_cluster.testing.pytest_plugin"]``
  in a ``conftest.py`` (it is never loaded automatically).
- :mod:`flambe_cluster.testing.conformance`: the provider conformance suite,
  a base class a provider's tests subclass.
"""
