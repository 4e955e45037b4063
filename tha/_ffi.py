"""The one module that imports the compiled extension."""
from tha._tha import ffi, lib

__all__ = ["ffi", "lib"]
