"""Bind ``negint_ds.kernels`` to the tree the imported ``negint_ds`` came from (or fail loudly)."""
import os as _os
import sys as _sys
from importlib.machinery import PathFinder as _PathFinder
from importlib.util import spec_from_file_location as _spec_from_file_location

# The design card keeps Triton kernels in the repository's top-level ``kernels/``; setup.py installs that
# folder as ``negint_ds.kernels`` (so that it never shadows the unrelated PyPI package named ``kernels``).
# Where it lives depends on how this package was found:
#   regular install (``pip install .``): site-packages/negint_ds/kernels, beside this file;
#   source checkout (editable install, or the checkout first on sys.path): <root>/kernels, beside negint_ds/.
# It must come from the *same* tree as this file. Ordinary lookup does not guarantee that: a setuptools
# editable install of another checkout A registers a meta-path finder whose MAPPING sends
# ``negint_ds.kernels`` to A's kernels/, and in a checkout B (its root first on sys.path) the path-based
# search through B's negint_ds/ finds no kernels/ there, so A's finder answered — B's negint_ds silently ran
# A's kernels. The finder below, first on sys.meta_path, answers for ``negint_ds.kernels`` and everything
# under it from this tree only, and fails loudly when this tree has no kernels but another would be used.

_PKG_DIR = _os.path.dirname(_os.path.abspath(__file__))  # negint_ds/
_INSTALLED_KERNELS = _os.path.join(_PKG_DIR, "kernels")
_CHECKOUT_KERNELS = _os.path.join(_os.path.dirname(_PKG_DIR), "kernels")


def _kernels_dir():
    """This tree's kernels/ directory, or None if it has none.

    A checkout's sibling ``kernels/`` counts only if it is ours (it has ``adapter_reference.py``): in a
    regular install the sibling of ``negint_ds/`` is site-packages, whose ``kernels/`` would be the PyPI one.
    """
    if _os.path.isfile(_os.path.join(_INSTALLED_KERNELS, "__init__.py")):
        return _INSTALLED_KERNELS
    if _os.path.isfile(_os.path.join(_CHECKOUT_KERNELS, "__init__.py")) \
            and _os.path.isfile(_os.path.join(_CHECKOUT_KERNELS, "adapter_reference.py")):
        return _CHECKOUT_KERNELS
    return None


class _KernelsFinder:
    """Meta-path finder for ``negint_ds.kernels`` and its submodules, bound to this package's tree.

    ``negint_ds.kernels`` is loaded from ``kernels_dir``; a submodule only from its parent package's
    ``__path__`` (so from the same tree). Where this tree lacks the module (or has no kernels/ at all) and
    another finder would supply it from elsewhere, ImportError names both places instead of mixing trees;
    where nobody has it, ``find_spec`` returns None as usual.
    """

    _negint_ds_kernels_finder = True  # marks instances across re-imports of this module

    def __init__(self, kernels_dir):
        self.kernels_dir = kernels_dir

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "negint_ds.kernels":
            if self.kernels_dir is None:
                self._fail_if_found_elsewhere(fullname, path, (_INSTALLED_KERNELS, _CHECKOUT_KERNELS))
                return None
            return _spec_from_file_location(fullname, _os.path.join(self.kernels_dir, "__init__.py"),
                                            submodule_search_locations=[self.kernels_dir])
        if fullname.startswith("negint_ds.kernels."):
            spec = _PathFinder.find_spec(fullname, path)
            if spec is None:
                self._fail_if_found_elsewhere(fullname, path, tuple(path or ()))
            return spec
        return None

    def _fail_if_found_elsewhere(self, fullname, path, looked_in):
        """Raise ImportError if a finder other than this one would supply ``fullname`` (from another tree)."""
        for finder in _sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            try:
                spec = finder.find_spec(fullname, path)
            except ImportError:
                continue
            if spec is not None:
                where = spec.origin or list(spec.submodule_search_locations or [])
                raise ImportError(
                    f"negint_ds was imported from {_PKG_DIR}, whose tree has no {fullname} (looked in "
                    f"{' and '.join(looked_in)}), but {fullname} would be loaded from {where} — another checkout "
                    f"or install. Refusing to mix the two trees: reinstall (pip install -e . or pip install .) "
                    f"from the tree you mean to run.", name=fullname)


def install_kernels_finder() -> None:
    """Put :class:`_KernelsFinder` first on ``sys.meta_path`` (replacing one from an earlier import).

    Raises:
        ImportError: ``negint_ds.kernels`` is already loaded from another tree.
    """
    loaded = _sys.modules.get("negint_ds.kernels")
    kdir = _kernels_dir()
    if loaded is not None and kdir is not None:  # e.g. importlib.reload(negint_ds)
        origin = _os.path.realpath(getattr(loaded, "__file__", None) or "")
        if not origin.startswith(_os.path.realpath(kdir) + _os.sep):
            raise ImportError(f"negint_ds.kernels is already loaded from {origin}, not from {kdir} beside "
                              f"negint_ds ({_PKG_DIR})", name="negint_ds.kernels")
    _sys.meta_path[:] = [f for f in _sys.meta_path if not getattr(f, "_negint_ds_kernels_finder", False)]
    _sys.meta_path.insert(0, _KernelsFinder(kdir))

