"""Deploying clusters: LocalCluster."""

from distributary.deploy.local import LocalCluster

__all__ = ["LocalCluster"]
