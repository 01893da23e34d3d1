"""A customer in a real browser: sign up, order, watch the build, log into the guest over SSH.

Debian's chromium and chromium-driver drive the website served on 127.0.0.1
(werkzeug, in a thread) over the real libvirtd, while a real worker builds
the VPS in another thread. Every page is saved as a PNG in
test-artifacts/browser/ for people to look at.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest
from sqlalchemy import update
from werkzeug.serving import make_server

from kvmvps.guest import fingerprint_of
from kvmvps.models import Job, JobState, Vps, VpsState
from kvmvps.services import Context, inventory, provisioning, users
from kvmvps.services import vps as vps_service
from kvmvps.worker import Worker
from tests.conftest import ARTIFACTS
from tests.tools import assert_no_trace, tools_required
from web import create_app

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]

try:
    from selenium import webdriver
except ImportError:  # the test extra brings it; CI must not skip quietly
    if os.environ.get("KVMVPS_REQUIRE_LIBVIRT") == "1" or tools_required():
        raise
    pytest.skip("selenium is not installed (pip install -e '.[test]')", allow_module_level=True)
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = ARTIFACTS / "browser"
PASSWORD = "a browser password"
BUILD_TIMEOUT = 600
# What chromedriver says, mid-navigation, about a node of the page just left.
NODE_GONE = ("does not belong to the document", "No node with given id found")


def staleness_of(page: WebElement) -> Callable[[webdriver.Chrome], bool]:
    """True once ``page`` has left the document.

    Selenium's own ``staleness_of`` waits for StaleElementReferenceException only.
    While a navigation is under way chromedriver may instead answer "Node with
    given id does not belong to the document" as a generic error: the same fact,
    reported mid-swap, so it counts as gone too. Any other error still fails.
    """

    def _gone(_driver: webdriver.Chrome) -> bool:
        try:
            page.is_enabled()
        except WebDriverException as error:
            if node_gone(error):
                return True
            raise
        return False

    return _gone


def node_gone(error: WebDriverException) -> bool:
    """The element left the document: stale, or chromedriver's mid-navigation words for it."""
    return isinstance(error, StaleElementReferenceException) or any(
        sign in str(error.msg or "") for sign in NODE_GONE
    )


class PinnedFingerprint(paramiko.MissingHostKeyPolicy):
    """Accept the guest's host key only if its fingerprint is the one the page showed."""

    def __init__(self, expected: str) -> None:
        self.expected = expected

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        if fingerprint_of(key) != self.expected:
            raise paramiko.SSHException(
                f"host key {fingerprint_of(key)} is not the pinned {self.expected}"
            )


def ssh(ip: str, port: int, user: str, password: str, fingerprint: str) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(PinnedFingerprint(fingerprint))
    client.connect(
        ip,
        port,
        username=user,
        password=password,
        allow_agent=False,
        look_for_keys=False,
        timeout=15,
    )
    return client


@pytest.fixture
def browser_plan(real_ctx: Context, tiny_image: str) -> str:
    if "small" not in [p.name for p in inventory.list_plans(real_ctx)]:
        inventory.add_plan(real_ctx, "small", 1, 256, 1, price_cents=500)
    return "small"


@pytest.fixture
def site(real_ctx: Context, browser_plan: str) -> Iterator[str]:
    """The website on 127.0.0.1, and a real worker, both in threads."""
    app = create_app(
        {
            "KVMVPS_CONTEXT": real_ctx,
            "SECRET_KEY": uuid.uuid4().hex,
            "RATELIMIT_ENABLED": False,
            "HTTPS": False,
            "SITE_NAME": "kvmvps",
        }
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    settings = dataclasses.replace(real_ctx.settings, reconcile_interval=0, worker_poll_seconds=0.2)
    worker_ctx = Context(settings)
    worker = Worker(worker_ctx, name="browser-e2e")
    working = threading.Thread(target=worker.run, daemon=True)
    working.start()
    yield f"http://127.0.0.1:{server.server_port}"
    worker.stopping.set()
    working.join(timeout=120)
    server.shutdown()
    serving.join(timeout=10)
    worker_ctx.close()


def new_browser(profile: Path, *extra: str) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        *extra,
    ):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture
