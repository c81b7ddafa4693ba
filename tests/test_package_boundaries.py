"""The packages' contracts with each other and with the process that imports them.

- Dependencies point one way, sysarray <- accel_models <- mitigation, and the upper packages use
  only sysarray's public surface: no private module or name (a leading underscore), nothing from
  the internal ``sysarray.engines``.
- Importing any module of the three packages leaves the process as it was: environment, glibc
  malloc settings, numba's threading layer, torch's and numba's thread counts. The one exception
  is the campaign fork server's entry module, which only multiprocessing's preload imports.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sysarray", "accel_models", "mitigation")
PROCESS_ENTRY_POINTS = {"mitigation.campaign.server_entry", "sysarray.__main__"}


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` for every import statement of a source file (absolute modules)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


def _sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _private_uses(module: str, names: list[str]) -> list[str]:
    """What an upper package may not import from ``module`` (a sysarray module) with ``names``."""
    bad = []
    parts = module.split(".")
    if any(p.startswith("_") for p in parts[1:]) or parts[1:2] == ["engines"]:
        bad.append(module)
    bad += [f"{module}.{n}" for n in names if n.startswith("_")]
    if module == "sysarray":  # `from sysarray import engines` names the internal package too
        bad += [f"sysarray.{n}" for n in names if n == "engines"]
    return bad


@pytest.mark.parametrize("package", ["accel_models", "mitigation"])
def test_upper_packages_import_only_sysarrays_public_names(package):
    found = []
    for path in _sources(package):
        for line, module, names in _imports(path):
            if module == "sysarray" or module.startswith("sysarray."):
                found += [f"{path.relative_to(REPO)}:{line}: {b}" for b in _private_uses(module, names)]
    assert not found, "private sysarray names used above sysarray:\n" + "\n".join(found)


def test_the_scan_catches_private_imports():
    assert _private_uses("sysarray.engines.fast", ["fast_gemm"]) == ["sysarray.engines.fast"]
    assert _private_uses("sysarray.gemm", ["_as_engine"]) == ["sysarray.gemm._as_engine"]
    assert _private_uses("sysarray._malloc", []) == ["sysarray._malloc"]
    assert _private_uses("sysarray", ["engines", "Chip"]) == ["sysarray.engines"]
    assert _private_uses("sysarray.mapping", ["per_element"]) == []


@pytest.mark.parametrize("package,forbidden", [("sysarray", ("accel_models", "mitigation")),
                                               ("accel_models", ("mitigation",))])
def test_dependencies_point_one_way(package, forbidden):
    # sysarray.cli collects the upper packages' subcommands by module name at run time (plugins)
    found = [f"{p.relative_to(REPO)}:{line}: {m}" for p in _sources(package) for line, m, _ in _imports(p)
             if m.split(".")[0] in forbidden]
    assert not found, "\n".join(found)


SNAPSHOT = """
import ctypes, json, os, sys
calls = []
real = ctypes.CDLL
class Watched(real):  # records any use of mallopt through ctypes
    def __getattr__(self, name):
        if name == "mallopt":
            calls.append(name)
        return super().__getattr__(name)
ctypes.CDLL = Watched
import torch, numba
def state():
    return dict(env=dict(os.environ), torch=torch.get_num_threads(), numba=numba.get_num_threads(),
                layer=str(numba.config.THREADING_LAYER), interop=torch.get_num_interop_threads())
before = state()
import importlib, pkgutil
skip = set(sys.argv[1].split(","))
names = []
for pkg in ("sysarray", "accel_models", "mitigation"):
    mod = importlib.import_module(pkg)
    names.append(pkg)
    for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
        if info.name not in skip:
            importlib.import_module(info.name)
            names.append(info.name)
after = state()
print(json.dumps(dict(same=before == after, before=before, after=after, mallopt=calls, modules=names)))
"""


def test_importing_every_module_changes_nothing_in_the_process():
    out = subprocess.run([sys.executable, "-c", SNAPSHOT, ",".join(sorted(PROCESS_ENTRY_POINTS))], cwd=REPO,
                         capture_output=True, text=True, timeout=600,
                         env={k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "NUMBA_THREADING_LAYER")})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(got["modules"]) > 40 and "sysarray.engines.conv.replay_simd" in got["modules"]
    changed = {k: (got["before"]["env"].get(k), got["after"]["env"].get(k))
               for k in set(got["before"]["env"]) | set(got["after"]["env"])
               if got["before"]["env"].get(k) != got["after"]["env"].get(k)}
    assert not changed, f"os.environ changed on import: {changed}"
    assert got["same"], (got["before"] | {"env": None}, got["after"] | {"env": None})
    assert got["mallopt"] == [], "an import called glibc's mallopt"


def test_the_process_entry_points_exist():
    for name in PROCESS_ENTRY_POINTS:
        assert (REPO / (name.replace(".", "/") + ".py")).exists(), name
