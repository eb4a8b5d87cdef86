"""cffi has no declarative configuration: this names the extension to build."""

from setuptools import setup

setup(cffi_modules=["_native/build_core.py:ffibuilder"])
