"""The fast engine's convolution path (WS without im2col), one concern per module:

- :mod:`.conv2d`: the entry, :func:`fast_conv2d` / :func:`fast_conv2d_exact`, choosing the path;
- :mod:`.weights`, :mod:`.exact`: latched weights and exact float convolutions;
- :mod:`.settings`: :class:`ReplaySettings`, the replay strategy (results never depend on it);
- :mod:`.replay_direct` with :mod:`.plan`, :mod:`.planes`, :mod:`.replay_passes`,
  :mod:`.replay_simd`, :mod:`.replay_vnni`: the CPU psum replay; :mod:`.replay_conv`: the CPU replay of single-fold
  layers (depthwise) by a segment convolution; :mod:`.fix`: their result applied to the output;
- :mod:`.replay_torch`: the psum replay in torch ops (CUDA).

Grouped and depthwise convolutions take the same paths, every group's GEMM at once.
"""
from sysarray.engines.conv.conv2d import by_im2col, conv_native_ok, fast_conv2d, fast_conv2d_deferred, fast_conv2d_exact
from sysarray.engines.conv.fix import ChainFix, apply_fix
from sysarray.engines.conv.settings import DEFAULT, Kernel, Replay, ReplaySettings

__all__ = ["ChainFix", "DEFAULT", "Kernel", "Replay", "ReplaySettings", "apply_fix", "by_im2col", "conv_native_ok",
           "fast_conv2d", "fast_conv2d_deferred", "fast_conv2d_exact"]