def open_browser() -> Iterator[Callable[[], webdriver.Chrome]]:
    """Opens browsers, each with a fresh profile; all are closed afterwards."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("apt-get install chromium chromium-driver (scripts/setup-host.sh)")
    made: list[tuple[webdriver.Chrome, str]] = []

    def _open() -> webdriver.Chrome:
        profile = tempfile.mkdtemp(prefix="kvmvps-chromium-")
        made.append((new_browser(Path(profile)), profile))
        return made[-1][0]

    yield _open
    for driver, profile in made:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shot(driver: webdriver.Chrome, name: str) -> None:
    """A full-page screenshot into test-artifacts/browser/."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, max(600, min(int(height) + 120, 4000)))
    driver.save_screenshot(str(SHOTS / f"{name}.png"))
    driver.set_window_size(width, 900)


def fill(driver: webdriver.Chrome, **fields: str) -> None:
    for name, value in fields.items():
        box = driver.find_element(By.NAME, name)
        box.clear()
        box.send_keys(value)


def click(driver: webdriver.Chrome, by: str, what: str) -> None:
    """Scroll the element to the middle (clear of the sticky top bar), then click it."""
    element = driver.find_element(by, what)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def choose(driver: webdriver.Chrome, value: str) -> None:
    click(driver, By.CSS_SELECTOR, f"label.choice input[value={value}] + span")


def submit(driver: webdriver.Chrome) -> None:
    """Send the page's form and wait for the next page to load."""
    page = driver.find_element(By.TAG_NAME, "html")
    click(driver, By.CSS_SELECTOR, "main form button[type=submit]")
    WebDriverWait(driver, 30).until(staleness_of(page), "the form never submitted")


def wait_url(driver: webdriver.Chrome, fragment: str, timeout: float = 30) -> None:
    WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        lambda d: fragment in d.current_url, f"never reached {fragment}: {driver.current_url}"
    )


def value(driver: webdriver.Chrome, css: str) -> str:
    element = driver.find_element(By.CSS_SELECTOR, css)
    return element.get_attribute("value") or element.text.strip()


def _build_ended(driver: webdriver.Chrome) -> bool:
    """On the credentials page, or the progress page shows its error.

    The page may move on to the credentials between finding the error element
    and reading it: the element is then stale (or, mid-navigation, "not in the
    document"), and the next look finds the new URL. Any other error fails.
    """
    if "/credentials" in driver.current_url:
        return True
    try:
        shown = driver.find_element(By.CSS_SELECTOR, "[data-error]").get_attribute("class")
    except WebDriverException as error:
        if node_gone(error):
            return False
        raise
    return "hidden" not in (shown or "").split()


def watch_build(driver: webdriver.Chrome, name: str) -> None:
    """Screenshot the progress page mid-build, then wait for the credentials page."""
    wait_url(driver, "/jobs/")
    WebDriverWait(driver, BUILD_TIMEOUT, poll_frequency=0.2).until(
        lambda d: (
            "/credentials" in d.current_url
            or d.find_elements(By.CSS_SELECTOR, "[data-steps] li.current, [data-steps] li.done")
        ),
        "the build never started",
    )
    if "/jobs/" in driver.current_url:
        shot(driver, name)
    WebDriverWait(driver, BUILD_TIMEOUT, poll_frequency=0.5).until(
        _build_ended, "the build never finished"
    )
    error = driver.find_elements(By.CSS_SELECTOR, ".progress-card [data-error]:not(.hidden)")
    assert not error, error[0].text


@dataclasses.dataclass
class Login:
    ip: str
    port: int
    user: str
    password: str
    fingerprint: str


def read_credentials(driver: webdriver.Chrome) -> Login:
    assert "This password will not be shown again." in driver.page_source
    return Login(
        ip=value(driver, "[data-ip]"),
        port=int(value(driver, "[data-ssh-port]")),
        user=value(driver, "[data-user]"),
        password=value(driver, "[data-password]"),
        fingerprint=value(driver, "[data-fingerprint]"),
    )


def check_guest(login: Login, hostname: str) -> None:
    client = ssh(login.ip, login.port, login.user, login.password, login.fingerprint)
    _, out, _ = client.exec_command("hostname")
    assert out.read().decode().strip() == hostname
    client.close()
    with pytest.raises(paramiko.SSHException):
        ssh(login.ip, login.port, login.user, login.password, "SHA256:not-the-real-key")


