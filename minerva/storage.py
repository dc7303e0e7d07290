"""The rollout storage's public name (:mod:`minerva.native.storage`)."""

from minerva.native.storage import *  # noqa: F403
from minerva.native.storage import __all__  # noqa: F401
