"""kvmvps-admin through click's CliRunner, on libvirt's test driver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select, update

from kvmvps.limits import LIMIT_FIELDS
from kvmvps.models import User, Vps
from kvmvps.services import Context
from kvmvps.services.vps import VIEW_KEYS
from tests.badinput import assert_one_line_error, create_args, run_cli

LIMIT_NAMES = [f.name for f in LIMIT_FIELDS]


def ok(ctx: Context, *args: str) -> str:
    result = run_cli(ctx, *args)
    assert result.exit_code == 0, (args, result.stderr)
    return result.stdout


def test_init_is_idempotent(td_ctx: Context) -> None:
    first = json.loads(ok(td_ctx, "init", "--json"))
    second = json.loads(ok(td_ctx, "init", "--json"))
    assert first == second
    assert first["network"] == "kvmvpstest" and first["domain_type"] == "qemu"
    assert len(json.loads(ok(td_ctx, "host", "list", "--json"))) == 1
    assert len(json.loads(ok(td_ctx, "network", "list", "--json"))) == 1


def test_commands_refuse_an_uninitialised_machine(tmp_path: Path, td_ctx: Context) -> None:
    from click.testing import CliRunner

    from kvmvps.cli.main import cli

    result = CliRunner().invoke(cli, ["plan", "list"], env={"KVMVPS_STATE_DIR": str(tmp_path)})
    assert_one_line_error(result, 1, "run 'kvmvps-admin init'")


def test_create_show_list_xml_delete(td_ctx: Context) -> None:
    created = json.loads(ok(td_ctx, *create_args()))
    assert set(created) == set(VIEW_KEYS) | {"password", "job"}
    assert created["password"] is None  # this image only boots: no credentials to show
    assert created["state"] == "running" and created["hostname"] == "web1"
    assert created["ssh_host"] == created["ip"] and created["ssh_port"] == 22
    assert created["domain"].startswith("kvmvps-")
    shown = json.loads(ok(td_ctx, "vps", "show", created["id"][:8], "--json"))
    assert shown["id"] == created["id"] and "password" not in shown
    listed = json.loads(ok(td_ctx, "vps", "list", "--json"))
    assert [v["id"] for v in listed] == [created["id"]]
    table = ok(td_ctx, "vps", "list")
    assert "HOSTNAME" in table and "web1" in table and created["id"][:8] in table
    xml = ok(td_ctx, "vps", "xml", "web1")
    assert f"<name>{created['domain']}</name>" in xml
    out = ok(td_ctx, "vps", "delete", "web1", "--yes")
    assert "deleted web1" in out
    assert json.loads(ok(td_ctx, "vps", "list", "--json")) == []


def test_delete_asks_first(td_ctx: Context) -> None:
    ok(td_ctx, *create_args())
    from click.testing import CliRunner

    from kvmvps.cli.main import cli
    from tests.badinput import _env_of

    result = CliRunner().invoke(cli, ["vps", "delete", "web1"], input="n\n", env=_env_of(td_ctx))
    assert result.exit_code == 1
    assert len(json.loads(ok(td_ctx, "vps", "list", "--json"))) == 1


def test_references(td_ctx: Context) -> None:
    a = json.loads(ok(td_ctx, *create_args(hostname="alpha")))
    b = json.loads(ok(td_ctx, *create_args(hostname="beta")))
    assert json.loads(ok(td_ctx, "vps", "show", "beta", "--json"))["id"] == b["id"]
    assert json.loads(ok(td_ctx, "vps", "show", a["id"], "--json"))["id"] == a["id"]
    assert_one_line_error(run_cli(td_ctx, "vps", "show", "gamma"), 2, "no VPS matches 'gamma'")
    # give both the same first four characters so that prefix is ambiguous
    shared = a["id"][:4] + b["id"][4:]
    with td_ctx.db.session() as s:
        s.execute(update(Vps).where(Vps.uuid == b["id"]).values(uuid=shared))
    result = run_cli(td_ctx, "vps", "show", a["id"][:4])
    assert_one_line_error(result, 2, "ambiguous", a["id"][:8], shared[:8])
    assert json.loads(ok(td_ctx, "vps", "show", a["id"][:9], "--json"))["id"] == a["id"]


def test_a_hostname_wins_over_an_id_prefix(td_ctx: Context) -> None:
    """A VPS named like the start of another's id is still found by its name."""
    a = json.loads(ok(td_ctx, *create_args(hostname="alpha")))
    b = json.loads(ok(td_ctx, *create_args(hostname="beta")))
    with td_ctx.db.session() as s:  # b's id starts with "cafe", alpha is renamed "cafe"
        s.execute(update(Vps).where(Vps.uuid == b["id"]).values(uuid="cafe" + b["id"][4:]))
        s.execute(update(Vps).where(Vps.uuid == a["id"]).values(hostname="cafe"))
    assert json.loads(ok(td_ctx, "vps", "show", "cafe", "--json"))["id"] == a["id"]
    assert json.loads(ok(td_ctx, "vps", "show", "cafe" + b["id"][4:9], "--json"))["hostname"] == (
        "beta"
    )
    # two VPSes of that name (two owners, seen by the operator): still ambiguous, in one line
    c = json.loads(ok(td_ctx, *create_args(hostname="gamma")))
    ok(td_ctx, "user", "add", "other@example.com", "--password", "another long password")
    with td_ctx.db.session() as s:
        other = s.scalars(select(User.id).where(User.email == "other@example.com")).one()
        s.execute(update(Vps).where(Vps.uuid == c["id"]).values(hostname="cafe", owner_id=other))
    assert_one_line_error(run_cli(td_ctx, "vps", "show", "cafe"), 2, "ambiguous")


