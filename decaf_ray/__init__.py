"""decaf-ray: a Ray simulator for decentralized LoRA fine-tuning.

The package is split by concern (see README): ``math``, ``data`` and ``virtual`` are pure,
``algorithms`` holds one file per method, ``node`` is what runs inside a host (a shared base
model training many nodes), and ``engine`` is the driver: one executor of the plan, the host
group it calls, and ``engine.cluster``, the only module that speaks Ray. Importing the package
itself is cheap: nothing here pulls in Ray or torch.
"""

__version__ = "0.1.0"
