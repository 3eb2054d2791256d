"""Build hook: generate the stubs into the build tree, so wheels carry them and the repository does not."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _generator():  # gen_python.py sits beside this file; load it by path (the build runs from an isolated copy)
    spec = importlib.util.spec_from_file_location("gen_python", HERE / "gen_python.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithStubs(build_py):
    def run(self) -> None:
        super().run()
        _generator().generate(Path(self.build_lib))


setup(cmdclass={"build_py": BuildWithStubs})
