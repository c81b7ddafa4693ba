"""Fault diagnosis: find a chip's stuck bits from the outputs of test GEMMs alone
(docs/diagnosis.md).

- :mod:`~sysarray.diagnosis.patterns`: the test GEMMs (fixed detection sets, random refinements);
- :mod:`~sysarray.diagnosis.model`: predicted outputs of candidate maps (vectorised search model);
- :mod:`~sysarray.diagnosis.locate`: greedy explanation in causal order, aliases;
- :mod:`~sysarray.diagnosis.report`: the result, undetectable sites, the score against a true map;
- :mod:`~sysarray.diagnosis.procedure`: :func:`diagnose`, which runs them and confirms the map
  with the project's engine.
"""
from sysarray.diagnosis.procedure import TILE_STREAM, chip_oracle, diagnose
from sysarray.diagnosis.report import Diagnosis, RegisterScore, masked_sites

__all__ = ["Diagnosis", "RegisterScore", "TILE_STREAM", "chip_oracle", "diagnose", "masked_sites"]
