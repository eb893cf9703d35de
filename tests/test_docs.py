"""The documentation site: every public name has an API entry, and the strict build passes.

The fast test reads the ``:::`` directives of ``docs/`` and the mkdocstrings options of
``mkdocs.yml`` (no build); the slow one runs ``mkdocs build --strict`` — which executes the
notebooks in ``examples/`` and fails on a broken cross-reference — and looks for each name's
anchor in the HTML it wrote.
"""

import ast
import importlib.util
import os
import re
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
_DIRECTIVE = re.compile(r"^::: *([\w.]+) *\n((?:[ \t]+.*\n|[ \t]*\n)*)", re.M)


def _public_modules():
    """``{module: __all__}`` for every module of the package that declares ``__all__``."""
    out = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, "simple_reflow")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            with open(path) as f:
                tree = ast.parse(f.read())
            for node in tree.body:
                if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
                ):
                    parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                    module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                    out[module] = list(ast.literal_eval(node.value))
    return out


def _directives():
    """``{module: (page, local options)}`` for every ``::: module`` in ``docs/``."""
    out = {}
    for dirpath, _, files in os.walk(DOCS):
        for name in files:
            if not name.endswith(".md"):
                continue
            page = os.path.relpath(os.path.join(dirpath, name), DOCS)
            with open(os.path.join(dirpath, name)) as f:
                text = f.read()
            for m in _DIRECTIVE.finditer(text):
                block = yaml.safe_load(m.group(2)) if m.group(2).strip() else None
                out[m.group(1)] = (page, (block or {}).get("options", {}))
    return out


class _MkdocsLoader(yaml.SafeLoader):
    """mkdocs.yml's YAML: ``!ENV [NAME, default]`` reads as its default here."""


_MkdocsLoader.add_constructor("!ENV", lambda loader, node: loader.construct_sequence(node)[-1])


def _global_options():
    with open(os.path.join(ROOT, "mkdocs.yml")) as f:
        cfg = yaml.load(f, Loader=_MkdocsLoader)  # noqa: S506 (a SafeLoader)
    for plugin in cfg["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            return plugin["mkdocstrings"]["handlers"]["python"].get("options", {})
    raise AssertionError("mkdocs.yml has no mkdocstrings plugin")


def _filtered_out(name, filters):
    """mkdocstrings' rule: the last matching filter decides; ``public`` keeps ``__all__``."""
    if filters == "public":
        return False
    keep = None
    for pattern in filters or []:
        exclude = pattern.startswith("!")
        if re.search(pattern.removeprefix("!"), name):
            keep = not exclude
    return keep is False


def _coverage_problems(modules, directives, global_options):
    """Why some name of some ``__all__`` would have no entry in the API reference."""
    problems = []
    for module, names in sorted(modules.items()):
        if module not in directives:
            problems.append(f"{module}: no '::: {module}' page under docs/")
            continue
        options = {**global_options, **directives[module][1]}
        members = options.get("members")
        if members is False or (isinstance(members, list) and not set(names) <= set(members)):
            problems.append(f"{module}: options.members={members!r} leaves out part of __all__")
        if not options.get("show_if_no_docstring", False):
            problems.append(f"{module}: show_if_no_docstring is off (undocumented names vanish)")
        for name in names:
            if f"{module}.{name}" in modules:  # a submodule: its own page
                continue
            if _filtered_out(name, options.get("filters", ["!^_[^_]"])):
                problems.append(f"{module}.{name}: excluded by filters={options['filters']!r}")
    return problems


def test_every_public_name_has_an_api_entry():
    modules = _public_modules()
    assert len(modules) >= 50 and "simple_reflow.sampler" in modules  # the walk found them
    assert _coverage_problems(modules, _directives(), _global_options()) == []


def test_coverage_check_sees_what_would_drop_a_name():
    modules = {"pkg.a": ["f", "_g"], "pkg.b": ["h"]}
    good = {"pkg.a": ("a.md", {}), "pkg.b": ("b.md", {})}
    base = {"filters": "public", "show_if_no_docstring": True}
    assert _coverage_problems(modules, good, base) == []
    assert _coverage_problems(modules, {"pkg.a": good["pkg.a"]}, base) == [
        "pkg.b: no '::: pkg.b' page under docs/"
    ]
    assert len(_coverage_problems(modules, good, {**base, "filters": ["!^_[^_]"]})) == 1
    assert len(_coverage_problems(modules, good, {**base, "show_if_no_docstring": False})) == 2
    narrowed = {**good, "pkg.a": ("a.md", {"members": ["f"]})}
    assert _coverage_problems(modules, narrowed, base) == [
        "pkg.a: options.members=['f'] leaves out part of __all__"
    ]


def _built_page(site, page):
    stem = page[: -len(".md")]
    if os.path.basename(stem) == "index":
        return os.path.join(site, os.path.dirname(stem), "index.html")
    return os.path.join(site, stem, "index.html")


@pytest.mark.slow  # the whole site, notebooks executed: minutes
def test_strict_build_renders_every_public_name(tmp_path):
    missing = [
        m
        for m in ("mkdocs", "mkdocstrings_handlers", "mkdocs_jupyter", "material")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        why = f"the docs tools are not installed ({', '.join(missing)}): pip install -e '.[docs]'"
        if os.environ.get("CI"):  # CI installs them: there a missing tool is a failure
            pytest.fail(why)
        pytest.skip(why)
    site = tmp_path / "site"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]

    directives = _directives()
    absent = []
    for module, names in sorted(_public_modules().items()):
        with open(_built_page(site, directives[module][0])) as f:
            ids = set(re.findall(r'id="([^"]+)"', f.read()))
        for name in names:
            sub = f"{module}.{name}"
            if sub in directives:  # a submodule: the anchor is on its own page
                with open(_built_page(site, directives[sub][0])) as f:
                    ids |= set(re.findall(r'id="([^"]+)"', f.read()))
            if sub not in ids:
                absent.append(sub)
    assert absent == []
    notebooks = sorted(
        n[:-3] for n in os.listdir(os.path.join(ROOT, "examples")) if re.match(r"\d\d_.*\.py$", n)
    )
    for nb in notebooks:  # executed and rendered (an exception would have failed the build)
        assert (site / "examples" / nb / "index.html").is_file(), nb
