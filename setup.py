"""Native extensions (metadata lives in pyproject.toml).

`pip install -e .` (scripts/setup.sh) builds them in place with the machine's C compiler.
`-ffp-contract=off`: no fused multiply-add, so any float code gives the same results on
every CPU (the range coder itself is integer-only).
"""

from setuptools import Extension, setup

COMMON_FLAGS = ["-O2", "-std=c99", "-ffp-contract=off"]
#: The native coding core: features in IEEE float32 (no contraction, no fast-math, SSE2 not
#: x87 on x86), the exact network in float64 (every partial sum an integer < 2^53, so any order
#: and FMA are exact), SIMD kernels chosen at run time (`__builtin_cpu_supports`).
CORE_FLAGS = ["-O3", "-std=c11", "-D_GNU_SOURCE", "-ffp-contract=off", "-fno-fast-math", "-pthread"]

setup(
    ext_modules=[
        # the native coding core (docs/codec.md, "Native core"); without it the engine runs
        # the reference Python path (same bytes, 10-30x slower)
        Extension(
            "codec._nvcore",
            sources=["codec/native/core.c", "codec/native/core_net.c", "codec/native/core_net_int.c"],
            depends=["codec/native/core.h", "codec/native/rangecoder.h"],
            include_dirs=["codec/native"],
            extra_compile_args=CORE_FLAGS,
            extra_link_args=["-pthread"],
            optional=True,
        ),
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
