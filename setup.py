"""negint_ds: DeepSpeed-scaled training for studying negative interference in multilingual MLMs.

Install torch first (keep one you already have; on a CPU-only machine ``pip install torch==2.13.0``),
then ``pip install -e .``. The repository's top-level ``kernels/`` installs as ``negint_ds.kernels`` so
that it never shadows the unrelated PyPI package named ``kernels``.
"""
from setuptools import find_packages, setup

# negint_ds/* as is; the top-level kernels/ (and its subpackages) as negint_ds.kernels
PACKAGES = (["negint_ds"] + [f"negint_ds.{p}" for p in find_packages("negint_ds")]
            + ["negint_ds.kernels"] + [f"negint_ds.kernels.{p}" for p in find_packages("kernels")])

setup(
    name="negint_ds",
    version="0.1.0",
    description="DeepSpeed-scaled training for studying and curing negative interference in multilingual LMs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir={"negint_ds": "negint_ds", "negint_ds.kernels": "kernels"},
    package_data={"negint_ds.recipes": ["*.yaml"], "negint_ds.experiments": ["specs/*.yaml"]},
    install_requires=[
        "torch>=2.3",
        "deepspeed>=0.17",
        "sentencepiece>=0.2",
        "datasets>=2.19",
        "numpy>=1.24",
        "pyyaml>=6",
        "tqdm>=4.66",
        "safetensors>=0.4",
        "matplotlib>=3.7",
        "tensorboard>=2.14",
        "seqeval>=1.2",
        "scikit-learn>=1.2",
        "triton>=3.0; platform_system == 'Linux'",
    ],
    extras_require={
        "mpi": ["mpi4py>=3.1", "mpich"],
        "test": ["pytest>=7", "mpi4py>=3.1", "mpich", "transformers>=5", "tokenizers", "protobuf"],
        "bench": ["transformers>=5"],
        "hf": ["transformers>=5", "tokenizers", "protobuf"],
    },
)
