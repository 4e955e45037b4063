from setuptools import setup

# The extension is built against the stable ABI (cffi defines
# Py_LIMITED_API: tha/_tha.abi3.so), so the wheel is tagged abi3 too: one
# wheel for CPython 3.9 and every later version.
setup(cffi_modules=["build_ext.py:ffibuilder"],
      options={"bdist_wheel": {"py_limited_api": "cp39"}})
