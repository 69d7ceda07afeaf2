"""Benchmarks that print their figures: simulator overhead vs bare compute (``overhead``, the
``decaf-ray bench`` command), its bare-torch floor (``floor``), batched vs sequential training
(``batched``: ``python -m decaf_ray.bench.batched``)."""
