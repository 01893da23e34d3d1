"""Backups on the website: the server page's section and its forms, one's own server only."""

from __future__ import annotations

import pytest

from kvmvps.services import backups
from tests.web.conftest import A, B, World, csrf_token
from tests.web.helpers import forbid_libvirt_work, text


def test_back_up_restore_delete_from_the_server_page(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried = forbid_libvirt_work(monkeypatch)
    vps = world.order(A).uuid
    alice = world.client(A)
    page = text(alice.get(f"/servers/{vps}"))
    assert "Back up now" in page and "Your plan keeps 1 backup." in page
    made = alice.post(f"/servers/{vps}/backups")
    assert made.status_code == 302
    [backup] = backups.list_backups(world.ctx, vps)
    assert backup["state"] == "queued"
    again = alice.post(f"/servers/{vps}/backups")  # the first is pending: the page, and why
    assert again.status_code == 409 and "already has an action pending" in text(again)
    assert len(backups.list_backups(world.ctx, vps)) == 1

    bob = world.client(B)
    for path in (
        f"/servers/{vps}/backups",
        f"/servers/{vps}/backups/{backup['id']}/restore",
        f"/servers/{vps}/backups/{backup['id']}/delete",
    ):
        assert bob.post(path).status_code == 404, path
    assert backups.list_backups(world.ctx, vps) == [backup]
    assert tried == []


def test_a_form_without_its_csrf_token_changes_nothing(csrf_world: World) -> None:
    vps = csrf_world.order(A).uuid
    alice = csrf_world.client(A)
    assert alice.post(f"/servers/{vps}/backups").status_code == 400
    assert backups.list_backups(csrf_world.ctx, vps) == []
    token = csrf_token(alice.get(f"/servers/{vps}").get_data(as_text=True))
    assert alice.post(f"/servers/{vps}/backups", data={"csrf_token": token}).status_code == 302
    assert len(backups.list_backups(csrf_world.ctx, vps)) == 1
