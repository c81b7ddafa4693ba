"""Mitigation methods: clipping, fault-aware training, eFAT, importance sampling, campaigns."""
