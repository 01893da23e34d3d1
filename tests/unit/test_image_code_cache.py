"""An image's own TCG code-cache size, on libvirt's test driver (SQLite and PostgreSQL).

Under emulation each VPS's domain caps QEMU's translated-code cache
(``<features><tcg><tb-cache>``): the image's own size where it has one
(``image add/edit --tcg-cache-mib``; the tiny image's builder gives 32 MiB),
else KVMVPS_TCG_TB_CACHE_MIB. A rescue boot takes the rescue image's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import select

from kvmvps.images import BuiltImage
from kvmvps.models import Image
from kvmvps.services import Context, actions, inventory, orders
from kvmvps.services import vps as vps_service
from kvmvps.services.provisioning import OrderRequest
from kvmvps.services.runner import run_or_follow
from tests.badinput import assert_one_line_error, run_cli

OP = "os:operator"


def _tb_cache_mib(ctx: Context, uuid: str) -> int | None:
    """The defined domain's code cache in MiB; None when it places none."""
    domain = vps_service.show(ctx, uuid)["domain"]
    xml = ctx.hypervisor(ctx.settings.libvirt_uri).domain_xml(domain, inactive=True)
    el = etree.fromstring(xml.encode()).find("features/tcg/tb-cache")
    if el is None:
        return None
    assert el.get("unit") == "KiB"  # libvirt keeps it in KiB
    return int(el.text) // 1024


def _order(ctx: Context, hostname: str, image: str = "base") -> str:
    return orders.create(ctx, OrderRequest(plan="small", image=image, hostname=hostname)).uuid


def _cache_of(ctx: Context, name: str) -> int | None:
    with ctx.db.reading() as s:
        return s.scalar(select(Image.tcg_tb_cache_mib).where(Image.name == name))


def test_a_vps_gets_its_images_cache_else_the_setting(td_ctx: Context) -> None:
    assert td_ctx.settings.tcg_tb_cache_mib == 128
    assert _tb_cache_mib(td_ctx, _order(td_ctx, "plain")) == 128

    shown = json.loads(
        run_cli(td_ctx, "image", "edit", "base", "--tcg-cache-mib", "24", "--json").stdout
    )
    assert shown["tcg_cache_mib"] == 24
    small = _order(td_ctx, "small1")
    assert _tb_cache_mib(td_ctx, small) == 24

    # 0: QEMU's own cache (no element), not the setting's
    inventory.edit_image(td_ctx, "base", tcg_cache_mib=0, actor=OP)
    assert _tb_cache_mib(td_ctx, _order(td_ctx, "qemus")) is None

    # 'default' gives the setting back; a reinstall defines the domain anew
    inventory.edit_image(td_ctx, "base", tcg_cache_mib="default", actor=OP)
    assert _cache_of(td_ctx, "base") is None
    req = actions.request(td_ctx, small, "reinstall", actor=OP)
    run_or_follow(td_ctx, req.job)
    assert _tb_cache_mib(td_ctx, small) == 128


def test_a_rescue_boot_takes_the_rescue_images_cache(td_ctx: Context) -> None:
    uuid = _order(td_ctx, "web1")
    base = _base_path(td_ctx)
    inventory.add_image(
        td_ctx, "rescuer", base, credentials=False, rescue=True, tcg_cache_mib=32, actor=OP
    )
    run_or_follow(td_ctx, actions.request(td_ctx, uuid, "rescue", actor=OP).job)
    assert _tb_cache_mib(td_ctx, uuid) == 32
    run_or_follow(td_ctx, actions.request(td_ctx, uuid, "unrescue", actor=OP).job)
    assert _tb_cache_mib(td_ctx, uuid) == 128  # the VPS's own image has none: the setting


def test_a_builders_size_is_kept(td_ctx: Context) -> None:
    built = BuiltImage(
        base_path=Path(_base_path(td_ctx)),
        kernel_path=None,
        initrd_path=None,
        cmdline=None,
        login_user="root",
        cloud_init=False,
        os_family="tiny",
        tcg_tb_cache_mib=32,
    )
    inventory.register_built_image(td_ctx, "built", built)
    assert _cache_of(td_ctx, "built") == 32
    shown = json.loads(run_cli(td_ctx, "image", "list", "--json").stdout)
    assert {i["name"]: i["tcg_cache_mib"] for i in shown} == {"base": None, "built": 32}


def _base_path(ctx: Context) -> str:
    with ctx.db.reading() as s:
        return s.scalar(select(Image.base_path).where(Image.name == "base"))


@pytest.mark.parametrize(
    "value", ["-3", "4097", "ten", "1.5", "99999999999999999999999", "12\n", " ", "٣"]
)
def test_a_bad_size_is_refused_and_changes_nothing(td_ctx: Context, value: str) -> None:
    inventory.edit_image(td_ctx, "base", tcg_cache_mib=48, actor=OP)
    result = run_cli(td_ctx, "image", "edit", "base", "--tcg-cache-mib", value)
    assert_one_line_error(result, 2, "code cache must be a whole number of MiB from 0 to 4096")
    assert _cache_of(td_ctx, "base") == 48

    store = td_ctx.settings.images_dir / "other"
    result = run_cli(td_ctx, "image", "add", "other", _base_path(td_ctx), "--tcg-cache-mib", value)
    assert_one_line_error(result, 2, "code cache")
    assert [i.name for i in inventory.list_images(td_ctx)] == ["base"]
    assert not store.exists()  # nothing copied into the image store


def test_an_edit_that_changes_nothing_is_refused(td_ctx: Context) -> None:
    result = run_cli(td_ctx, "image", "edit", "base")
    assert_one_line_error(result, 2, "nothing to change", "--tcg-cache-mib")
    result = run_cli(td_ctx, "image", "edit", "nope", "--tcg-cache-mib", "32")
    assert_one_line_error(result, 2, "nope")
