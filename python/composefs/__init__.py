"""composefs toolchain: build, inspect and mount verified, content-addressed read-only images."""

__version__ = "0.1.0"
