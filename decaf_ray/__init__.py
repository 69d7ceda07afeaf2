"""decaf-ray: a Ray simulator for decentralized LoRA fine-tuning.

The package is split by concern (see README): ``math`` and ``data`` are pure, ``algorithms``
holds one file per method, ``host`` trains nodes on a shared base model, ``cluster`` is the only
place that turns hosts into Ray actors, and ``coordinator`` runs the schedule. Importing the
package itself is cheap: nothing here pulls in Ray or torch.
"""

__version__ = "0.1.0"
