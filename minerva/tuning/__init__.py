"""The pieces of ``python -m minerva.tune`` (:mod:`minerva.tune`): search spaces
(:mod:`~minerva.tuning.space`), a study's settings (:mod:`~minerva.tuning.study`), one trial's
runs (:mod:`~minerva.tuning.trial`) and what a study writes (:mod:`~minerva.tuning.report`)."""
