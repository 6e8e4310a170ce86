"""aurora/_native.pyi is generated from the built extension and must not rot: regenerate it in
memory and compare with the committed and the installed copies."""
import ast
import importlib.util
from pathlib import Path

import pytest

import aurora
from aurora import _native

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "gen_native_stub.py"
INSTALLED = Path(aurora.__file__).resolve().parent


def load_tool():
    if not TOOL.is_file():
        pytest.skip("tools/ is not next to this test suite")
    spec = importlib.util.spec_from_file_location("gen_native_stub", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def stub_copies():
    """The stub in the source tree (when the suite runs from one) and the installed one."""
    copies = {INSTALLED / "_native.pyi"}
    if (ROOT / "aurora" / "_native.pyx").is_file():
        copies.add(ROOT / "aurora" / "_native.pyi")
    return sorted(copies)


def test_installed_package_has_its_type_information():
    assert (INSTALLED / "py.typed").is_file()
    assert (INSTALLED / "_native.pyi").is_file()


@pytest.mark.parametrize("path", stub_copies(), ids=str)
def test_stub_is_up_to_date(path):
    expected = load_tool().render(_native)
    assert path.is_file(), path
    assert path.read_text() == expected, (
        "%s is out of date: run python tools/gen_native_stub.py and commit the result" % path)


def test_stub_declares_every_public_name():
    tree = ast.parse((INSTALLED / "_native.pyi").read_text())
    declared = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            declared.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            declared.add(node.target.id)
    imported = {name for name, value in vars(_native).items()
                if isinstance(value, type(ast))
                or (callable(value) and not isinstance(value, type)
                    and getattr(value, "__module__", None) != "aurora._native")}
    public = {name for name in vars(_native) if not name.startswith("_")} - imported
    assert public - declared == set()
