"""Images that test themselves, on libvirt's test driver (SQLite and PostgreSQL).

The real guest and real SSH are in tests/e2e/test_image_selftest_real.py;
here: the result recorded, the shop hiding a failed image and showing it
again, one test per image at a time, the schedule, cleaning up after a dead
test, and what a customer can neither do nor see.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from kvmvps.config import load_settings
from kvmvps.errors import Conflict, GuestError, InvalidInput
from kvmvps.models import Image, ImageTest, Job, JobState, Vps
from kvmvps.services import Context, audit, hosts, imagechecks, imagetest, inventory, jobs, runner
from kvmvps.services.provisioning import OrderRequest, record_order
from kvmvps.worker import Worker
from tests.badinput import assert_one_line_error, run_cli
from tests.web.conftest import OP, A, World, finish_build

SKIPPED_WITHOUT_CREDENTIALS = ("ssh-banner", "password-login", "key-login", "filesystem")


def _test_now(ctx: Context, image: str = "base") -> imagetest.TestView:
    req = imagetest.request(ctx, image, actor="op")
    runner.run_or_follow(ctx, req.job)  # no worker: the job runs here
    return imagetest.get_test(ctx, req.test)


def _domains(ctx: Context) -> set[str]:
    return set(ctx.hypervisor(ctx.settings.libvirt_uri).list_domains(prefix="kvmvps-"))


def _vps_rows(ctx: Context) -> list[str]:
    with ctx.db.reading() as s:
        return list(s.scalars(select(Vps.hostname)))


def _run_watched(world: World) -> tuple[imagetest.TestView, list[tuple[list[str], int]]]:
    """A test run here; once its VPS exists, what customer A's API shows of it."""
    ctx, api, bearer = world.ctx, world.app.test_client(), world.bearer(A)
    seen: list[tuple[list[str], int]] = []

    def follow(job: str) -> None:
        runner.follow_here(ctx, job)
        with ctx.db.reading() as s:
            throwaway = [
                v.uuid for v in s.scalars(select(Vps)) if imagetest.is_throwaway(v.hostname)
            ]
        if throwaway:
            listed = api.get("/api/v1/servers", headers=bearer).get_json()["servers"]
            one = api.get(f"/api/v1/servers/{throwaway[0]}", headers=bearer)
            seen.append(([s["id"] for s in listed], one.status_code))

    req = imagetest.request(ctx, "base", actor="op")
    assert api.get(f"/api/v1/jobs/{req.job}", headers=bearer).status_code == 404
    shown = imagetest.run(ctx, req.test, follow)
    runner.run_or_follow(ctx, req.job)  # its job, still queued, finds the test done
    assert imagetest.get_test(ctx, req.test) == shown
    return shown, seen


