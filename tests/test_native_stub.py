# SPDX-License-Identifier: MIT OR Apache-2.0
"""python/composefs/_native.pyi against the extension it describes: every name the stub declares
exists in `composefs._native` (and the other way round), every function and method takes the
parameters the stub gives it (names, kinds, which have defaults), and the result classes have the
attributes the stub declares."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from composefs import _native

STUB = Path(_native.__file__).with_name("_native.pyi")


def stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text(), filename=str(STUB))


def public(names) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def declared() -> dict[str, ast.AST]:
    out: dict[str, ast.AST] = {}
    for node in stub_tree().body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
    return {k: v for k, v in out.items() if not k.startswith("_")}


def stub_params(fn: ast.FunctionDef, method: bool) -> list[tuple[str, str, bool]]:
    """(name, kind, has a default) per parameter, as inspect.Parameter names the kinds."""
    a = fn.args
    positional = a.posonlyargs + a.args
    defaults = [False] * (len(positional) - len(a.defaults)) + [True] * len(a.defaults)
    out = [(p.arg, "POSITIONAL_OR_KEYWORD", d) for p, d in zip(positional, defaults)]
    if method:
        out = out[1:]  # self / cls: not in a bound signature
    out += [(p.arg, "KEYWORD_ONLY", d is not None) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    return out


def real_params(obj) -> list[tuple[str, str, bool]]:
    sig = inspect.signature(obj)
    return [(p.name, p.kind.name, p.default is not inspect.Parameter.empty) for p in sig.parameters.values()]


def test_the_stub_declares_every_public_name_and_nothing_else():
    stub = set(declared())
    real = public(dir(_native))
    assert stub - real == set(), "declared in the stub, missing from _native"
    assert real - stub == set(), "in _native, missing from the stub"


FUNCTIONS = sorted(n for n, d in declared().items() if isinstance(d, ast.FunctionDef))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_functions_take_the_parameters_the_stub_gives(name):
    fn = declared()[name]
    assert real_params(getattr(_native, name)) == stub_params(fn, method=False)


def class_members():
    for cname, node in declared().items():
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    yield cname, item


@pytest.mark.parametrize("cname,member", [(c, m.name) for c, m in class_members()])
def test_class_members_exist_as_declared(cname, member):
    cls = getattr(_native, cname)
    node = next(m for c, m in class_members() if c == cname and m.name == member)
    assert hasattr(cls, member), f"{cname}.{member}"
    decorators = {d.id for d in node.decorator_list if isinstance(d, ast.Name)}
    if "property" in decorators:
        assert inspect.isdatadescriptor(inspect.getattr_static(cls, member)), f"{cname}.{member} is no attribute"
    elif member != "__new__":
        static = "staticmethod" in decorators
        bound = getattr(cls, member)
        params = real_params(bound)
        if not static and params and params[0][0] == "self":
            params = params[1:]
        assert params == stub_params(node, method=not static), f"{cname}.{member}"


def test_image_header_is_a_frozen_typed_result(tmp_path):
    import gzip

    from cfsrun import CONFORMANCE_DUMPS, conformance_rows

    row = next(r for r in conformance_rows() if r["dump"] == "sample-tiny.dump")
    image = tmp_path / "tiny.cfs"
    dump = gzip.decompress((CONFORMANCE_DUMPS / "sample-tiny.dump.gz").read_bytes())
    _native.build_from_dump(dump, str(image))
    h = _native.image_info(str(image))
    assert isinstance(h, _native.ImageHeader)
    assert (h.version, h.flags, h.digest) == (int(row["composefs_version"]), 0, row["image_fsverity_sha256"])
    assert repr(h) == f"ImageHeader(version={h.version}, flags=0x0, digest='{h.digest}')"
    with pytest.raises(AttributeError):
        h.version = 1
