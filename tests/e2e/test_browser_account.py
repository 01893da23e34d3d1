"""A customer serves themselves in a real browser: a second factor, a saved key, a new password.

Sign up, turn on TOTP, log out and back in with a code, save an SSH key, order
with it, log into the real guest with that key, reset the password, leave the
page while the reset runs, come back later and see the new password once.
Screenshots go to test-artifacts/browser/ as ``account-*.png``.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable

import paramiko
import pyotp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from kvmvps.services import Context
from tests.e2e.test_browser import (  # noqa: F401 - fixtures used here
    PASSWORD,
    By,
    Login,
    PinnedFingerprint,
    WebDriverWait,
    _cleanup,
    browser_plan,
    check_guest,
    choose,
    click,
    fill,
    open_browser,
    read_credentials,
    shot,
    site,
    staleness_of,
    submit,
    value,
    wait_url,
    watch_build,
    webdriver,
)

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]
SETTLE = 120.0


def _key_pair() -> tuple[paramiko.PKey, str]:
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(pem))
    return pkey, f"{pkey.get_name()} {pkey.get_base64()} walker@laptop"


def _press(driver: webdriver.Chrome, label: str) -> None:
    """Click the submit button with this text and wait for the next page."""
    page = driver.find_element(By.TAG_NAME, "html")
    click(driver, By.XPATH, f"//main//button[normalize-space()='{label}']")
    WebDriverWait(driver, 30).until(staleness_of(page), f"{label} never submitted")


def _wait_for(driver: webdriver.Chrome, url: str, present: str, timeout: float = SETTLE) -> None:
    """Reload ``url`` until ``present`` is on it (a customer coming back now and then)."""
    deadline = time.monotonic() + timeout
    driver.get(url)
    while present not in driver.page_source:
        assert time.monotonic() < deadline, f"{present!r} never showed on {url}"
        time.sleep(0.3)
        driver.get(url)


def _turn_on_two_factor(driver: webdriver.Chrome, base: str) -> pyotp.TOTP:
    driver.get(base + "/account")
    click(driver, By.PARTIAL_LINK_TEXT, "two-factor")
    wait_url(driver, "/account/2fa")
    totp = pyotp.TOTP(value(driver, "[data-totp-secret]"))
    assert driver.find_element(By.CSS_SELECTOR, "img.qr").get_attribute("naturalWidth") != "0"
    shot(driver, "account-01-2fa-enroll")
    fill(driver, code=totp.now())
    submit(driver)
    codes = driver.find_elements(By.CSS_SELECTOR, "[data-recovery-code]")
    assert len(codes) == 10
    shot(driver, "account-02-recovery-codes")
    driver.refresh()
    assert not driver.find_elements(By.CSS_SELECTOR, "[data-recovery-code]")
    return totp


def _log_out_and_in(driver: webdriver.Chrome, base: str, email: str, totp: pyotp.TOTP) -> None:
    logout = "//header//button[normalize-space()='Log out']"
    click(driver, By.XPATH, logout)
    # every page's address starts with base + "/": wait for the logged-out page itself,
    # or /login could load while the log-out is still on its way (and redirect away)
    WebDriverWait(driver, 30, poll_frequency=0.2).until(
        lambda d: not d.find_elements(By.XPATH, logout), "the log-out did not happen"
    )
    driver.get(base + "/login")
    fill(driver, email=email, password=PASSWORD)
    submit(driver)
    wait_url(driver, "/login/code")
    fill(driver, code="000000" if totp.now() != "000000" else "111111")
    submit(driver)
    assert "the code is wrong or was used already" in driver.page_source
    fill(driver, code=totp.at(time.time() + 30))  # the current step was spent enrolling
    shot(driver, "account-03-code")
    submit(driver)
    wait_url(driver, "/servers")


def _save_key_and_order(driver: webdriver.Chrome, base: str, public: str, hostname: str) -> None:
    driver.get(base + "/account")
    fill(driver, public_key=public)
    _press(driver, "Save key")
    assert "walker@laptop" in driver.page_source
    driver.get(base + "/order")
    fill(driver, hostname=hostname)
    choose(driver, "small")
    choose(driver, "tiny")
    click(driver, By.CSS_SELECTOR, "input[name=saved_keys]")
    shot(driver, "account-04-order-with-key")
    submit(driver)


def _ssh_with_key(login: Login, pkey: paramiko.PKey, hostname: str) -> None:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(PinnedFingerprint(login.fingerprint))
    client.connect(
        login.ip,
        login.port,
        username=login.user,
        pkey=pkey,
        allow_agent=False,
        look_for_keys=False,
        timeout=15,
    )
    try:
        _, out, _ = client.exec_command("hostname")
        assert out.read().decode().strip() == hostname
    finally:
        client.close()


def _reset_and_come_back(driver: webdriver.Chrome, base: str, hostname: str) -> str:
    click(driver, By.LINK_TEXT, "Back to the server")
    click(driver, By.LINK_TEXT, "Reset password")
    fill(driver, hostname=hostname)
    submit(driver)
    wait_url(driver, "/jobs/")
    driver.get("about:blank")  # the customer leaves before the reset is done
    _wait_for(driver, base + "/servers", "is waiting for you")
    server = driver.current_url
    click(driver, By.LINK_TEXT, hostname)
    _wait_for(driver, driver.current_url, "See it now")
    assert server
    shot(driver, "account-05-password-waiting")
    click(driver, By.LINK_TEXT, "See it now")
    wait_url(driver, "/credentials")
    password = value(driver, "[data-password]")
    shot(driver, "account-06-password-once")
    driver.refresh()
    assert "data-password" not in driver.page_source
    driver.get(base + "/servers")
    assert "is waiting for you" not in driver.page_source
    return password


def test_customer_serves_themselves_in_a_browser(
    real_ctx: Context,
    site: str,  # noqa: F811 - the fixture imported above
    open_browser: Callable[[], webdriver.Chrome],  # noqa: F811 - the fixture imported above
) -> None:
    email, hostname = f"self-{uuid.uuid4().hex[:8]}@example.com", "selfserve"
    pkey, public = _key_pair()
    driver = open_browser()
    try:
        driver.get(site + "/signup")
        fill(driver, email=email, password=PASSWORD, confirm=PASSWORD)
        submit(driver)
        wait_url(driver, "/order")
        totp = _turn_on_two_factor(driver, site)
        _log_out_and_in(driver, site, email, totp)
        _save_key_and_order(driver, site, public, hostname)
        watch_build(driver, "account-07-progress")
        wait_url(driver, "/credentials")
        first = read_credentials(driver)
        _ssh_with_key(first, pkey, hostname)
        second = _reset_and_come_back(driver, site, hostname)
        assert second != first.password
        check_guest(Login(first.ip, first.port, first.user, second, first.fingerprint), hostname)
    finally:
        _cleanup(real_ctx, email)
