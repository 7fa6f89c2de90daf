"""negint_ds: DeepSpeed-scaled training for studying negative interference in multilingual MLMs.

Wang, Lipton & Tsvetkov (EMNLP 2020), "On Negative Interference in Multilingual Models".
"""
from ._kernel_tree import install_kernels_finder as _install_kernels_finder

__version__ = "0.1.0"

# ``negint_ds.kernels`` (the top-level kernels/) must come from the same tree as this package: see _kernel_tree
_install_kernels_finder()
