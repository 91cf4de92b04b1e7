"""The web pages in a real browser: Debian's Chromium, headless, driven by Selenium through
the matching chromium-driver (`make browser` installs both with apt-get).

The browser reaches only the gateway on 127.0.0.1: background networking, component
updates and every host name other than 127.0.0.1 are switched off. Every page is saved as
a PNG screenshot under build/test-artifacts/browser/, at desktop and phone widths, and the
paths are printed (`pytest -s` shows them).

Rows stored here are read back through the API and recorded in `stack.accepted`, so the
after-shutdown checks of test_pipeline.py, which expect DuckDB to hold exactly the recorded
rows, also cover them.
"""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from feedbackbot.web.form import HONEYPOT_FIELD, MIN_FILL_S
from tests.integration.conftest import Stack
from tests.integration.roundtrip import check_and_record, wait_for_confirmations

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACT_DIR = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "browser"
DESKTOP = (1280, 900)
PHONE = (390, 844)
WAIT_S = 20.0
# The dead admin target of conftest.py fails each of its 8 tries at once, but its entries
# queue behind the retries of earlier tests' dead entries when the whole suite runs.
DEAD_ENTRY_WAIT_S = 180.0

# The feedback that test_double_submit_stores_one_row stored, for the admin page tests.
stored_feedback: dict[str, str] = {}


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            pytest.fail(f"{path} is missing; install Chromium and its driver with `make browser` (apt-get install chromium chromium-driver).")

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        # The tests run as root in CI containers, where Chromium's sandbox cannot start.
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--no-first-run",
        "--metrics-recording-only",
        # Every host name but 127.0.0.1 fails to resolve, so nothing leaves the machine.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(argument)
    ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def fresh_browser(browser: WebDriver) -> WebDriver:
    """The shared browser with no cookies and the desktop window size."""
    browser.delete_all_cookies()
    return browser


def screenshot(driver: WebDriver, name: str, size: tuple[int, int] = DESKTOP) -> Path:
    """Save the whole page at this viewport width as build/test-artifacts/browser/NAME.png.

    The DevTools protocol sets the viewport itself, because window sizes include the
    browser's frame.
    """
    width, height = size
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    page_height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": max(height, min(page_height, 8000))})
    image = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})["data"]
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    path = ARTIFACT_DIR / f"{name}.png"
    path.write_bytes(base64.b64decode(image))
    print(f"screenshot: {path}")
    return path


def wait_for(driver: WebDriver, condition, message: str):
    try:
        # An element found just before a navigation goes stale; the next poll finds the new one.
        wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
        return wait.until(condition)
    except TimeoutException:
        pytest.fail(f"{message} within {WAIT_S} s; the page is {driver.current_url}: {driver.find_element(By.TAG_NAME, 'body').text[:500]!r}")


def open_form(driver: WebDriver, stack: Stack) -> None:
    driver.get(stack.url + "/")
    wait_for(driver, lambda d: d.find_elements(By.ID, "feedback-form"), "The feedback form did not load")


def fill_form(driver: WebDriver, name: str, email: str, rating: int, text: str) -> None:
    driver.find_element(By.ID, "customer_name").send_keys(name)
    driver.find_element(By.ID, "customer_email").send_keys(email)
    driver.find_element(By.CSS_SELECTOR, f'input[name="rating"][value="{rating}"]').click()
    driver.find_element(By.ID, "feedback_text").send_keys(text)


def wait_past_min_fill_time(driver: WebDriver) -> None:
    """Wait until the form is older than the spam check's minimum fill time."""
    started_ms = int(driver.find_element(By.NAME, "form_started_ms").get_attribute("value"))
    ready_at_s = started_ms / 1000 + MIN_FILL_S + 0.2
    deadline = time.monotonic() + MIN_FILL_S + 5
    while time.time() < ready_at_s:
        assert time.monotonic() < deadline, "the form's start time is in the future; check the clocks"
        time.sleep(0.05)


def submit_form(driver: WebDriver) -> None:
    driver.find_element(By.ID, "submit-button").click()


def thank_you_id(driver: WebDriver) -> str:
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "body.page-thanks"), "The thank-you page did not appear")
    return driver.find_element(By.ID, "feedback-id").text