def test_customer_orders_in_a_browser_and_logs_into_the_guest(
    real_ctx: Context, site: str, open_browser: Callable[[], webdriver.Chrome]
) -> None:
    email, hostname = f"e2e-{uuid.uuid4().hex[:8]}@example.com", "browser1"
    driver = open_browser()
    try:
        _sign_up_and_order(driver, site, email, hostname)
        watch_build(driver, "05-progress")
        wait_url(driver, "/credentials")
        shot(driver, "06-credentials")
        first = read_credentials(driver)
        check_guest(first, hostname)
        driver.refresh()
        assert "data-password" not in driver.page_source
        assert "The password was shown once" in driver.page_source
        shot(driver, "07-credentials-again")
        second = _reset_password(driver, hostname)
        assert second.password != first.password
        check_guest(second, hostname)
        with pytest.raises(paramiko.AuthenticationException):
            ssh(first.ip, first.port, first.user, first.password, first.fingerprint)
        _operator_pages(open_browser(), site, real_ctx)
        _responsive(driver, site)
        _delete(driver, site, hostname)
        for secret in (first.password, second.password):
            assert_no_trace(real_ctx.settings.state_dir, secret)
    finally:
        _cleanup(real_ctx, email)


def _sign_up_and_order(driver: webdriver.Chrome, site: str, email: str, hostname: str) -> None:
    driver.get(site + "/")
    assert "Plans" in driver.page_source and "small" in driver.page_source
    shot(driver, "01-catalogue")
    click(driver, By.LINK_TEXT, "Sign up")
    fill(driver, email=email, password=PASSWORD, confirm=PASSWORD)
    shot(driver, "02-signup")
    submit(driver)
    wait_url(driver, "/order")
    fill(driver, hostname="bad_name!")
    choose(driver, "small")
    choose(driver, "tiny")
    submit(driver)
    assert "not a valid DNS label" in driver.page_source
    shot(driver, "03-order-error")
    fill(driver, hostname=hostname)
    choose(driver, "small")
    choose(driver, "tiny")
    shot(driver, "04-order")
    submit(driver)


def _reset_password(driver: webdriver.Chrome, hostname: str) -> Login:
    click(driver, By.LINK_TEXT, "Back to the server")
    shot(driver, "08-server")
    click(driver, By.LINK_TEXT, "Reset password")
    fill(driver, hostname=hostname)
    shot(driver, "09-confirm-reset")
    submit(driver)
    wait_url(driver, "/jobs/")
    wait_url(driver, "/credentials", BUILD_TIMEOUT)
    return read_credentials(driver)


def _operator_pages(driver: webdriver.Chrome, site: str, ctx: Context) -> None:
    email = f"ops-{uuid.uuid4().hex[:8]}@example.com"
    users.add_user(ctx, email, PASSWORD, admin=True)
    driver.get(site + "/login")
    fill(driver, email=email, password=PASSWORD)
    submit(driver)
    wait_url(driver, "/servers")
    for path, name in (
        ("/admin/servers", "11-admin-servers"),
        ("/admin/hosts", "12-admin-hosts"),
        ("/admin/jobs", "13-admin-jobs"),
        ("/admin/users", "14-admin-users"),
        ("/admin/audit", "15-admin-audit"),
    ):
        driver.get(site + path)
        assert "Operators" in driver.page_source
        shot(driver, name)


def _responsive(driver: webdriver.Chrome, site: str) -> None:
    driver.get(site + "/servers")
    shot(driver, "10-dashboard")
    driver.set_window_size(390, 844)
    for path, name in (("/", "16-mobile-catalogue"), ("/servers", "17-mobile-dashboard")):
        driver.get(site + path)
        width = driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= 400, f"{path} scrolls sideways on a phone ({width} px)"
        shot(driver, name)
    driver.set_window_size(1280, 900)


def _delete(driver: webdriver.Chrome, site: str, hostname: str) -> None:
    driver.get(site + "/servers")
    click(driver, By.LINK_TEXT, hostname)
    click(driver, By.LINK_TEXT, "Delete")
    fill(driver, hostname=hostname)
    shot(driver, "18-confirm-delete")
    submit(driver)
    wait_url(driver, "/servers")
    deadline = time.monotonic() + 180
    while hostname in driver.page_source:
        assert time.monotonic() < deadline, "the VPS was never deleted"
        time.sleep(1)
        driver.refresh()
    shot(driver, "19-after-delete")


def _cleanup(ctx: Context, email: str) -> None:
    """Delete whatever the test left behind if it failed half-way."""
    for vps in vps_service.list_vps(ctx, owner=email):
        with contextlib.suppress(Exception):  # best effort after a failure
            provisioning.delete(ctx, vps["id"])


@dataclasses.dataclass
class Walk:
    tag: str
    customer: str
    hostname: str
    order: provisioning.Order


