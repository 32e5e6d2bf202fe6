"""Build of the optional compiled kernels; all metadata lives in setup.cfg."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # fused kernel sums for the entropy selector: optional, _kde falls back to torch/numpy
        Extension(
            "pfd_ase.selectors._kde_fused",
            sources=["pfd_ase/selectors/_kde_fused.c"],
            extra_compile_args=["-O3"],
            libraries=["m"],
            optional=True,
        )
    ]
)
