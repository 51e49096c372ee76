"""The compiled part of the package: :mod:`sim.engine._kernel` (Cython; :mod:`sim.engine.kernel`
loads it). Where it cannot be compiled (no C compiler), the package installs without it and the
engine does the same work in Python: the same answers, more slowly."""

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the kernel if this machine can; say so and go on without it if not."""

    def run(self):
        try:
            super().run()
        except Exception as error:  # no compiler, no Python headers
            self.warn(f"sim.engine._kernel not compiled ({error}); the engine runs without it")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as error:
            self.warn(f"{ext.name} not compiled ({error}); the engine runs without it")


def extensions():
    import os

    from setuptools import Extension

    try:  # pip's isolated build has both (pyproject.toml); a build without isolation may not
        import numpy as np
        from Cython.Build import cythonize
    except ImportError as error:
        print(f"sim.engine._kernel not compiled ({error}); the engine runs without it")
        return []

    random = os.path.join(os.path.dirname(np.__file__), "random")
    kernel = Extension(
        "sim.engine._kernel", ["sim/engine/_kernel.pyx"],
        include_dirs=[np.get_include()],
        # numpy's distributions (its C library for extensions that draw as its Generator does)
        library_dirs=[os.path.join(random, "lib")], libraries=["npyrandom", "m"],
        # no contraction of a * b + c into one rounding: sums must round as Python's do
        extra_compile_args=["-O2", "-ffp-contract=off"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    return cythonize([kernel], quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
