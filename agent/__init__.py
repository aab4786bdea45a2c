"""eci-agent. Importing it serves the mypyc-compiled hot modules when (and only when) their
build matches the sources; see agent/native.py."""

#: The one place the version is written (pyproject.toml reads it from here): asking the
#: installed metadata for it (`importlib.metadata`) costs the agent ~0.5 MiB of RSS.
__version__ = "0.1.0"

from agent import native  # noqa: E402

native.install()
