"""prometheus-client's text format, both ways: the keeper's families as a collector (for the
endpoint and the textfile), and a scraped page read back (for `status`). The only module
that imports prometheus_client."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sentinel_keeper.metrics.families import Family
from sentinel_keeper.metrics.readback import Sample

CONTENT_TYPE = CONTENT_TYPE_LATEST


def _metric(family: Family) -> Metric:
    spec = family.spec
    labels = list(spec.labels)
    if spec.kind == "histogram":
        histogram = HistogramMetricFamily(spec.name, spec.help, labels=labels)
        for values, counted in family.histograms:
            buckets = [
                (floatToGoString(bound), n)  # type: ignore[no-untyped-call]
                for bound, n in counted.cumulative()
            ]
            histogram.add_metric(list(values), buckets, sum_value=counted.total)
        return histogram
    metric: CounterMetricFamily | GaugeMetricFamily
    if spec.kind == "counter":
        metric = CounterMetricFamily(spec.name, spec.help, labels=labels)
    else:
        metric = GaugeMetricFamily(spec.name, spec.help, labels=labels)
    for values, value in family.samples:
        metric.add_metric(list(values), value)
    return metric


class KeeperCollector(Collector):
    """Collects the families that ``source`` returns at each scrape."""

    def __init__(self, source: Callable[[], tuple[Family, ...]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        for family in self._source():
            yield _metric(family)


def registry(source: Callable[[], tuple[Family, ...]], *, process: bool) -> CollectorRegistry:
    """A registry of the keeper's families; ``process`` adds the process_* figures (memory,
    CPU, open files) of this process, which the endpoint shows and the textfile does not (it
    is read by node_exporter, another process)."""
    made = CollectorRegistry(auto_describe=False)
    made.register(KeeperCollector(source))
    if process:
        ProcessCollector(registry=made)
    return made


def wsgi_app(made: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    """prometheus-client's WSGI app for ``made`` (the endpoint allows it GET and HEAD only)."""
    app: Callable[..., Iterable[bytes]] = make_wsgi_app(made)
    return app


def render(made: CollectorRegistry) -> bytes:
    """The text exposition format."""
    return generate_latest(made)


def parse(text: str) -> tuple[Sample, ...]:
    """Every sample of a page in the text format. ValueError when it is not one."""
    try:
        return tuple(
            Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        )
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise ValueError(f"not Prometheus text format: {exc}") from None
