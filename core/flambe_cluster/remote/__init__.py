"""Helpers that run on the cluster's hosts, inside the per-cluster environment.

They are invoked over SSH as ``<env>/bin/python -m flambe_cluster.remote.<name>``
and print JSON; they never run on the client.
"""
