"""eci-agent. Importing it serves the mypyc-compiled hot modules when (and only when) their
build matches the sources; see agent/native.py."""

from agent import native

native.install()
