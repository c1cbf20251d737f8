"""Metrics in the Prometheus text format, shared by weftd and weft-control.

Each process owns one ``prometheus_client.CollectorRegistry`` (never the library's global
one, so several servers in one test process keep their own). What the code already
counts (the data plane's counters, the relay's per-client stats, the hub's streams) is
read by custom collectors at scrape time; only what nothing counted yet is a
``Counter`` or ``Histogram`` of its own. ``http`` serves a registry on a listener of its
own (``--metrics-listen``). docs/metrics.md lists every metric.
"""
