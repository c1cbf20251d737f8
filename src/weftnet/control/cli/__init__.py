"""The ``weft-control`` command line: argument parsing, printers, the admin API client."""
