"""An on-path attacker's ears, for lab tests: a TCP proxy that records every byte clients
send, in plaintext.

    python -m weftlab.recorder --listen HOST:PORT --to HOST:PORT --record FILE
                               [--tls-cert FILE --tls-key FILE] [--seconds N]

Each accepted connection is relayed to ``--to`` both ways; what the client sends is
appended to FILE as it arrives. With ``--tls-cert``/``--tls-key`` the recorder ends TLS
itself (presenting a certificate the victim should not trust), so FILE holds whatever the
client would have sent inside TLS had it accepted the certificate. The process stops by
itself after ``--seconds`` (default 300): a lab load must end even if a test forgets it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
from pathlib import Path

CHUNK = 64 * 1024


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: Path | None
) -> None:
    try:
        while data := await reader.read(CHUNK):
            if record is not None:
                with record.open("ab") as f:
                    f.write(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(
    listen: str, to: str, record: Path, tls: ssl.SSLContext | None, seconds: float
) -> None:
    host, _, port = listen.rpartition(":")
    to_host, _, to_port = to.rpartition(":")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(to_host, int(to_port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer, record), _pipe(up_reader, writer, None))

    record.touch()
    server = await asyncio.start_server(handle, host or "0.0.0.0", int(port), ssl=tls)
    async with server:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(prog="weftlab.recorder")
    p.add_argument("--listen", required=True)
    p.add_argument("--to", required=True)
    p.add_argument("--record", required=True, type=Path)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--seconds", type=float, default=300.0)
    args = p.parse_args()
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    asyncio.run(serve(args.listen, args.to, args.record, tls, args.seconds))


if __name__ == "__main__":
    main()
