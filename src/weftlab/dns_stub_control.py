"""``weft-control serve`` whose full maps carry a MagicDNS config (lab only, not the
product), for the OS-DNS lab tests (tests/lab/test_dns_os.py) until the server's own DNS
document sends ``MapResponse.dns_config``.

Run as ``python -m weftlab.dns_stub_control serve [serve flags...]``. Every full map
without a ``dns_config`` gets ``DNSConfig(magic_dns=True, domain=<dns_domain>)``; a map
that already has one (a server with DNS documents) is left alone, so the tests keep
working once that lands (the main session may then drop this launcher).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from weftnet import tailcfg


def _with_dns(full: Any) -> Any:
    def full_with_dns(self: Any, *args: Any, **kwargs: Any) -> tailcfg.MapResponse:
        frame: tailcfg.MapResponse = full(self, *args, **kwargs)
        if frame.dns_config is None and frame.dns_domain:
            domain = frame.dns_domain
            dns = tailcfg.DNSConfig(magic_dns=True, domain=domain, search_domains=[domain])
            frame = frame.model_copy(update={"dns_config": dns})
        return frame

    return full_with_dns


def main(argv: Sequence[str] | None = None) -> int:
    from weftnet.control.cli import main as cli
    from weftnet.control.domain import netmap

    netmap.MapView.full = _with_dns(netmap.MapView.full)  # type: ignore[method-assign]
    args = cli.build_parser().parse_args(argv)
    if args.command != "serve":
        print("only `serve` runs with the DNS stub", file=sys.stderr)
        return 2
    try:
        options = cli.serve_options(args)
    except cli.UsageError as e:
        print(f"{cli.PROG}: {e}", file=sys.stderr)
        return 2
    return cli.run_serve(options)


if __name__ == "__main__":
    sys.exit(main())
