"""The compiled part of the package: :mod:`sim.engine._kernel` and :mod:`sim.strategies._ticks`
(Cython; :mod:`sim.engine.kernel` loads them). Where they cannot be compiled (no C compiler), the
package installs without them and the engine does the same work in Python: the same answers, more
slowly."""

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the compiled modules if this machine can; say so and go on without them if not."""

    def run(self):
        try:
            super().run()
        except Exception as error:  # no compiler, no Python headers
            self.warn(f"the compiled modules were not built ({error}); the engine runs without them")

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
        print(f"the compiled modules were not built ({error}); the engine runs without them")
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
    # a timer's ticks (sim/strategies/ticks.py as it is, typed by _ticks.pxd beside it), under
    # its own name: the plain module stays importable, and sim.engine.kernel does not use the
    # compiled one once it is older than either file
    ticks = Extension("sim.strategies._ticks", ["sim/strategies/ticks.py"], extra_compile_args=["-O2", "-ffp-contract=off"])
    return cythonize([kernel, ticks], quiet=True, compiler_directives={"language_level": 3})


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
