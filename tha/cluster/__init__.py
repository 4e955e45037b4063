"""Clusters beyond a pair: tha.Node and the coordinators that decide who
leads (etcd, or the pair mode of tha.Active/tha.Standby alone)."""

from .coord import Cluster, Coordinator, EtcdCoordinator, Leader, PairCoordinator
from .node import Node

__all__ = ["Cluster", "Coordinator", "EtcdCoordinator", "Leader", "Node",
           "PairCoordinator"]
