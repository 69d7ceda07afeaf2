"""The driver: runs a plan on hosts and logs what happened.

- :mod:`~decaf_ray.engine.executor`: the one executor of a plan (barrier or dataflow).
- :mod:`~decaf_ray.engine.hosts`: the host group the executor calls, without Ray.
- :mod:`~decaf_ray.engine.cluster`: that group over Ray actors; the only module importing Ray.
- :mod:`~decaf_ray.engine.local`: that group in this process (fast tests, debugging).
- :mod:`~decaf_ray.engine.network`: consensus, drift and the network-average model.
- :mod:`~decaf_ray.engine.log`: tidy metrics rows, flushed to parquet every round.

Importing this package does not import Ray; only ``decaf_ray.engine.cluster`` does.
"""
