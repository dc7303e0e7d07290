"""minerva: V-MPO with native rollout storage, GAE and top-k ops."""

from minerva import ops, reference
from minerva.ops import native_available
from minerva.storage import RolloutBatch, RolloutStorage

__all__ = ["ops", "reference", "native_available", "RolloutStorage", "RolloutBatch"]
__version__ = "0.1.0"
