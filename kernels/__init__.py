"""Kernels for negint_ds, installed as ``negint_ds.kernels`` (so the PyPI package ``kernels`` is not shadowed).

Each op has a plain-torch reference that tests and benchmarks import (``adapter_reference``,
``fd_hvp_reference``) and a Triton implementation with the same signature (``adapter_triton``,
``fd_hvp_triton``, imported lazily: Triton is only needed when they run). :mod:`.dispatch` chooses:
Triton for CUDA tensors by default, the reference elsewhere (``NEGINT_DS_KERNELS=auto|triton|torch``, read
once; :func:`configure` re-reads it). The fused adapter is a ``torch.library`` custom op (:mod:`.adapter_op`)
so that ``torch.compile`` traces through it without graph breaks.
"""
from . import fd_hvp_reference
from .adapter_reference import bottleneck_adapter_reference
from .dispatch import bottleneck_adapter, configure, fd_ops, mode, reference_only, self_check

__all__ = ["bottleneck_adapter", "bottleneck_adapter_reference", "configure", "fd_hvp_reference", "fd_ops", "mode",
           "reference_only", "self_check"]
