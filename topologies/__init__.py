"""Communication graphs and gossip mixing matrices for decentralized training.

>>> G = build_graph("ring", 16)
>>> Pi = mixing_matrix(G, "metropolis_hastings")
>>> report = validate_mixing(Pi, G)  # raises MixingError if Pi is unusable
>>> round(report.spectral_gap, 4)
0.0507
"""

from topologies.builders import (
    BUILDERS,
    build_graph,
    complete,
    erdos_renyi,
    exponential,
    from_file,
    random_regular,
    ring,
    star,
    torus,
    two_hubs,
    watts_strogatz,
)
from topologies.check import (
    MixingError,
    MixingReport,
    check_mixing,
    spectral_gap,
    validate_mixing,
)
from topologies.mixing import (
    MIXING_RULES,
    dimat,
    edge_weights,
    laplacian,
    max_degree,
    metropolis_hastings,
    mixing_matrix,
    uniform,
)

__all__ = [
    "BUILDERS",
    "MIXING_RULES",
    "MixingError",
    "MixingReport",
    "build_graph",
    "check_mixing",
    "complete",
    "dimat",
    "edge_weights",
    "erdos_renyi",
    "exponential",
    "from_file",
    "laplacian",
    "max_degree",
    "metropolis_hastings",
    "mixing_matrix",
    "random_regular",
    "ring",
    "spectral_gap",
    "star",
    "torus",
    "two_hubs",
    "uniform",
    "validate_mixing",
    "watts_strogatz",
]
