"""Local training only: the lower baseline. Nothing is sent, nothing is combined."""

from __future__ import annotations

from decaf_ray.algorithms.base import Adapter, Algorithm, Inbox


class Local(Algorithm):
    name = "local"
    communicates = False

    def combine(self, own: Adapter, inbox: Inbox) -> tuple[Adapter, dict[str, float]]:
        return own, {}
