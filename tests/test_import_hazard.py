"""``negint_ds.kernels`` always comes from the tree of the imported ``negint_ds``, never from an editable install's.

A setuptools editable install (``pip install -e .``) registers a meta-path finder whose MAPPING sends
``negint_ds.kernels`` to *its* checkout's ``kernels/``. A second checkout B run with its root first on
sys.path imports B's ``negint_ds`` — and, before the fix, checkout A's kernels (a mutation in B's
``kernels/`` had no effect on B's tests). Each case runs in a fresh interpreter. The editable finder is
a synthetic copy of setuptools' (MAPPING to a tmp checkout A, appended to ``sys.meta_path`` as its ``.pth``
does), with any real editable finder for negint_ds removed, so the tests do not depend on how this repo is
installed; one more case uses the real dev install's finder when there is one.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")

# The part of setuptools' generated __editable___<name>_finder.py that matters here.
FAKE_FINDER = '''
import sys
from importlib.machinery import PathFinder
from importlib.util import spec_from_file_location
from pathlib import Path

MAPPING = {mapping!r}


class _EditableFinder:  # MetaPathFinder, as setuptools' editable_wheel writes it
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname in MAPPING:
            init = Path(MAPPING[fullname]) / "__init__.py"
            return spec_from_file_location(fullname, init) if init.exists() else None
        parent, _, child = fullname.rpartition(".")
        if parent and parent in MAPPING:
            return PathFinder.find_spec(fullname, path=[MAPPING[parent]])
        return None


def install():
    if not any(finder == _EditableFinder for finder in sys.meta_path):
        sys.meta_path.append(_EditableFinder)
'''

# Runs in the subprocess: drop real editable finders for negint_ds (unless told to keep them), install the
# fake one, put ROOT first on sys.path (as running from checkout B does), import, report where things came from.
PROBE = '''
import importlib, json, sys
KEEP_REAL, FINDER_DIR, ROOT = {keep_real!r}, {finder_dir!r}, {root!r}
if not KEEP_REAL:
    sys.meta_path[:] = [f for f in sys.meta_path
                        if "negint_ds" not in getattr(sys.modules.get(getattr(f, "__module__", "")), "MAPPING", {{}})]
if FINDER_DIR:
    sys.path.insert(0, FINDER_DIR)
    import fake_editable_finder
    fake_editable_finder.install()
sys.path.insert(0, ROOT)
out = {{}}
import negint_ds
out["negint_ds"] = negint_ds.__file__
try:
    import negint_ds.kernels as k
    from negint_ds.kernels import dispatch
    from negint_ds.kernels.adapter_reference import bottleneck_adapter_reference
    import negint_ds.kernels.bench.roofline as roofline
    out.update(kernels=k.__file__, marker=getattr(k, "CHECKOUT_MARKER", None), dispatch=dispatch.__file__,
               reference=sys.modules[bottleneck_adapter_reference.__module__].__file__, roofline=roofline.__file__)
    try:
        importlib.import_module("negint_ds.kernels.only_in_a")
        out["only_in_a"] = sys.modules["negint_ds.kernels.only_in_a"].__file__
    except ImportError as e:
        out["only_in_a"] = "ImportError: " + str(e)
    import importlib.util
    out["missing_everywhere_is_none"] = importlib.util.find_spec("negint_ds.kernels.no_such_module") is None
except ImportError as e:
    out["error"] = type(e).__name__ + ": " + str(e)
print("PROBE" + json.dumps(out))
'''


def copy_checkout(root, marker, kernels=True):
    """root/negint_ds and root/kernels copied from this repo, with CHECKOUT_MARKER = marker in kernels."""
    shutil.copytree(os.path.join(REPO, "negint_ds"), os.path.join(root, "negint_ds"), ignore=IGNORE)
    if kernels:
        shutil.copytree(os.path.join(REPO, "kernels"), os.path.join(root, "kernels"), ignore=IGNORE)
        with open(os.path.join(root, "kernels", "__init__.py"), "a", encoding="utf-8") as f:
            f.write(f"\nCHECKOUT_MARKER = {marker!r}\n")
    return str(root)


@pytest.fixture
def checkout_a(tmp_path):
    """Checkout A behind a synthetic editable install; A's kernels have a module B's lack."""
    a = copy_checkout(tmp_path / "A", "A")
    with open(os.path.join(a, "kernels", "only_in_a.py"), "w", encoding="utf-8") as f:
        f.write("X = 1\n")
    finder_dir = tmp_path / "finder"
    finder_dir.mkdir()
    mapping = {"negint_ds": os.path.join(a, "negint_ds"), "negint_ds.kernels": os.path.join(a, "kernels")}
    (finder_dir / "fake_editable_finder.py").write_text(FAKE_FINDER.format(mapping=mapping))
    return a, str(finder_dir)


def probe(root, finder_dir=None, keep_real=False):
    code = PROBE.format(keep_real=keep_real, finder_dir=finder_dir, root=root)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env,
                       cwd=os.path.dirname(root))
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("PROBE")]
    assert p.returncode == 0 and line, p.stdout + p.stderr
    return json.loads(line[-1][len("PROBE"):])


def under(path, root):
    return os.path.realpath(path).startswith(os.path.realpath(root) + os.sep)


def test_second_checkout_gets_its_own_kernels_despite_an_editable_install(tmp_path, checkout_a):
    a, finder_dir = checkout_a
    b = copy_checkout(tmp_path / "B", "B")
    out = probe(b, finder_dir)
    assert under(out["negint_ds"], b)
    assert out["marker"] == "B", out  # before the fix: "A" — B's negint_ds with A's kernels
    for key in ("kernels", "dispatch", "reference", "roofline"):
        assert under(out[key], os.path.join(b, "kernels")), (key, out)
    # a module only A's tree has is refused, naming both trees, rather than silently taken from A
    assert out["only_in_a"].startswith("ImportError") and os.path.join(b, "kernels") in out["only_in_a"] \
        and os.path.join(a, "kernels", "only_in_a.py") in out["only_in_a"], out
    assert out["missing_everywhere_is_none"] is True  # find_spec's usual answer where no tree has it


def test_checkout_without_kernels_fails_loudly_naming_both_trees(tmp_path, checkout_a):
    a, finder_dir = checkout_a
    b = copy_checkout(tmp_path / "B", "B", kernels=False)
    out = probe(b, finder_dir)
    assert under(out["negint_ds"], b)
    err = out.get("error", "")
    assert err.startswith("ImportError"), out
    assert os.path.join(b, "kernels") in err and os.path.join(a, "kernels") in err, err


def test_regular_install_layout_uses_its_bundled_kernels(tmp_path, checkout_a):
    # what `pip install .` lays out: site/negint_ds/ with kernels/ inside it (setup.py's package_dir)
    a, finder_dir = checkout_a
    site = tmp_path / "site"
    copy_checkout(site, "site", kernels=False)
    shutil.copytree(os.path.join(REPO, "kernels"), site / "negint_ds" / "kernels", ignore=IGNORE)
    with open(site / "negint_ds" / "kernels" / "__init__.py", "a", encoding="utf-8") as f:
        f.write("\nCHECKOUT_MARKER = 'site'\n")
    out = probe(str(site), finder_dir)
    assert out["marker"] == "site", out
    for key in ("kernels", "dispatch", "reference", "roofline"):
        assert under(out[key], str(site / "negint_ds" / "kernels")), (key, out)


def test_pip_install_target_uses_its_bundled_kernels(tmp_path, checkout_a):
    # a real regular install (wheel built from a copy of the sources, so this repo gets no build/ or egg-info)
    a, finder_dir = checkout_a
    src = copy_checkout(tmp_path / "src", "pip")
    for f in ("setup.py", "README.md"):
        shutil.copy(os.path.join(REPO, f), src)
    target = str(tmp_path / "target")
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-compile", "--target", target, src], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    out = probe(target, finder_dir)
    assert under(out["negint_ds"], target) and out["marker"] == "pip", out
    for key in ("kernels", "dispatch", "reference", "roofline"):
        assert under(out[key], os.path.join(target, "negint_ds", "kernels")), (key, out)


def test_second_checkout_beside_the_real_dev_install(tmp_path):
    # the scenario with whatever editable install of negint_ds this interpreter has
    check = textwrap.dedent('''
        import sys
        print(any("negint_ds" in getattr(sys.modules.get(getattr(f, "__module__", "")), "MAPPING", {})
                  for f in sys.meta_path))''')
    has = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60).stdout.strip()
    if has != "True":
        pytest.skip("no editable install of negint_ds in this interpreter")
    b = copy_checkout(tmp_path / "B", "B")
    out = probe(b, keep_real=True)
    assert out["marker"] == "B" and under(out["dispatch"], os.path.join(b, "kernels")), out


def test_top_level_kernels_from_the_root_hands_over_to_the_pypi_package(tmp_path):
    # ``python -m pytest`` (and a setuptools build) from the root puts it first on sys.path, where kernels/
    # used to shadow the PyPI ``kernels`` that transformers imports (CI: ImportError CUDAProperties)
    fake = tmp_path / "site" / "kernels"
    (fake / "_internals").mkdir(parents=True)
    (fake / "__init__.py").write_text("CUDAProperties = 'pypi'\n")
    (fake / "_internals" / "__init__.py").write_text("")
    (fake / "_internals" / "locking.py").write_text("def write_egg_lockfile(): return 'lock'\n")
    code = ("import kernels, kernels._internals.locking as l, negint_ds.kernels as ours; "
            "print(kernels.CUDAProperties, l.write_egg_lockfile(), kernels.__file__, ours.__file__)")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    name, lock, pypi_file, ours_file = p.stdout.split()
    assert (name, lock) == ("pypi", "lock")
    assert pypi_file == str(fake / "__init__.py")
    assert ours_file == os.path.join(REPO, "kernels", "__init__.py")


def test_top_level_kernels_from_the_root_without_the_pypi_package_is_not_found():
    # -S: no site-packages, so no PyPI kernels; the folder must not pass itself off as that package
    p = subprocess.run([sys.executable, "-S", "-c", "import kernels"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0 and "ModuleNotFoundError: No module named 'kernels'" in p.stderr, p.stderr
    assert "sys.modules" not in p.stderr
