"""Path finding: which way each peer's packets go (direct, found by disco, or a relay)."""
