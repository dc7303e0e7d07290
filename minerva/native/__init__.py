"""The native layer, one contract in three parts: the ops (:mod:`minerva.native.ops`, torch
dispatcher ops compiled from ``csrc/``), their pure-torch references, which define what the ops
compute (:mod:`minerva.native.reference`), and the rollout storage (:mod:`minerva.native.storage`,
a pybind11 class, with its layout in :mod:`minerva.native.layout`).

Everything outside this package sees the ops and the storage through these modules (and their
public names :mod:`minerva.ops`, :mod:`minerva.reference`, :mod:`minerva.storage`), never the
compiled libraries: :mod:`minerva.native.loading` loads those, or falls back to the
references.
"""
