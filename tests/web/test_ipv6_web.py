"""The VPS's IPv6 address on every page and in the API; never another customer's."""

from __future__ import annotations

from sqlalchemy import select

from kvmvps.models import Vps
from tests.web.conftest import OP, A, B, World
from tests.web.helpers import forbid_libvirt_work


def test_the_ipv6_address_is_shown_everywhere_and_only_to_its_owner(
    world: World, monkeypatch
) -> None:
    placed = world.order(A)
    with world.ctx.db.reading() as s:
        address = s.scalar(select(Vps.ipv6).where(Vps.uuid == placed.uuid))
    assert address and address.startswith("fd") and "::" in address
    tried = forbid_libvirt_work(monkeypatch)
    alice, bob, op = world.client(A), world.client(B), world.client(OP)
    for path in (f"/servers/{placed.uuid}", f"/servers/{placed.uuid}/credentials", "/servers"):
        page = alice.get(path).get_data(as_text=True)
        assert "data-ipv6" in page and address in page, path
    for path in (f"/admin/servers/{placed.uuid}", "/admin/servers"):
        assert address in op.get(path).get_data(as_text=True), path
    api = alice.get(f"/api/v1/servers/{placed.uuid}", headers=world.bearer(A)).get_json()
    assert api["ipv6"] == address
    doc = alice.get("/api/v1/openapi.json").get_json()
    assert "ipv6" in doc["components"]["schemas"]["Server"]["properties"]
    # another customer sees neither the server nor its address
    other = bob.get(f"/servers/{placed.uuid}")
    assert other.status_code == 404 and address not in other.get_data(as_text=True)
    assert address not in bob.get("/servers").get_data(as_text=True)
    assert tried == []
