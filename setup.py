"""Native extensions (metadata lives in pyproject.toml).

`pip install -e .` (scripts/setup.sh) builds them in place with the machine's C compiler.
`-ffp-contract=off`: no fused multiply-add, so any float code gives the same results on
every CPU (the range coder itself is integer-only).
"""

from setuptools import Extension, setup

COMMON_FLAGS = ["-O2", "-std=c99", "-ffp-contract=off"]

setup(
    ext_modules=[
        # test binding of codec/native/rangecoder.h, the C twin of constriction's range coder
        Extension(
            "codec._rangecoder",
            sources=["codec/native/rangecoder_module.c"],
            depends=["codec/native/rangecoder.h"],
            extra_compile_args=COMMON_FLAGS,
            optional=True,  # test-only: an install without a C compiler still works (its tests then fail loudly)
        ),
    ],
)