def rows_with_email(stack: Stack, email: str) -> list[dict]:
    with stack.client(stack.keys.admin) as client:
        response = client.get("/v1/feedback", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return [row for row in response.json() if row["customer_email"] == email]


def unique_person() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:10]
    return f"Browser Tester {tag}", f"browser-{tag}@example.com"


def sign_in(driver: WebDriver, stack: Stack, key: str) -> None:
    driver.get(stack.url + "/admin")
    wait_for(driver, lambda d: d.find_elements(By.ID, "api_key"), "/admin did not redirect to the sign-in page")
    driver.find_element(By.ID, "api_key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, ".sign-in-form button").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "feedback-table"), "The admin page did not appear after sign-in")


def test_form_shows_inline_errors(stack: Stack, fresh_browser: WebDriver) -> None:
    driver = fresh_browser
    open_form(driver, stack)
    screenshot(driver, "form-desktop")
    screenshot(driver, "form-phone", PHONE)
    driver.find_element(By.ID, "feedback_text").send_keys("Too short")

    submit_form(driver)

    assert driver.current_url == stack.url + "/", "the script let an invalid form through"
    for field in ("customer_name", "customer_email", "rating", "feedback_text"):
        assert driver.find_element(By.ID, f"{field}-error").text, f"no inline error next to {field}"
    assert "at least 10 characters" in driver.find_element(By.ID, "feedback_text-error").text
    assert driver.find_element(By.ID, "customer_name").get_attribute("aria-invalid") == "true"
    assert driver.switch_to.active_element.get_attribute("id") == "customer_name"
    screenshot(driver, "form-inline-errors")


def test_form_shows_server_field_errors(stack: Stack, fresh_browser: WebDriver) -> None:
    driver = fresh_browser
    name, _ = unique_person()
    stack.rejected_markers.append(name)
    open_form(driver, stack)
    # The script accepts this address; the server rejects it because apprise 2.2.0 would
    # send to brien@example.com.
    fill_form(driver, name, "o'brien@example.com", 3, "The parcel arrived two days late.")
    wait_past_min_fill_time(driver)

    submit_form(driver)

    wait_for(driver, lambda d: d.find_element(By.ID, "customer_email-error").text, "No server error next to the email field")
    assert "cannot deliver" in driver.find_element(By.ID, "customer_email-error").text
    assert driver.find_element(By.ID, "customer_name").get_attribute("value") == name
    assert driver.find_element(By.ID, "feedback_text").get_attribute("value") == "The parcel arrived two days late."
    assert driver.find_element(By.CSS_SELECTOR, 'input[name="rating"][value="3"]').is_selected()
    assert driver.find_element(By.ID, "customer_name-error").text == ""
    assert driver.find_element(By.ID, "error-summary").is_displayed()
    screenshot(driver, "form-server-errors")
    screenshot(driver, "form-server-errors-phone", PHONE)


def test_double_submit_stores_one_row(stack: Stack, fresh_browser: WebDriver) -> None:
    driver = fresh_browser
    name, email = unique_person()
    text = "Support fixed it <script>alert('x')</script> & more, but only after a week."
    open_form(driver, stack)
    fill_form(driver, name, email, 1, text)
    wait_past_min_fill_time(driver)

    # Two posts of the same form at once, as a double click without the script's guard
    # sends them, then the click itself: all three carry the same form key.
    early = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const body = new URLSearchParams(new FormData(document.getElementById("feedback-form")));
        const post = () => fetch("/", {method: "POST", body: new URLSearchParams(body)}).then(r => r.text());
        Promise.all([post(), post()]).then(done, error => done(String(error)));
        """
    )
    submit_form(driver)
    feedback_id = thank_you_id(driver)
    screenshot(driver, "thanks-desktop")
    screenshot(driver, "thanks-phone", PHONE)

    # Recorded first, so that the after-shutdown row checks of test_pipeline.py stay right
    # when an assertion below fails.
    rows = rows_with_email(stack, email)
    sent = {"customer_name": name, "customer_email": email, "rating": "1", "feedback_text": text}
    for row in rows:
        check_and_record(stack, row["id"], sent, row["request_id"], from_form=True)
    stored_feedback.update(id=feedback_id, text=text, email=email)
    assert [row["id"] for row in rows] == [feedback_id]
    assert isinstance(early, list), f"the parallel posts failed in the browser: {early}"
    for page in early:
        assert feedback_id in page, f"a parallel post got another page: {page[:300]!r}"
    wait_for_confirmations(stack, {feedback_id})


def test_spam_posts_not_stored(stack: Stack, fresh_browser: WebDriver) -> None:
    driver = fresh_browser
    bot_name, bot_email = unique_person()
    fast_name, fast_email = unique_person()
    stack.rejected_markers.extend([bot_name, fast_name])

    open_form(driver, stack)
    fill_form(driver, bot_name, bot_email, 5, "Cheap watches at a great price, click now.")
    driver.execute_script(f"document.getElementById('{HONEYPOT_FIELD}').value = 'http://spam.example';")
    wait_past_min_fill_time(driver)
    submit_form(driver)
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "body.page-thanks"), "The honeypot post got no thank-you page")
    assert driver.find_elements(By.ID, "feedback-id") == []
    screenshot(driver, "thanks-spam")

    open_form(driver, stack)
    fill_form(driver, fast_name, fast_email, 5, "Posted faster than any person types.")
    submit_form(driver)
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "body.page-thanks"), "The fast post got no thank-you page")
    assert driver.find_elements(By.ID, "feedback-id") == []

    assert rows_with_email(stack, bot_email) == []
    assert rows_with_email(stack, fast_email) == []


def test_admin_sign_in_rejects_unknown_key(stack: Stack, fresh_browser: WebDriver) -> None:
    driver = fresh_browser
    driver.get(stack.url + "/admin")
    wait_for(driver, lambda d: d.find_elements(By.ID, "api_key"), "/admin did not redirect to the sign-in page")
    screenshot(driver, "sign-in")

    driver.find_element(By.ID, "api_key").send_keys("fbk_not-a-real-key")
    driver.find_element(By.CSS_SELECTOR, ".sign-in-form button").click()

    wait_for(driver, lambda d: "unknown or revoked" in d.find_element(By.TAG_NAME, "body").text, "No message about the unknown key")
    assert driver.find_elements(By.ID, "feedback-table") == []


def test_admin_page_lists_and_retries(stack: Stack, fresh_browser: WebDriver) -> None:
    driver = fresh_browser
    stored = stored_feedback
    assert stored, "test_double_submit_stores_one_row must run first"

    sign_in(driver, stack, stack.keys.admin)

    cookie = driver.get_cookie("feedbackbot_session")
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/admin"
    assert cookie["secure"] is False, "the test gateway serves plain HTTP, so Secure would drop the cookie"
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-feedback-id="{stored["id"]}"]')
    assert stored["text"] in row.text, "customer text is not shown verbatim (escaped) in the table"
    assert "negative" in row.text or "neutral" in row.text or "positive" in row.text or "pending" in row.text
    assert driver.find_elements(By.CSS_SELECTOR, "svg.chart rect"), "the chart has no bars"
    screenshot(driver, "admin-desktop")
    screenshot(driver, "admin-phone", PHONE)

    driver.get(stack.url + "/admin?rating=1")
    assert driver.find_elements(By.CSS_SELECTOR, f'tr[data-feedback-id="{stored["id"]}"]')
    driver.get(stack.url + "/admin?rating=5")
    assert driver.find_elements(By.CSS_SELECTOR, f'tr[data-feedback-id="{stored["id"]}"]') == []

    # A rating of 1 owes an alert to the dead admin target, whose tries all fail.
    deadline = time.monotonic() + DEAD_ENTRY_WAIT_S
    buttons = []
    while not buttons:
        assert time.monotonic() < deadline, f"no dead outbox entry of feedback {stored['id']} within {DEAD_ENTRY_WAIT_S} s"
        driver.get(stack.url + "/admin?rating=1")
        buttons = [
            row.find_element(By.TAG_NAME, "button")
            for row in driver.find_elements(By.CSS_SELECTOR, "#outbox-table tr[data-entry-id]")
            if stored["id"] in row.text
        ]
        if not buttons:
            time.sleep(1)
    screenshot(driver, "admin-dead-entries")

    buttons[0].click()

    wait_for(driver, lambda d: "pending again" in d.find_element(By.TAG_NAME, "body").text, "No notice after Retry")
    screenshot(driver, "admin-retried")

    driver.find_element(By.CSS_SELECTOR, ".session button").click()
    wait_for(driver, lambda d: "You are signed out" in d.find_element(By.TAG_NAME, "body").text, "Sign-out did not reach the sign-in page")
    assert driver.get_cookie("feedbackbot_session") is None
    driver.get(stack.url + "/admin")
    wait_for(driver, lambda d: d.find_elements(By.ID, "api_key"), "/admin was reachable after sign-out")


def test_analyst_sees_no_outbox(stack: Stack, fresh_browser: WebDriver) -> None:
    driver = fresh_browser

    sign_in(driver, stack, stack.keys.analyst)

    assert "analyst" in driver.find_element(By.CSS_SELECTOR, ".session").text
    assert driver.find_elements(By.ID, "outbox-table") == []


def test_session_cookie_ignored_by_api(stack: Stack) -> None:
    cookies = {"feedbackbot_session": stack.keys.admin}
    with httpx.Client(base_url=stack.url, cookies=cookies, follow_redirects=False, timeout=60.0) as client:
        api = client.get("/v1/admin/outbox")
        page = client.get("/admin")

    assert api.status_code == 401
    assert page.status_code == 200
    assert "no-store" in page.headers["cache-control"]
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_cross_site_posts_rejected(stack: Stack) -> None:
    cookies = {"feedbackbot_session": stack.keys.admin}
    headers = {"Origin": "https://attacker.example"}
    with httpx.Client(base_url=stack.url, cookies=cookies, headers=headers, follow_redirects=False, timeout=60.0) as client:
        retry = client.post(f"/admin/outbox/{uuid.uuid4()}/retry")
        sign_in = client.post("/admin/session", data={"api_key": stack.keys.admin})
        sign_out = client.post("/admin/sign-out")

    for response in (retry, sign_in, sign_out):
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "forbidden"
    assert "set-cookie" not in sign_in.headers


def test_analyst_cannot_post_retry(stack: Stack) -> None:
    cookies = {"feedbackbot_session": stack.keys.analyst}
    with httpx.Client(base_url=stack.url, cookies=cookies, follow_redirects=False, timeout=60.0) as client:
        retry = client.post(f"/admin/outbox/{uuid.uuid4()}/retry")

    assert retry.status_code == 403
    assert "admin role" in retry.json()["error"]["message"]


def test_submit_key_sent_to_sign_in(stack: Stack) -> None:
    cookies = {"feedbackbot_session": stack.keys.submit}
    with httpx.Client(base_url=stack.url, cookies=cookies, follow_redirects=False, timeout=60.0) as client:
        page = client.get("/admin")

    assert page.status_code == 303
    assert page.headers["location"] == "/admin/sign-in?error=role"


def test_listing_route_roles_and_filters(stack: Stack) -> None:
    with stack.client(stack.keys.submit) as client:
        as_submitter = client.get("/v1/feedback")
    with stack.client(stack.keys.admin) as client:
        listed = client.get("/v1/feedback", params={"rating": 1, "limit": 5})
        invalid = client.get("/v1/feedback", params={"rating": 9})

    assert as_submitter.status_code == 403
    assert "analyst or admin" in as_submitter.json()["error"]["message"]
    assert listed.status_code == 200, listed.text
    assert len(listed.json()) <= 5
    assert all(row["rating"] == 1 for row in listed.json())
    assert invalid.status_code == 422
    assert invalid.json()["error"]["fields"][0]["field"].endswith("rating")


@pytest.mark.after_shutdown
def test_form_row_in_duckdb(stack: Stack) -> None:
    assert stored_feedback, "test_double_submit_stores_one_row must run first"
    connection = stack.connect_db()
    rows = connection.execute(
        "SELECT id::VARCHAR, feedback_text, rating FROM feedback WHERE customer_email = ?", [stored_feedback["email"]]
    ).fetchall()
    keys = connection.execute(
        "SELECT count(*) FROM idempotency_keys WHERE feedback_id::VARCHAR = ?", [stored_feedback["id"]]
    ).fetchone()[0]
    connection.close()

    assert rows == [(stored_feedback["id"], stored_feedback["text"], 1)]
    assert keys == 1
