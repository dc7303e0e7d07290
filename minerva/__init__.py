"""minerva: V-MPO with native rollout storage, GAE and top-k ops."""

from pkgutil import extend_path

# Run from a source checkout (``python -m minerva.train`` in the repository root), this
# folder shadows the installed package, which is where the compiled modules are: search both.
__path__ = extend_path(__path__, __name__)

from minerva import ops, reference
from minerva.ops import native_available
from minerva.storage import RolloutBatch, RolloutStorage

__all__ = ["ops", "reference", "native_available", "RolloutStorage", "RolloutBatch"]
__version__ = "0.1.0"
