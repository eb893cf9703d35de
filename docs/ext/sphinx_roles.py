"""Griffe extension: the docstrings' Sphinx roles become checked cross-references.

The docstrings write references as reStructuredText roles (``:func:`flow_loss```,
``:class:`~simple_reflow.data.DataSpec```, ``:mod:`.pipeline```), which mkdocstrings would show
as plain text. Each becomes an mkdocs-autorefs link to the object's entry in the API reference,
``[`flow_loss`][simple_reflow.losses.flow_loss]``:

- a bare or dotted name is looked up as Python would from where the docstring is written (the
  object, then its parents up to the module; names a module imports count), else, for a bare
  name, as the one documented object of that name; a leading ``.`` from the docstring's module,
  then the packages above it; a full ``simple_reflow.…`` path as it is; ``~`` shows only the
  last component;
- a name that exists but has no entry of its own (a private helper, a name outside
  ``__all__``) stays inline code;
- ``[r, t] [recon]`` (an interval, then a provenance tag) stays text, not a reference link;
- a name that does not exist stays a link, which autorefs cannot resolve: with
  ``mkdocs build --strict`` the build fails and names the docstring.
"""

from __future__ import annotations

import re

import griffe

# "over [r, t] [recon]": Markdown would read a shape or interval followed by a METHOD.md
# provenance tag as a reference link; the tag's bracket is escaped.
_BRACKET_PAIR = re.compile(r"\]([ \t]+)\[")
_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc|const):`(~?)([^`<>]+)`")


def _lookup(collection, path):
    try:
        return collection.get_member(path)
    except Exception:  # KeyError, or an alias that cannot be resolved
        return None


def _module_of(obj):
    while not obj.is_module:
        obj = obj.parent
    return obj


def _full_path(obj, target, collection, names):
    """The full dotted path ``target`` names from ``obj``'s scope (unchecked when unknown)."""
    if target.startswith("."):  # the docstring's module, then the packages above it
        package = _module_of(obj)
        while package is not None:
            if _lookup(collection, package.path + target) is not None:
                return package.path + target
            package = package.parent
        return _module_of(obj).path + target
    head, _, rest = target.partition(".")
    scope = obj
    while scope is not None:
        member = scope.members.get(head)
        if member is not None:
            base = member.target_path if member.is_alias else member.path
            return f"{base}.{rest}" if rest else base
        scope = scope.parent
    if "." not in target and len(names.get(target, ())) == 1:  # one object of that name
        return names[target][0]
    if "." not in target:  # unknown: a dotted path, which autorefs reports when unresolved
        return f"{_module_of(obj).path}.{target}"
    return target


def _has_entry(obj) -> bool:
    """Whether the API reference renders ``obj`` (a public member of a module with ``__all__``)."""
    if obj.is_module:
        return obj.exports is not None
    parent = obj.parent
    if parent is None or not obj.is_public:
        return False
    if parent.is_module:
        return parent.exports is not None and obj.name in {str(n) for n in parent.exports}
    return _has_entry(parent)


class SphinxRoles(griffe.Extension):
    """Rewrites ``:role:`target``` in every docstring of the loaded package."""

    def on_package(self, *, pkg, loader, **kwargs):
        collection = loader.modules_collection
        objects = []

        def walk(obj):
            objects.append(obj)
            for member in obj.members.values():
                if not member.is_alias:
                    walk(member)

        walk(pkg)
        names = {}  # name -> paths of the documented objects of that name
        for obj in objects:
            if _has_entry(obj):
                names.setdefault(obj.name, []).append(obj.path)
        for obj in objects:
            if obj.docstring is not None:
                text = _BRACKET_PAIR.sub(r"]\1\\[", obj.docstring.value)
                obj.docstring.value = _ROLE.sub(
                    lambda m, obj=obj: self._link(obj, m, collection, names), text
                )

    @staticmethod
    def _link(obj, match, collection, names):
        short, target = match.group(1) == "~", match.group(2).strip()
        title = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
        path = _full_path(obj, target, collection, names)
        found = _lookup(collection, path)
        if found is not None and not _has_entry(found):
            return f"`{title}`"
        return f"[`{title}`][{path}]"
