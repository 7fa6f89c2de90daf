"""negint_ds: DeepSpeed-scaled training for studying negative interference in multilingual MLMs.

Wang, Lipton & Tsvetkov (EMNLP 2020), "On Negative Interference in Multilingual Models".
"""
import importlib.util as _ilu
import os as _os
import sys as _sys

__version__ = "0.1.0"

# The design card keeps Triton kernels in the repository's top-level ``kernels/``; setup.py installs
# that folder as ``negint_ds.kernels`` so that it never shadows the unrelated PyPI package named
# ``kernels``. When this package is imported from a source tree that shadows an installed copy
# (e.g. ``pip install .`` then running from the checkout), map the folder here so imports still work.
if _ilu.find_spec("negint_ds.kernels") is None:  # pragma: no cover - depends on install mode
    _kdir = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "kernels")
    _spec = _ilu.spec_from_file_location(
        "negint_ds.kernels", _os.path.join(_kdir, "__init__.py"), submodule_search_locations=[_kdir])
    if _spec is not None and _os.path.isfile(_os.path.join(_kdir, "__init__.py")):
        _mod = _ilu.module_from_spec(_spec)
        _sys.modules["negint_ds.kernels"] = _mod
        _spec.loader.exec_module(_mod)
