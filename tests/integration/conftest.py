"""Fixtures of the integration tests: the distributed Redis topologies (see tests/support/redis_topology.py)."""

from tests.support.redis_topology import redis_cluster, redis_sentinel

__all__ = ["redis_cluster", "redis_sentinel"]
