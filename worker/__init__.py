"""The runtime: settings, wiring, change feeds, checkpoints, batching, publishing, CLI."""

__version__ = "0.3.0"
