"""Addresses a node may not make the directory push to (pattack, 2026-12-02).

The address check at registration is the one the push client's resolver makes at every
connection (:func:`openred.web.urls.check_address`), so a URL refused here is never pushed to.
"""

from __future__ import annotations

import pytest

from tests.directory.conftest import DirectoryFactory, Node
from tests.directory.test_bad_input import assert_problem


@pytest.mark.parametrize("allow_private, api_url", [
    # Site-local IPv6 (fec0::/10, deprecated by RFC 3879 but still routed inside some
    # networks): Python calls it neither private nor reserved, so it passed as public.
    (False, "http://[fec0::1]:8080"),
    (False, "http://[fec0:0:0:ffff::1]"),
    (False, "http://[feff:ffff::1]"),
    # Azure's WireServer (host agent, VM extension settings) sits at a public address.
    (False, "http://168.63.129.16"),
    (True, "http://168.63.129.16:32526"),
    (True, "http://[::ffff:168.63.129.16]"),
    # Oracle Cloud's legacy instance metadata address: private, so it passed wherever
    # OPENRED_ALLOW_PRIVATE_URLS=1.
    (True, "http://192.0.0.192/opc/v1"),
])
async def test_metadata_and_site_local_addresses_are_refused_at_registration(
    directory_factory: DirectoryFactory, allow_private: bool, api_url: str,
) -> None:
    async with directory_factory(allow_private_urls=allow_private) as directory:
        assert directory.service.settings.allow_private_urls is allow_private
        node = Node(directory, api_url=api_url)
        assert_problem(await node.register(), 422, "unsafe-url")
