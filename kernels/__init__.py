"""Kernels for negint_ds, installed as ``negint_ds.kernels``.

Each op has a plain-torch reference (imported by tests and benchmarks); Triton implementations with
the same signature are added beside them.
"""
from . import fd_hvp_reference
from .adapter_reference import bottleneck_adapter_reference

__all__ = ["bottleneck_adapter_reference", "fd_hvp_reference"]
