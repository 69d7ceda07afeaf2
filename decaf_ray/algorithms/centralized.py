"""The centralized oracle: one model trained on the union of every node's data.

What a decentralized run could reach if its n nodes pooled their shards on one machine: the
partition is drawn as for n nodes and their shards are concatenated into one (``prepare``),
and the single model takes n tau steps per round (``RunConfig.steps_per_round``) with the
same batch size, so it sees the same rows and does as many optimizer steps as the n nodes
together. The gaps between it, fedavg, the decentralized methods and local training say what
federation, decentralization and isolation cost. Nothing is sent or combined.
"""

from __future__ import annotations

from decaf_ray.algorithms.base import Adapter, Algorithm, Inbox


class Centralized(Algorithm):
    name = "centralized"
    communicates = False

    def combine(self, own: Adapter, inbox: Inbox) -> tuple[Adapter, dict[str, float]]:
        return own, {}
