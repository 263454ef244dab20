"""The package itself: its version comes from the installed metadata, read on first use."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import fastsoftmax


def test_version_is_the_installed_metadata_version():
    assert fastsoftmax.__version__ == importlib.metadata.version("fastsoftmax")
    from fastsoftmax import __version__

    assert __version__ == fastsoftmax.__version__


def test_version_of_an_uninstalled_source_tree(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert fastsoftmax._package_version() == "0+unknown"


def test_import_does_not_read_the_version():
    """`import fastsoftmax` stays cheap: the metadata is read only when __version__ is asked for."""
    code = "import fastsoftmax; print('__version__' in vars(fastsoftmax))"
    root = str(Path(__file__).resolve().parent.parent)  # this source tree, installed or not
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env=env)
    assert out.stdout.strip() == "False"