def test_a_failed_image_leaves_the_shop_until_a_test_passes(world: World) -> None:
    ctx, op, shop, api = world.ctx, world.client(OP), world.client(A), world.app.test_client()
    bearer = world.bearer(A)
    host = hosts.list_hosts(ctx)[0]["name"]
    domains = _domains(ctx)

    # the only host is in maintenance: the throwaway VPS is placed like an order, so it
    # cannot be; that says nothing about the image, which stays in the shop
    hosts.set_maintenance(ctx, host, True)
    unplaced = _test_now(ctx)
    assert unplaced["state"] == "inconclusive" and "maintenance" in (unplaced["error"] or "")
    assert imagetest.failing_images(ctx) == [] and not audit.list_entries(
        ctx, action="image.test-failed"
    )
    hosts.set_maintenance(ctx, host, False)

    # the image's disk is gone: a real failure of the image
    with ctx.db.reading() as s:
        disk = Path(inventory.get_by_name(s, Image, "base", "image").base_path)
    disk.rename(disk.with_suffix(".away"))
    failed = _test_now(ctx)
    disk.with_suffix(".away").rename(disk)
    assert failed["state"] == "failed" and [c["name"] for c in failed["checks"]] == ["order"]
    assert "base" in (failed["error"] or "") and failed["vps"] is None
    assert imagetest.failing_images(ctx) == ["base"]
    told = audit.list_entries(ctx, action="image.test-failed")
    assert [(e["target"], e["result"]) for e in told] == [("base", "failed")]

    # hidden: the API's list, the shop's form; orders and reinstalls of it are refused
    listed = api.get("/api/v1/images", headers=bearer).get_json()["images"]
    assert "base" not in [i["name"] for i in listed] and "linux" in [i["name"] for i in listed]
    assert 'value="base"' not in shop.get("/order").get_data(as_text=True)
    order = {"plan": "nano", "image": "base", "hostname": "cust1"}
    r = api.post("/api/v1/servers", headers=bearer, json=order)
    assert r.status_code == 400 and "no image named 'base'" in r.get_json()["error"]
    assert _vps_rows(ctx) == []
    home = op.get("/admin/").get_data(as_text=True)
    assert "data-failing-images" in home and "base failed its last self-test" in home
    page = op.get("/admin/plans").get_data(as_text=True)
    assert "hidden: test failed" in page and 'data-test-state="failed"' in page

    # customers can neither start a test nor see the throwaway VPS (nor its job)
    assert shop.post("/admin/images/base/test").status_code == 403
    assert len(imagetest.list_tests(ctx, "base")) == 2  # the two above

    # a passing run: every applicable check passes, timed; back in the shop
    passed, seen = _run_watched(world)
    assert seen and all(ids == [] and status == 404 for ids, status in seen)
    results = {c["name"]: c for c in passed["checks"]}
    assert passed["state"] == "passed" and passed["error"] is None
    assert results["order"]["ok"] is True and results["acpi-shutdown"]["ok"] is True
    assert all(results[n]["ok"] is None for n in SKIPPED_WITHOUT_CREDENTIALS)
    assert all(c["seconds"] >= 0 for c in passed["checks"])
    assert imagetest.failing_images(ctx) == []
    listed = api.get("/api/v1/images", headers=bearer).get_json()["images"]
    assert "base" in [i["name"] for i in listed]
    assert api.post("/api/v1/servers", headers=bearer, json=order).status_code == 202
    assert audit.list_entries(ctx, action="image.test-passed", target="base")
    page = op.get("/admin/plans").get_data(as_text=True)
    assert 'data-test-state="passed"' in page and 'data-check="acpi-shutdown"' in page
    assert "data-failing-images" not in op.get("/admin/").get_data(as_text=True)

    # nothing of either throwaway VPS is left: no row, no domain
    assert _vps_rows(ctx) == ["cust1"] and _domains(ctx) <= domains | _domains_of(ctx, "cust1")


def _domains_of(ctx: Context, hostname: str) -> set[str]:
    with ctx.db.reading() as s:
        return set(s.scalars(select(Vps.domain_name).where(Vps.hostname == hostname)))


def test_one_test_per_image_at_a_time(world: World) -> None:
    ctx = world.ctx
    first = imagetest.request(ctx, "base", actor="op")
    with pytest.raises(Conflict, match="being tested already"):
        imagetest.request(ctx, "base", actor="op")
    again = run_cli(ctx, "image", "test", "base", "--wait")
    assert_one_line_error(again, 1, "being tested already")
    with ctx.db.reading() as s:
        assert len(list(s.scalars(select(Job.id).where(Job.kind == "image_test")))) == 1
    imagetest.request(ctx, "linux", actor="op")  # another image: fine
    assert imagetest.get_test(ctx, first.test)["state"] == "queued"
    bad = run_cli(ctx, "image", "test", "nope\x1b[2J")
    assert_one_line_error(bad, 2, "no image named")
    assert "\x1b" not in bad.stderr
    results = [e["result"] for e in audit.list_entries(ctx, action="image.test")]
    assert results == ["failed", "ok", "failed", "failed", "ok"]  # newest first


