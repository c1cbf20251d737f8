"""A real Prometheus (Debian's ``/usr/bin/prometheus``) in a lab host, scraping a lab
tailnet's metrics, for tests/lab/test_metrics.py.

``running_prometheus(host, workdir, jobs)`` writes a config (every job scraped each
``scrape_interval_s``), starts Prometheus in ``host``'s namespace with its data
directory under ``workdir``, waits until its HTTP API answers, and always stops it
when the block ends (on failure too). The API listens on the lab host's address, which
only the lab reaches, so queries run inside the namespace (``Prometheus.query``: one
short Python process per batch of expressions).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weftlab.netlab import Host, poll_until

PROMETHEUS = Path("/usr/bin/prometheus")
PORT = 9090
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

# argv: base URL, then expressions; prints {expr: the API's JSON answer}.
_QUERY = r"""
import json, sys, urllib.parse, urllib.request
out = {}
for expr in sys.argv[2:]:
    url = sys.argv[1] + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            out[expr] = json.load(r)
    except OSError as e:
        out[expr] = {"status": "unreachable", "error": str(e)}
print(json.dumps(out))
"""


class PrometheusError(RuntimeError):
    pass


@dataclass
class Prometheus:
    host: Host
    url: str
    process: subprocess.Popen[Any]
    log_path: Path

    def query(self, *exprs: str) -> dict[str, list[dict[str, Any]]]:
        """The instant vector of each PromQL expression (GET /api/v1/query)."""
        r = self.host.run([sys.executable, "-c", _QUERY, self.url, *exprs], check=False)
        if r.returncode != 0:
            raise PrometheusError(f"query failed: {r.stderr[-2000:]}")
        answers = json.loads(r.stdout)
        out = {}
        for expr, answer in answers.items():
            if answer.get("status") != "success":
                raise PrometheusError(f"{expr}: {answer}")
            out[expr] = answer["data"]["result"]
        return out

    def values(self, *exprs: str) -> dict[str, float | None]:
        """Each expression's value, summed over its series; None when it has none."""
        return {
            expr: sum(float(s["value"][1]) for s in result) if result else None
            for expr, result in self.query(*exprs).items()
        }

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)


def config(jobs: dict[str, list[str]], scrape_interval_s: float) -> str:
    """A prometheus.yml (JSON is YAML) scraping ``jobs``: name -> ["host:port", ...]."""
    interval = f"{int(scrape_interval_s * 1000)}ms"
    return json.dumps(
        {
            "global": {"scrape_interval": interval, "scrape_timeout": interval},
            "scrape_configs": [
                {"job_name": name, "static_configs": [{"targets": targets}]}
                for name, targets in sorted(jobs.items())
            ],
        },
        indent=2,
    )


@contextlib.contextmanager
def running_prometheus(
    host: Host, workdir: Path, jobs: dict[str, list[str]], scrape_interval_s: float = 1.0
) -> Iterator[Prometheus]:
    if not PROMETHEUS.exists():
        raise PrometheusError(f"{PROMETHEUS} is missing: install Debian's prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(config(jobs, scrape_interval_s))
    log_path = workdir / "prometheus.log"
    argv = [
        str(PROMETHEUS),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={host.ip}:{PORT}",
    ]
    with open(log_path, "ab") as log:
        process = host.popen(argv, stdout=log, stderr=subprocess.STDOUT)
    prom = Prometheus(host, f"http://{host.ip}:{PORT}", process, log_path)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise PrometheusError(f"prometheus exited: {prom.log()[-3000:]}")
            try:
                prom.query("up")
            except PrometheusError:
                return False
            return True

        poll_until(ready, timeout_s=START_TIMEOUT_S, what="prometheus to answer queries")
        yield prom
    finally:
        prom.stop()
