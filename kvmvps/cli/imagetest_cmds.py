"""``image test``, ``image tests`` and ``image show``: images that test themselves."""

from __future__ import annotations

from typing import Any

import click

from kvmvps.cli.context import Obj, actor, json_option, pass_obj
from kvmvps.cli.output import emit_json, record, table
from kvmvps.cli.vps_cmds import follow
from kvmvps.errors import NotFound, StepFailed
from kvmvps.services import imagetest, inventory, views
from kvmvps.services.imagetest import TestView

TEST_COLUMNS = ("id", "state", "started_at", "seconds", "error")
CHECK_COLUMNS = ("name", "result", "seconds", "detail")


def _checks(test: TestView) -> list[dict[str, Any]]:
    shown = {True: "passed", False: "FAILED", None: "skipped"}
    return [{**c, "result": shown[c["ok"]]} for c in test["checks"]]


def _print_test(test: TestView) -> None:
    record(test, ["id", "image", "state", "actor", "started_at", "finished_at", "seconds", "error"])
    if test["checks"]:
        click.echo()
        table(_checks(test), CHECK_COLUMNS)


@click.command("test")
@click.argument("name")
@click.option(
    "--wait", is_flag=True, help="Wait for the result, print each check; exit 1 if it fails."
)
@json_option
@pass_obj
def image_test(obj: Obj, name: str, wait: bool, as_json: bool) -> None:
    """Test an image: order a throwaway VPS of it, check it, remove it.

    \b
    The checks: the order is built, SSH answers, the password and an SSH key
    log in (host key pinned), the SSH forward works (with a public address),
    the root filesystem fills at least 90 % of the disk, and the guest powers
    off on the ACPI power button. An image whose last test failed is hidden
    from the shop until one passes.
    """
    req = imagetest.request(obj.ctx, name, actor=actor())
    if not wait:
        shown = imagetest.get_test(obj.ctx, req.test)
        emit_json(shown) if as_json else record(shown, ["id", "image", "state"])
        return
    follow(obj.ctx, req.job, as_json)
    shown = imagetest.get_test(obj.ctx, req.test)
    emit_json(shown) if as_json else _print_test(shown)
    if shown["state"] == "inconclusive":
        raise StepFailed(f"image {shown['image']} could not be tested: {shown['error']}")
    if shown["state"] != "passed":
        raise StepFailed(f"image {shown['image']} failed its test: {shown['error']}")


@click.command("tests")
@click.argument("name")
@click.option(
    "--limit", type=click.IntRange(1, imagetest.MAX_LISTED), default=10, show_default=True
)
@json_option
@pass_obj
def image_tests(obj: Obj, name: str, limit: int, as_json: bool) -> None:
    """List an image's newest tests (``image show`` has the last one's checks)."""
    rows = imagetest.list_tests(obj.ctx, name, limit)
    emit_json(rows) if as_json else table(rows, TEST_COLUMNS)


@click.command("show")
@click.argument("name")
@json_option
@pass_obj
def image_show(obj: Obj, name: str, as_json: bool) -> None:
    """Show an image, whether the shop offers it, and its last test with each check."""
    images = [i for i in inventory.list_images(obj.ctx) if i.name == (name or "").strip()]
    if not images:
        raise NotFound(f"no image named {name!r}")
    image = images[0]
    tests = imagetest.list_tests(obj.ctx, image.name, 1)
    shown = {
        **views.image_view(image),
        "in_shop": not image.hidden and not image.test_failed,
        "test_failed": bool(image.test_failed),
        "last_test": tests[0] if tests else None,
    }
    if as_json:
        emit_json(shown)
        return
    record({k: v for k, v in shown.items() if k != "last_test"})
    if tests:
        click.echo("\nlast test:")
        _print_test(tests[0])


def register(group: click.Group) -> None:
    """Add the commands to the ``image`` group."""
    for command in (image_test, image_tests, image_show):
        group.add_command(command)
