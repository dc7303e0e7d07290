"""The native ops' public name: ``minerva.ops.gae`` and the rest (:mod:`minerva.native.ops`)."""

from minerva.native.ops import *  # noqa: F403
from minerva.native.ops import __all__  # noqa: F401
