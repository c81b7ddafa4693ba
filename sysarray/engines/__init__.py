"""The two engines: ``cycle`` (numba clock loops, the reference) and ``fast`` (torch, exact)."""
