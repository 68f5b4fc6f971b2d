# The fixtures of flambe-cluster's conformance suite (test hosts, a client key, a private state folder).
pytest_plugins = ["flambe_cluster.testing.pytest_plugin"]
