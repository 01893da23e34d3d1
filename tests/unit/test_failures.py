"""Failures in plain words for customers; units for systemd written as the README says."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kvmvps.config import load_settings
from kvmvps.services import daemons, failures
from kvmvps.services.provisioning import STEPS


def test_every_step_has_a_sentence_and_no_step_name_leaks() -> None:
    assert set(failures.STEP_SENTENCES) == {s.name for s in STEPS}
    for step in STEPS:
        error = f"building web1 failed at step '{step.name}': libvirt said no; rolled back"
        said = failures.plain(error, "create")
        assert said is not None and said[0].isupper()
        assert f"'{step.name}'" not in said and "libvirt" not in said
        assert "Nothing was left half-made" in said
    assert failures.plain(
        "building web1 failed at step 'host-key': no host key after 120 s; rolled back"
    ).startswith("The server did not answer SSH in time.")


@pytest.mark.parametrize(
    ("error", "kind", "start"),
    [
        (None, "create", None),
        ("", None, None),
        (
            "building web1 failed: the build passed its time limit; rolled back",
            "create",
            "Building the server took too long.",
        ),
        (
            "abandoned after 3 attempts whose workers died",
            "create",
            "The build was interrupted too often.",
        ),
        ("domain not running", "suspend", "The server could not be paused."),
        (
            "<script>alert(1)</script> password=hunter2\x1b[2J" + "x" * 10_000,
            "frob",
            "The last operation on this server did not work.",
        ),
        (
            "building web1 failed at step 'nonsense': x",
            None,
            "The last operation on this server did not work.",
        ),
    ],
)
def test_plain_words(error: str | None, kind: str | None, start: str | None) -> None:
    said = failures.plain(error, kind)
    if start is None:
        assert said is None
        return
    assert said is not None and said.startswith(start)
    assert len(said) < 200 and "<script>" not in said and "hunter2" not in said


def test_units_for_systemd_run_this_installations_admin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(daemons, "SYSTEMD_DIR", tmp_path)
    monkeypatch.setattr(daemons, "_systemctl", lambda *args: calls.append(args) or "")
    monkeypatch.setenv("KVMVPS_WEB_HTTPS", "0")
    daemons.install_units(load_settings({"KVMVPS_WEB_PORT": "8123"}))
    admin = str(Path(sys.executable).parent / "kvmvps-admin")
    worker = (tmp_path / "kvmvps-worker.service").read_text()
    assert f"ExecStart={admin} worker\n" in worker and "/opt/kvmvps" not in worker
    dropin = (tmp_path / "kvmvps-web.service.d" / "listen.conf").read_text()
    assert "Environment=KVMVPS_WEB_HTTPS=0\n" in dropin
    assert (
        f"ExecStart=\nExecStart={admin} serve --host 127.0.0.1 --port 8123 --production" in dropin
    )
    assert calls == [("daemon-reload",)]