def test_empty_reference_is_refused(td_ctx: Context) -> None:
    assert_one_line_error(run_cli(td_ctx, "vps", "show", " "), 2, "no VPS named")


def test_plan_lifecycle_and_in_use(td_ctx: Context) -> None:
    out = json.loads(
        ok(
            td_ctx,
            "plan",
            "add",
            "big",
            "--vcpus",
            "2",
            "--memory-mib",
            "512",
            "--disk-gib",
            "5",
            "--json",
        )
    )
    assert out == {
        "name": "big",
        "vcpus": 2,
        "memory_mib": 512,
        "disk_gib": 5,
        "price_cents": 0,
        "network": None,
        "extra_forwards": 0,
        "hidden": False,
        "limits": {name: None for name in LIMIT_NAMES},
        "limits_summary": [],
        "transfer_gib": None,  # unmetered
        "over_limit": "throttle",
        "over_limit_kibps": 128,
    }
    assert_one_line_error(
        run_cli(
            td_ctx, "plan", "add", "big", "--vcpus", "1", "--memory-mib", "1", "--disk-gib", "1"
        ),
        1,
        "already exists",
    )
    assert_one_line_error(
        run_cli(td_ctx, "plan", "add", "x", "--vcpus", "0", "--memory-mib", "1", "--disk-gib", "1"),
        2,
        "vcpus must be",
    )
    ok(td_ctx, *create_args())
    assert_one_line_error(run_cli(td_ctx, "plan", "remove", "small"), 1, "used by 1 VPS")
    assert "plan big removed" in ok(td_ctx, "plan", "remove", "big")
    names = [p["name"] for p in json.loads(ok(td_ctx, "plan", "list", "--json"))]
    assert names == ["small"]


def test_image_lifecycle(td_ctx: Context, tmp_path: Path) -> None:
    images = json.loads(ok(td_ctx, "image", "list", "--json"))
    assert [i["name"] for i in images] == ["base"]
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 65536)
    assert_one_line_error(run_cli(td_ctx, "image", "add", "raw", str(raw)), 1, "not a qcow2")
    assert_one_line_error(
        run_cli(td_ctx, "image", "add", "x", str(tmp_path / "none.qcow2")),
        2,
        "does not exist",
        "(see --help)",
    )
    ok(td_ctx, *create_args())
    assert_one_line_error(run_cli(td_ctx, "image", "remove", "base"), 1, "used by 1 VPS")


def test_network_lifecycle(td_ctx: Context) -> None:
    out = json.loads(ok(td_ctx, "network", "add", "lan2", "--subnet", "10.232.0.0/24", "--json"))
    assert out["gateway"] == "10.232.0.1" and out["kind"] == "nat"
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    assert hv.network_exists("lan2")
    for args, code, fragment in [
        (["--subnet", "10.233.0.0/33"], 2, "not an IPv4 network"),
        (["--subnet", "10.233.0.5/24"], 2, "not an IPv4 network"),
        (["--subnet", "10.232.0.0/25"], 1, "overlaps network 'lan2'"),
        (["--subnet", "10.234.0.0/24", "--kind", "bridge"], 2, "needs --bridge"),
        (["--subnet", "10.234.0.0/24", "--gateway", "10.1.1.1"], 2, "not a host address inside"),
        (["--subnet", "10.234.0.0/24", "--kind", "mesh"], 2, "Invalid value for '--kind'"),
    ]:
        assert_one_line_error(run_cli(td_ctx, "network", "add", "bad", *args), code, fragment)
    assert not hv.network_exists("bad")
    assert "network lan2 removed" in ok(td_ctx, "network", "remove", "lan2")
    assert not hv.network_exists("lan2")


@pytest.mark.parametrize("group", ["", "vps", "image", "plan", "network", "host"])
def test_help_explains_itself(group: str) -> None:
    from click.testing import CliRunner

    from kvmvps.cli.main import cli

    result = CliRunner().invoke(cli, [group, "--help"] if group else ["--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.stdout
    if group in ("", "vps", "image", "plan", "network"):
        assert "kvmvps-admin" in result.stdout  # carries examples


def test_unknown_command_is_usage_error() -> None:
    from click.testing import CliRunner

    from kvmvps.cli.main import cli

    result = CliRunner().invoke(cli, ["vps", "frobnicate"])
    assert result.exit_code == 2


@pytest.mark.parametrize("pipeline", ["head -3", "head -n 0"])
def test_a_closed_output_pipe_ends_the_command_quietly(td_ctx: Context, pipeline: str) -> None:
    """``kvmvps-admin vps list | head -3``: no 'internal error: BrokenPipeError', no traceback."""
    import os
    import subprocess
    import sys

    from kvmvps.services import provisioning
    from tests.badinput import _env_of

    for i in range(6):
        provisioning.record_order(td_ctx, provisioning.OrderRequest("small", "base", f"p{i}"))
    env = {**os.environ, **_env_of(td_ctx)}
    for command in ("vps list", "jobs list"):
        shell = f"{sys.executable} -m kvmvps {command} | {pipeline}; echo status=${{PIPESTATUS[0]}}"
        done = subprocess.run(
            ["bash", "-c", shell], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.stderr == "", (command, done.stderr)
        status = int(done.stdout.rsplit("status=", 1)[1])
        assert status in (0, 1, 141), (command, done.stdout)  # 1: click ends on EPIPE
        if pipeline == "head -3":
            assert len(done.stdout.splitlines()) == 4  # three lines and the status
