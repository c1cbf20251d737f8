"""The HTTP side of weft-control: node API, admin API, the map hub, the embedded relay,
and the process wiring (app: data dir, keys, database, uvicorn)."""
