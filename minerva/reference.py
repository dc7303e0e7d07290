"""The ops' references' public name (:mod:`minerva.native.reference`)."""

from minerva.native.reference import *  # noqa: F403
from minerva.native.reference import __all__  # noqa: F401
