"""Build of aurora's one native extension, ``aurora._native``.

The plain-C core in ``csrc/`` is compiled first with strict warnings (it must stay clean
under -Wall -Wextra -Wconversion), then linked into the Cython extension, whose generated C
is compiled with ordinary flags.  Knobs, read from the environment:

  AURORA_DEBUG=1                -O0 -g3 and the expensive assertions (AUR_DEBUG)
  AURORA_SANITIZE=1             AddressSanitizer + UndefinedBehaviorSanitizer
  AURORA_WARNINGS_AS_ERRORS=1   -Werror for csrc/
"""
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent
CSRC = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.c"))


def knob(name):
    return os.environ.get(name, "") not in ("", "0", "no", "false")


def flags():
    common = ["-std=c11", "-fno-strict-aliasing", "-fvisibility=hidden"]
    strict = ["-Wall", "-Wextra", "-Wconversion", "-Wshadow", "-Wstrict-prototypes",
              "-Wmissing-prototypes", "-Wno-unused-parameter"]
    link = []
    if knob("AURORA_DEBUG"):
        common += ["-O0", "-g3", "-DAUR_DEBUG=1"]
    else:
        common += ["-O3"]
    if knob("AURORA_SANITIZE"):
        common += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
        link += ["-fsanitize=address,undefined"]
    if knob("AURORA_WARNINGS_AS_ERRORS"):
        strict += ["-Werror"]
    return common, strict, link


class BuildExt(build_ext):
    """Compile csrc/ strictly, then the Cython module leniently, and link them together."""

    def build_extension(self, ext):
        common, strict, link = flags()
        objects = self.compiler.compile(
            CSRC,
            output_dir=self.build_temp,
            include_dirs=["csrc"],
            extra_postargs=common + strict,
            depends=[str(p) for p in (ROOT / "csrc").glob("*.h")],
        )
        ext.extra_objects = list(objects)
        ext.extra_compile_args = common + ["-Wno-unused-function"]
        ext.extra_link_args = link
        super().build_extension(ext)


def extensions():
    from Cython.Build import cythonize

    ext = Extension(
        "aurora._native",
        sources=["aurora/_native.pyx"],
        include_dirs=["csrc"],
        depends=[str(p) for p in (ROOT / "aurora").glob("*.pxi")]
        + [str(p) for p in (ROOT / "csrc").glob("*")],
    )
    return cythonize(
        [ext],
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
        quiet=True,
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
