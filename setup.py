"""Builds collx._C from csrc/ with the C compiler of the machine (C11, no numpy headers:
buffers come through the buffer protocol). SIMD kernels use per-function target
attributes and run-time CPU checks, so one build runs on any x86-64."""
import glob
import os

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
sources = sorted(glob.glob(os.path.join("csrc", "**", "*.c"), recursive=True))
sources = [s for s in sources if os.sep + "tests" + os.sep not in s]

ext = Extension(
    "collx._C",
    sources=sources,
    include_dirs=[os.path.join("csrc", "include")],
    extra_compile_args=["-std=gnu11", "-O3", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-fno-strict-aliasing"],
    define_macros=[("_GNU_SOURCE", "1")],
)

setup(ext_modules=[ext])
