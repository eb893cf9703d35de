"""mkdocs hooks: serve files that live outside ``docs/`` and list them in the nav.

- ``examples/NN_name.py`` (jupytext percent-format notebooks) become pages under their own
  path, which mkdocs-jupyter then executes and renders; they fill the nav's "Examples" section.
- ``benchmarks/results/*`` (JSON, tables, figures) are copied under their own path, so a page
  links them as ``/benchmarks/results/x.json`` (checked by ``validation.absolute_links``; on
  GitHub the same link opens the repository's file); the ``.md`` tables become pages listed
  under "Benchmarks › Result tables".
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

NOTEBOOKS = "examples/[0-9][0-9]_*.py"
RESULTS = "benchmarks/results/*"


def _root(config) -> Path:
    return Path(config.docs_dir).resolve().parent  # the repository


def _find(section, title):
    """The list of the nav section called ``title`` (searched depth-first), or None."""
    for item in section:
        if isinstance(item, dict):
            for key, value in item.items():
                if key == title and isinstance(value, list):
                    return value
                if isinstance(value, list) and (found := _find(value, title)) is not None:
                    return found
    return None


def on_config(config):
    root = _root(config)
    fills = {
        "Examples": sorted(root.glob(NOTEBOOKS)),
        "Result tables": sorted(root.glob(RESULTS + ".md")),
    }
    for title, paths in fills.items():
        section = _find(config.nav or [], title)
        if section is None:
            raise ValueError(f"docs/hooks.py: mkdocs.yml's nav needs a section {title!r}.")
        section[:] = [p.relative_to(root).as_posix() for p in paths]
    return config


@event_priority(100)  # before mkdocs-jupyter picks the notebooks out of the files
def on_files(files: Files, config) -> Files:
    root = _root(config)
    for pattern in (NOTEBOOKS, RESULTS):
        for path in sorted(root.glob(pattern)):
            files.append(
                File(
                    path.relative_to(root).as_posix(),
                    src_dir=str(root),
                    dest_dir=config.site_dir,
                    use_directory_urls=config.use_directory_urls,
                )
            )
    return files
