# SPDX-License-Identifier: MIT OR Apache-2.0
"""python/composefs/_native.pyi against the extension it describes: every name the stub declares
exists in `composefs._native` (and the other way round), every function and method takes the
parameters the stub gives it (names, kinds, which have defaults), and the result classes have the
attributes the stub declares."""

from __future__ import annotations

import ast
import inspect
import os
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


# ---- every result is a frozen class whose attributes have the types the stub gives them ----

RICH_DUMP = (
    b"/ 4096 40755 3 0 0 0 10.0 - - - user.r=1\n"
    b"/d 4096 40700 2 1 2 0 12.5 - - - trusted.overlay.opaque=y\n"
    b"/d/wh 0 20000 1 0 0 0 11.0 - - -\n"
    b"/d/l 4 120777 1 0 0 0 11.0 /tgt - -\n"
    b"/f 4096 100644 2 0 0 0 13.0 3d/248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95 - "
    b"3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95 user.f=3\n"
    b"/g 0 @100644 2 0 0 0 13.0 /f - -\n"
    b"/na\\xffme 3 100644 1 0 0 0 13.5 - a\\x00c - user.k\\xfe=\\x01\\x02\n"
)
BUILTINS = {"int": int, "str": str, "bytes": bytes, "bool": bool}


def conforms(value, annotation: ast.expr) -> bool:
    """Whether ``value`` is of the type the stub's annotation names (the forms the stub uses)."""
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        return conforms(value, annotation.left) or conforms(value, annotation.right)
    if isinstance(annotation, ast.Constant) and annotation.value is None:
        return value is None
    if isinstance(annotation, ast.Subscript) and isinstance(annotation.value, ast.Name):
        if annotation.value.id == "list":
            return isinstance(value, list) and all(conforms(v, annotation.slice) for v in value)
        if annotation.value.id == "Literal":
            s = annotation.slice
            return value in [e.value for e in (s.elts if isinstance(s, ast.Tuple) else [s])]
    if isinstance(annotation, ast.Name):
        alias = next((n.value for n in stub_tree().body if isinstance(n, ast.Assign)
                      and [t.id for t in n.targets if isinstance(t, ast.Name)] == [annotation.id]), None)
        if alias is not None:  # the stub's own type aliases (_Action = Literal[...])
            return conforms(value, alias)
        if annotation.id in BUILTINS:
            return type(value) is BUILTINS[annotation.id]  # a bool is no int here
        return type(value) is getattr(_native, annotation.id)
    raise AssertionError(f"the test does not know the annotation {ast.unparse(annotation)}")


def check_result(obj, seen: set[str]) -> None:
    """``obj`` and the results inside it: each stub property present with its declared type,
    no attribute settable, a repr naming the class."""
    cls = type(obj)
    node = declared()[cls.__name__]
    seen.add(cls.__name__)
    assert repr(obj).startswith(cls.__name__ + "(")
    props = [m for m in node.body if isinstance(m, ast.FunctionDef)
             and any(isinstance(d, ast.Name) and d.id == "property" for d in m.decorator_list)]
    assert props, cls.__name__
    for p in props:
        value = getattr(obj, p.name)
        assert conforms(value, p.returns), f"{cls.__name__}.{p.name} = {value!r}, not {ast.unparse(p.returns)}"
        with pytest.raises(AttributeError):
            setattr(obj, p.name, value)
        for v in value if isinstance(value, list) else [value]:
            if type(v).__module__ == "composefs._native":
                check_result(v, seen)


