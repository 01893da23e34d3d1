"""Images that test themselves, on the real libvirtd: a broken image fails and leaves the
shop, the same image repaired passes (a real tiny guest, real SSH) and is back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from kvmvps.errors import NotFound
from kvmvps.models import Image, ImageTest, Vps
from kvmvps.services import Context, audit, imagetest, inventory, views
from kvmvps.services.provisioning import OrderRequest, record_order
from tests.badinput import run_cli
from tests.snapshots import libvirt_snapshot

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]

PASSING = ("order", "ssh-banner", "password-login", "key-login", "filesystem", "acpi-shutdown")


def _register_broken(ctx: Context, tmp_path: Path) -> None:
    """Image 'flaky': the tiny disk, but a kernel file that is no kernel (QEMU cannot boot it)."""
    with ctx.db.reading() as s:
        base = inventory.get_by_name(s, Image, "base", "image")
        disk, initrd, cmdline, user = (
            base.base_path,
            base.initrd_path,
            base.cmdline,
            base.login_user,
        )
    junk = tmp_path / "vmlinuz"
    junk.write_bytes(b"this is not a kernel\n" * 64)
    inventory.add_image(
        ctx, "flaky", disk, kernel=junk, initrd=initrd, cmdline=cmdline, login_user=user
    )


def _repair(ctx: Context) -> None:
    """The operator puts a working kernel in place (as re-registering it would)."""
    with ctx.db.session() as s:
        base = inventory.get_by_name(s, Image, "base", "image")
        flaky = inventory.get_by_name(s, Image, "flaky", "image")
        flaky.kernel_path = base.kernel_path


def _order(ctx: Context, hostname: str) -> None:
    record_order(ctx, OrderRequest(plan="small", image="flaky", hostname=hostname), "op")


def test_image_fails_leaves_the_shop_and_returns_after_a_real_pass(
    fresh_ctx: Context, tmp_path: Path
) -> None:
    ctx = fresh_ctx
    _register_broken(ctx, tmp_path)
    before = libvirt_snapshot(ctx)

    # a real failure: the guest cannot boot; exit 1, the failing check named
    failed = run_cli(ctx, "image", "test", "flaky", "--wait")
    assert failed.exit_code == 1, failed.output
    assert "failed its test" in failed.stderr and "order" in failed.stderr
    [test] = imagetest.list_tests(ctx, "flaky")
    assert test["state"] == "failed" and test["checks"][0]["name"] == "order"
    assert test["checks"][0]["ok"] is False and test["vps"] is None

    # hidden from the shop and the API's list, refused for orders; operators are told
    assert "flaky" not in [i["name"] for i in views.catalogue_images(ctx)]
    with pytest.raises(NotFound):
        _order(ctx, "cust1")
    assert imagetest.failing_images(ctx) == ["flaky"]
    told = audit.list_entries(ctx, action="image.test-failed", target="flaky")
    assert told and told[0]["result"] == "failed"

    # nothing of the throwaway VPS is left
    assert libvirt_snapshot(ctx) == before
    with ctx.db.reading() as s:
        assert s.scalar(select(Vps.id)) is None

    # repaired: a real pass with a real guest, each check timed
    _repair(ctx)
    started = time.monotonic()
    passed = run_cli(ctx, "image", "test", "flaky", "--wait", "--json")
    wall = time.monotonic() - started
    assert passed.exit_code == 0, passed.output
    shown = json.loads(passed.stdout)
    results = {c["name"]: c for c in shown["checks"]}
    print("checks:", [(c["name"], c["seconds"]) for c in shown["checks"]], f"wall {wall:.1f} s")
    assert [n for n in PASSING if results[n]["ok"] is True] == list(PASSING), shown["checks"]
    assert results["ssh-forward"]["ok"] is None  # no public address in this installation
    limit = ctx.settings.build_timeout  # each check is timed (a busy machine is slower)
    assert all(0 < results[n]["seconds"] < limit for n in PASSING), shown["checks"]
    assert results["ssh-banner"]["detail"].startswith("SSH-")
    assert results["ssh-banner"]["seconds"] <= results["order"]["seconds"] + 1
    assert shown["state"] == "passed" and shown["error"] is None and wall < limit

    # back in the shop; the throwaway VPS is gone, from libvirt too
    assert "flaky" in [i["name"] for i in views.catalogue_images(ctx)]
    assert imagetest.failing_images(ctx) == []
    assert audit.list_entries(ctx, action="image.test-passed", target="flaky")
    assert libvirt_snapshot(ctx) == before
    with ctx.db.reading() as s:
        assert s.scalar(select(Vps.id)) is None
        assert s.scalar(select(ImageTest.vps_uuid).where(ImageTest.vps_uuid.is_not(None))) is None

    # image show and image tests tell the same
    show = run_cli(ctx, "image", "show", "flaky")
    assert show.exit_code == 0 and "acpi-shutdown" in show.stdout and "passed" in show.stdout
    listed = run_cli(ctx, "image", "tests", "flaky", "--json")
    assert [t["state"] for t in json.loads(listed.stdout)] == ["passed", "failed"]
