"""Sphinx configuration of the pfd_ase documentation (``make docs``).

Pages are Markdown (MyST); the API reference is built from the numpy-style docstrings by
autodoc + napoleon. Three directives defined here keep the pages in step with the code:

``pfd-automodules PACKAGE``
    the package's docstring, then every public submodule (found at build time) with its
    members; ``pfd_ase`` alone gives its top-level modules.
``pfd-default-config``
    the output of ``pfd-ase config`` (the full default configuration, commented).
``pfd-cli-help``
    ``pfd-ase --help`` and every subcommand's ``--help``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pfd_ase  # noqa: E402

project = "pfd_ase"
author = "pfd_ase developers"
copyright = "pfd_ase developers"
release = pfd_ase.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# docs/silicon_quick holds the figures of a run (and its report.md): images, not pages
exclude_patterns = ["_build", "silicon_quick/*.md", "silicon_quick/*.json"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# only pfd_ase's own docstrings (an inherited one, e.g. Executor.submit, is not ours to fix)
autodoc_inherit_docstrings = False
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "alabaster"
html_title = f"pfd_ase {release}"
html_theme_options = {"description": "PFD force fields as an ASE plugin", "fixed_sidebar": True}


# --------------------------------------------------------------------------- directives


def public_submodules(package: str) -> list[str]:
    """Public modules directly under ``package`` (no ``_private`` ones), sorted."""
    pkg = importlib.import_module(package)
    out = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_"):
            continue
        name = f"{package}.{info.name}"
        if package == "pfd_ase" and info.ispkg:
            continue  # subpackages have their own pages
        out.append(name)
    return sorted(out)


class AutoModules(SphinxDirective):
    """``pfd-automodules PACKAGE``: the package's docstring and each public submodule."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        package = self.arguments[0]
        try:
            modules = public_submodules(package)
        except Exception as exc:  # a clear warning (an error with -W), not a crash
            raise self.error(f"cannot import {package}: {type(exc).__name__}: {exc}") from exc
        lines = []
        if package != "pfd_ase":
            lines += [f".. automodule:: {package}", "   :no-members:", ""]
        for module in modules:
            title = f"``{module}``"
            lines += [title, "-" * len(title), ""]
            # members defined in the module itself: a package's re-exports are documented once
            lines += [f".. automodule:: {module}", "   :ignore-module-all:", ""]
        return self._parse(lines)

    def _parse(self, lines: list[str]) -> list[nodes.Node]:
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(
            self.state, StringList(lines, source=self.get_source_info()[0]), node
        )
        return node.children


def _literal(text: str, language: str) -> nodes.literal_block:
    block = nodes.literal_block(text, text)
    block["language"] = language
    return block


class DefaultConfig(SphinxDirective):
    """``pfd-default-config``: what ``pfd-ase config`` prints (the defaults as plain YAML where
    this version of pfd_ase cannot render them with comments)."""

    def run(self) -> list[nodes.Node]:
        from pfd_ase.workflow import config

        if hasattr(config, "default_config_text"):
            return [_literal(config.default_config_text(), "yaml")]
        import yaml

        text = yaml.safe_dump(config.DEFAULTS, sort_keys=False)
        stage = yaml.safe_dump({"finetune": {"stages": [config.STAGE_DEFAULTS]}}, sort_keys=False)
        return [_literal(text + "# one entry of finetune.stages:\n" + stage, "yaml")]


class CliHelp(AutoModules):
    """``pfd-cli-help``: ``pfd-ase --help`` and every subcommand's ``--help``."""

    required_arguments = 0

    def run(self) -> list[nodes.Node]:
        import typer.main
        from typer.testing import CliRunner

        from pfd_ase.cli import app

        runner = CliRunner()
        lines: list[str] = []
        for name in [None, *typer.main.get_command(app).commands]:
            args = [name, "--help"] if name else ["--help"]
            result = runner.invoke(app, args, prog_name="pfd-ase", terminal_width=88)
            if result.exit_code != 0:
                raise self.error(f"pfd-ase {' '.join(args)} failed: {result.output}")
            title = f"``pfd-ase {name}``" if name else "``pfd-ase``"
            lines += [title, "-" * len(title), "", ".. code-block:: text", ""]
            lines += ["   " + line for line in result.output.strip("\n").splitlines()]
            lines += [""]
        return self._parse(lines)


def setup(app):
    app.add_directive("pfd-automodules", AutoModules)
    app.add_directive("pfd-default-config", DefaultConfig)
    app.add_directive("pfd-cli-help", CliHelp)
    return {"parallel_read_safe": True}