def _layer_tar() -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in [("etc/hostname", b"box\n"), ("usr/big", b"x" * 10000)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("usr/link")
        link.type, link.linkname = tarfile.SYMTYPE, "big"
        t.addfile(link)
    return buf.getvalue()


def test_results_are_frozen_classes_of_the_stubs_types(tmp_path):
    import io

    src, store, image = tmp_path / "src", tmp_path / "objects", tmp_path / "rich.cfs"
    (src / "sub").mkdir(parents=True)
    (src / "small").write_bytes(b"inline")
    (src / "sub" / "big").write_bytes(b"b" * 5000)
    (src / "link").symlink_to("small")
    try:
        os.setxattr(src / "small", "user.k", b"\xff\x00")
    except OSError:
        pass  # a file system without user xattrs: the rest still holds
    store.mkdir()
    built = _native.build_from_dump(RICH_DUMP, str(image))
    layer = _native.oci_read_layer(io.BytesIO(_layer_tar()), str(store))
    results = [
        built,
        _native.build_from_dump(RICH_DUMP, None, return_image=True),
        _native.build_from_directory(str(src), None, store=str(store)),
        _native.build_from_directory(str(src), None, return_image=True),
        _native.scan_directory(str(src), store=str(store), entries=True),
        _native.scan_directory(str(src)),
        _native.oci_build_image([layer], tmp_path / "oci.cfs"),
        _native.parse_mount_options(["basedir=/a:/b,digest=" + "ab" * 32 + ",upperdir=/u,workdir=/w,ro,nosuid"]),
        _native.parse_mount_options([]),
        *_native.image_entries(str(image)),
        *_native.image_entries(str(image), full=False),
    ]
    from composefs.repository import Repository

    repo = Repository.init(tmp_path / "repo")
    repo.import_directory(str(src), "named")
    (tmp_path / "layer.tar").write_bytes(_layer_tar())
    plan = _native.image_bytes_plan(image.read_bytes())
    big = _native.store_insert(str(store), str(src / "sub" / "big"))
    results += [
        _native.store_insert(str(store), str(src / "small")),
        *_native.store_insert_many(str(store), [str(src / "small"), str(src / "sub" / "big")]),
        _native.ObjectStore(str(store)).insert_stream(io.BytesIO(b"b" * 5000), big.digest, 5000),
        *_native.image_objects_sized(str(image)),
        *_native.image_objects_walk(str(image)),
        plan,
        *_native.tar_index(tmp_path / "layer.tar"),
        _native.repo_image_for_mount(repo.path, "named"),
    ]
    with open(src / "small", "rb") as f:
        try:
            results.append(_native.measure_verity(f.fileno()))
        except OSError:
            pass  # no fs-verity here (the guest suite's kernel has it)
    seen: set[str] = set()
    for r in results:
        check_result(r, seen)
    assert {"BuildResult", "ScanResult", "ScanStats", "StoreStats", "ScanEntry", "Xattr", "ImageEntry",
            "MountOptions", "StoredObject", "ImageObject", "ImagePlan", "TarMember", "MountableImage"} <= seen
    # What the classes hold, where a wrong field would not show as a wrong type.
    assert (built.entries, built.hardlinks, built.whiteouts, built.objects) == (7, 1, 1, 1)
    assert (big.size, big.action) == (5000, "reused")
    assert [(o.name, o.size) for o in plan.objects] == [(o.name, o.size) for o in _native.image_objects_sized(image)]
    assert plan.entries == built.entries
    assert [(m.name, m.kind, m.link) for m in _native.tar_index(tmp_path / "layer.tar")] == [
        (b"etc/hostname", "file", b""), (b"usr/big", "file", b""), (b"usr/link", "symlink", b"big")]
    entries = {e.path: e for e in _native.image_entries(str(image))}
    odd = entries[os.fsdecode(b"/na\xffme")]
    assert (odd.inline, [(x.key, x.value) for x in odd.xattrs]) == (b"a\x00c", [(b"user.k\xfe", b"\x01\x02")])
    assert (entries["/g"].hardlink_to, entries["/d/l"].target, entries["/d/wh"].type) == ("/f", "/tgt", "chardev")
    assert entries["/f"].object == "3d/248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95"
    assert "/" not in {e.path for e in _native.image_entries(str(image), full=False)}
    assert _native.scan_directory(str(src), entries=True).entries == _native.scan_directory(str(src), entries=True).entries
