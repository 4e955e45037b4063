"""The public API is typed (tha ships py.typed): every parameter and return
of the public methods of Heap, Schema, Active, Standby and Node is annotated, and
the annotations resolve."""
import inspect
import typing

import pytest

import tha

PUBLIC = [tha.Heap, tha.Schema, tha.Active, tha.Standby, tha.Node]


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_public_methods_are_annotated(cls):
    missing = []
    for name, fn in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("_") and name != "__init__":
            continue
        if fn.__module__.split(".")[0] != "tha":
            continue  # inherited from the standard library
        hints = typing.get_type_hints(fn)
        sig = inspect.signature(fn)
        for p in sig.parameters.values():
            if p.name in ("self", "cls") or p.name.startswith("_"):
                continue
            if p.name not in hints:
                missing.append(f"{name}({p.name})")
        if name != "__init__" and "return" not in hints:
            missing.append(f"{name} -> ?")
    assert not missing, missing
