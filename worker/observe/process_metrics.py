"""What every Prometheus target shows about itself: the build (``fanout_worker_build_info``) and
the process, platform and garbage-collector collectors of prometheus_client, on the worker's own
registry (never the process-global one)."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from worker import __version__

DISTRIBUTION = "fanout-worker"


def package_version() -> str:
    """The installed distribution's version; the package's own when run from a tree not installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return __version__


class BuildInfo(Collector):
    """``fanout_worker_build_info{version}`` = 1: joins any metric to the version that produced it."""

    def __init__(self, release: str) -> None:
        self._release = release

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "fanout_worker_build_info", "The running fanout-worker's version (always 1).", labels=("version",)
        )
        family.add_metric((self._release,), 1.0)
        yield family


def register_process_collectors(registry: CollectorRegistry, release: str | None = None) -> None:
    """Build info, process_* (CPU, memory, file descriptors, start time), python_info and python_gc_*."""
    registry.register(BuildInfo(release if release is not None else package_version()))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