def test_the_schedule_queues_each_image_once_per_interval(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = world.ctx
    assert imagetest.schedule(ctx) == []  # KVMVPS_IMAGE_TEST_INTERVAL=0: off
    monkeypatch.setattr(
        ctx, "settings", dataclasses.replace(ctx.settings, image_test_interval=3600)
    )
    assert imagetest.schedule(ctx) == []  # images added just now: first due in an hour
    with ctx.db.session() as s:
        s.execute(update(Image).values(created_at=jobs.now() - timedelta(hours=1, minutes=1)))
    queued = imagetest.schedule(ctx)
    assert len(queued) == 2  # base and linux
    assert imagetest.schedule(ctx) == []  # both unfinished: not again
    with ctx.db.session() as s:  # both finished an hour and a minute ago: due again
        s.execute(
            update(ImageTest).values(
                finished_at=jobs.now(),
                passed=True,
                created_at=jobs.now() - timedelta(hours=1, minutes=1),
            )
        )
    assert len(imagetest.schedule(ctx)) == 2
    with ctx.db.session() as s:
        s.execute(update(ImageTest).values(finished_at=jobs.now(), passed=True))
    assert imagetest.schedule(ctx) == []  # tested just now
    assert {e["actor"] for e in audit.list_entries(ctx, action="image.test")} == {imagetest.ACTOR}


def test_a_test_whose_worker_died_is_cleaned_up(world: World) -> None:
    ctx = world.ctx
    # a run that ordered its VPS, then its worker died before it noted which (the VPS is
    # left, built): the resumed run finds it by its name and removes it first
    req = imagetest.request(ctx, "base", actor="op")
    name = imagechecks.hostname_for(req.test)
    leftover = record_order(ctx, OrderRequest("nano", "base", name, testing=True), "op")
    finish_build(ctx, leftover)
    shown = imagetest.run(ctx, req.test, lambda job: runner.follow_here(ctx, job))
    assert shown["state"] == "passed"
    assert _vps_rows(ctx) == []  # the resumed run removed the dead run's VPS first

    # a test whose job ended without a result: the sweep fails it and deletes its VPS
    req = imagetest.request(ctx, "base", actor="op")
    leftover = world.order(OP, image="base", plan="nano")
    with ctx.db.session() as s:
        s.execute(
            update(ImageTest).where(ImageTest.uuid == req.test).values(vps_uuid=leftover.uuid)
        )
        s.execute(
            update(Job)
            .where(Job.uuid == req.job)
            .values(state=JobState.FAILED, error="internal error", finished_at=jobs.now())
        )
    deletes = imagetest.sweep(ctx)
    assert len(deletes) == 1 and imagetest.get_test(ctx, req.test)["state"] == "failed"
    runner.run_or_follow(ctx, deletes[0])
    assert _vps_rows(ctx) == []
    assert imagetest.sweep(ctx) == [] and imagetest.get_test(ctx, req.test)["vps"] is None


def test_a_worker_tests_every_image_on_its_schedule(
    td_ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = td_ctx  # image 'base' only, added over an hour ago
    monkeypatch.setattr(
        ctx, "settings", dataclasses.replace(ctx.settings, image_test_interval=3600)
    )
    with ctx.db.session() as s:
        s.execute(update(Image).values(created_at=jobs.now() - timedelta(hours=2)))
    assert Worker(ctx, name="w1").run(max_jobs=1) == 1  # the test it queued, run to its end
    [shown] = imagetest.list_tests(ctx, "base")
    assert shown["state"] == "passed" and shown["actor"] == imagechecks.ACTOR
    assert _vps_rows(ctx) == []
    assert Worker(ctx, name="w2").tick() == 0  # not due again for an hour
    assert len(imagetest.list_tests(ctx, "base")) == 1


@pytest.mark.parametrize("value", ["5", "-1", "99999999999", "daily"])
def test_a_bad_interval_is_one_line_error(value: str) -> None:
    with pytest.raises(InvalidInput, match="KVMVPS_IMAGE_TEST_INTERVAL|not a valid value"):
        load_settings({"KVMVPS_IMAGE_TEST_INTERVAL": value})


def test_df_output_is_read_or_refused() -> None:
    out = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/root 1015704 9 9 1% /\n"
    assert imagechecks.root_size_bytes(out) == 1015704 * 1024
    with pytest.raises(GuestError, match="cannot read the size"):
        imagechecks.root_size_bytes("df: /: No such file\x1b[2J")
