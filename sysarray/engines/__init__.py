"""The two engines: ``cycle`` (numba clock loops, the reference) and ``fast`` (torch, exact).

Internal: workloads reach them through :class:`sysarray.Chip` (or :func:`sysarray.simulate_gemm`).
"""
