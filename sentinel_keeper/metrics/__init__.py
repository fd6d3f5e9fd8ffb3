"""Prometheus figures of what only the keeper knows: residency, re-warms and their causes,
load times, Ollama's outages and restarts, GPU memory, other clients' pressure.

- :mod:`.counts`: what the daemon has counted since it started, advanced by each pass (pure);
- :mod:`.families`: every metric, its name, help and labels, and its samples now (pure);
- :mod:`.exposition`: prometheus-client's text format, both ways (its only importer);
- :mod:`.endpoint`: the read-only HTTP endpoint, and the scrape that `status` makes;
- :mod:`.exporter`: what the daemon publishes after each pass (endpoint and textfile);
- :mod:`.readback`: a scrape read back into figures;
- :mod:`.status`: what `status` shows of them.
"""
