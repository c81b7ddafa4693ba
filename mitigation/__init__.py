"""Mitigation methods: clipping, fault-aware training, eFAT, importance sampling, campaigns."""
import sysarray  # noqa: F401  (first: it sets torch's OpenMP spin time before torch loads)
