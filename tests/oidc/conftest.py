"""Fixtures of the OIDC tests: the control server's client at a real OpenID provider."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from weftlab.oidcop import OpenIdProvider, start_op

from .rpkit import ALICE, Rp, free_port


@pytest.fixture
def rp() -> Rp:
    return Rp(free_port())


@pytest.fixture
def op(rp: Rp) -> Iterator[OpenIdProvider]:
    other = {**rp.client(), "client_id": "other-client"}
    with start_op(clients=[rp.client(), other], accounts={"alice": ALICE}, id_token_ttl=600) as op:
        yield op
