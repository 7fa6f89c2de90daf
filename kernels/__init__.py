"""Kernels for negint_ds, installed as ``negint_ds.kernels`` (so the PyPI package ``kernels`` is not shadowed).

Each op has a plain-torch reference that tests and benchmarks import (``adapter_reference``,
``fd_hvp_reference``) and a Triton implementation with the same signature (``adapter_triton``,
``fd_hvp_triton``, imported lazily: Triton is only needed when they run). :mod:`.dispatch` chooses:
Triton for CUDA tensors by default, the reference elsewhere (``NEGINT_DS_KERNELS=auto|triton|torch``, read
once; :func:`configure` re-reads it). The fused adapter is a ``torch.library`` custom op (:mod:`.adapter_op`)
so that ``torch.compile`` traces through it without graph breaks.
"""

import sys as _sys

if __name__ == "kernels":
    # This folder was imported as the top-level ``kernels`` only because a checkout's root is on sys.path
    # (``python -m pytest`` or a setuptools build run from the root). That name belongs to the PyPI package
    # ``kernels`` (which transformers >= 5 imports, and whose setuptools hook every build loads), so the import
    # is handed to it; without it installed, the import fails as if this folder were not on the path.
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os

    _root = _os.path.realpath(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    _path = [p for p in _sys.path if _os.path.realpath(p or _os.getcwd()) != _root]
    _spec = _machinery.PathFinder.find_spec("kernels", _path)
    if _spec is None:
        raise ModuleNotFoundError(
            f"No module named 'kernels' (the folder {_root}/kernels is negint_ds.kernels, imported as "
            f"'import negint_ds.kernels', not the PyPI package 'kernels')", name="kernels")
    _module = _util.module_from_spec(_spec)
    _sys.modules["kernels"] = _module  # the import statement returns what sys.modules holds after this runs
    _spec.loader.exec_module(_module)
else:
    from . import fd_hvp_reference
    from .adapter_reference import bottleneck_adapter_reference
    from .dispatch import bottleneck_adapter, configure, fd_ops, mode, reference_only, self_check

    __all__ = ["bottleneck_adapter", "bottleneck_adapter_reference", "configure", "fd_hvp_reference", "fd_ops", "mode",
               "reference_only", "self_check"]