@pytest.fixture
def failed_build(real_ctx: Context, tiny_image: str, browser_plan: str) -> Iterator[Walk]:
    """A customer's VPS whose build failed, recorded before the site's worker starts.

    Everything the order allocated (address, pins, SSH forward) is still
    held: what an operator cleans up with a force delete.
    """
    tag = uuid.uuid4().hex[:8]
    customer = f"cus-{tag}@example.com"
    users.add_user(real_ctx, customer, PASSWORD)
    req = provisioning.OrderRequest(browser_plan, tiny_image, f"walk{tag}", customer)
    placed = provisioning.record_order(real_ctx, req)
    with real_ctx.db.session() as s:
        s.execute(
            update(Job)
            .where(Job.uuid == placed.job)
            .values(state=JobState.FAILED, error="building failed at step 'clone': test")
        )
        s.execute(
            update(Vps)
            .where(Vps.uuid == placed.uuid)
            .values(state=VpsState.ERROR, error="building failed: test")
        )
    yield Walk(tag, customer, req.hostname, placed)
    _cleanup(real_ctx, customer)


def test_operator_walk_promote_hide_a_plan_force_delete(
    real_ctx: Context,
    failed_build: Walk,
    site: str,
    open_browser: Callable[[], webdriver.Chrome],
) -> None:
    """An operator promotes a user, hides a plan, opens a customer's server and force-deletes it."""
    walk = failed_build
    operator, promoted = (f"{who}-{walk.tag}@example.com" for who in ("ops", "pro"))
    plan = f"walk{walk.tag}p"
    users.add_user(real_ctx, operator, PASSWORD, admin=True)
    users.add_user(real_ctx, promoted, PASSWORD)
    inventory.add_plan(real_ctx, plan, 1, 128, 1, price_cents=100)
    driver = open_browser()
    try:
        driver.get(site + "/login")
        fill(driver, email=operator, password=PASSWORD)
        submit(driver)
        _promote(driver, site, promoted)
        assert users.get_user(real_ctx, promoted).is_admin
        _hide_plan(driver, site, plan)
        _force_delete(driver, site, walk.customer, walk.hostname)
        deadline = time.monotonic() + 120
        while vps_service.list_vps(real_ctx, owner=walk.customer):
            assert time.monotonic() < deadline, "the VPS was never deleted"
            time.sleep(0.2)
        driver.get(f"{site}/admin/jobs?kind=delete&state=succeeded")
        rows = driver.find_elements(By.CSS_SELECTOR, "table tbody tr")
        assert any(walk.order.uuid[:8] in r.text for r in rows), walk.order.job
        shot(driver, "25-admin-jobs-after-force-delete")
    finally:
        with contextlib.suppress(Exception):  # best effort after a failure
            inventory.remove_plan(real_ctx, plan)


def _promote(driver: webdriver.Chrome, site: str, email: str) -> None:
    driver.get(f"{site}/admin/users?q={email}")
    page = driver.find_element(By.TAG_NAME, "html")
    click(driver, By.CSS_SELECTOR, f'tr[data-user="{email}"] button[data-action=promote]')
    WebDriverWait(driver, 30).until(staleness_of(page), "the promotion never submitted")
    assert f"{email} is now an operator." in driver.page_source
    shot(driver, "20-admin-promoted")


def _hide_plan(driver: webdriver.Chrome, site: str, plan: str) -> None:
    driver.get(site + "/order")
    assert f'value="{plan}"' in driver.page_source
    driver.get(site + "/admin/plans")
    page = driver.find_element(By.TAG_NAME, "html")
    click(driver, By.CSS_SELECTOR, f'tr[data-plan="{plan}"] button[data-action=hide]')
    WebDriverWait(driver, 30).until(staleness_of(page), "hiding never submitted")
    shot(driver, "21-admin-plan-hidden")
    for path in ("/", "/order"):
        driver.get(site + path)
        assert plan not in driver.page_source, f"hidden plan still offered on {path}"


def _force_delete(driver: webdriver.Chrome, site: str, customer: str, hostname: str) -> None:
    driver.get(f"{site}/admin/servers?q={customer}")
    click(driver, By.LINK_TEXT, hostname)
    assert customer in driver.page_source and "data-domain" in driver.page_source
    shot(driver, "22-admin-server")
    click(driver, By.LINK_TEXT, "Force delete")
    fill(driver, hostname="not-" + hostname)
    submit(driver)
    assert f"type {hostname} to confirm" in driver.page_source  # a failed step changes nothing
    fill(driver, hostname=hostname)
    shot(driver, "23-admin-confirm-force-delete")
    submit(driver)
    assert f"Force delete of {hostname} requested" in driver.page_source
    shot(driver, "24-admin-force-deleted")
