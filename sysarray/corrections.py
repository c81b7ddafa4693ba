"""A faulty layer's replayed outputs as a correction to its fault-free sums, for a caller that
applies it in its own pass.

On CPU the fast engine computes a faulty WS convolution as the fault-free product plus the
outputs of the array columns with a stuck psum bit, replayed (docs/design.md §3.2), and writes
those into the product's result. On a channels-last result a replayed channel is one value of
every pixel's cache line, so that write is a pass over the whole result.
:meth:`sysarray.Chip.conv2d_deferred` returns the product and the :class:`Correction` apart, for
a caller that reads the whole result once anyway (a requantization) and applies the correction in
that same pass: :func:`pixel_arrays` gives its arrays and :func:`replayed` (a numba function,
inlined into the caller's kernel) each replayed output's value, the caller walking tiles of
``TILE`` pixels in the parallel tasks of :func:`tile_tasks` and :func:`task_pixels`, as the
engine's own kernel does.

A :class:`Correction` (the engine's own record of a replay) has:

- ``n_idx`` (O,) int64: the replayed output channels;
- ``tot``: the replay's int32 totals, (B, O, >= H*W) plane by plane or (B, H*W, O) when
  ``pixel_major``;
- ``add``: the output is ``corrected(sum, tot, True)`` = ``wrap32(sum + tot)``, else
  ``corrected(sum, tot, False)`` = ``wrap32(tot)``;
- ``tot`` None: the output is the sum read back through its column's 32-bit register,
  ``read_back(sum, keep[o], ones[o])`` with ``keep``, ``ones`` (O,) int32 bit patterns.
"""
from sysarray.engines.conv.fix import ChainFix as Correction
from sysarray.engines.conv.fix import TILE, corrected, pixel_arrays, read_back, replayed, task_pixels, tile_tasks

__all__ = ["Correction", "TILE", "corrected", "pixel_arrays", "read_back", "replayed", "task_pixels", "tile_tasks"]
