"""The pages in a real browser (Debian's chromium + chromium-driver through Selenium) against a real Orthanc:
log in, search, ask for a study, watch its progress bar move to done without a reload, download the zip.

Screenshots of every page go to $DICOMNODE_SCREENSHOTS (default: the test's temp folder); docs/web.md shows them.
"""

from __future__ import annotations

import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from node.app import Node
from node.web.auth import Users
from tests.support.waiting import wait_for
from toolkit.dicomgen import multi_series_study, write_study
from toolkit.nodeproc import make_config
from toolkit.peers import OrthancPeer, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD = "correct horse battery"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    for tool in (CHROMIUM, CHROMEDRIVER):
        assert Path(tool).exists(), f"{tool} is required (Debian packages chromium and chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--disable-gpu", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads"),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, seconds: float = 30) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, seconds)


def shots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("DICOMNODE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_a_coordinator_logs_in_searches_asks_watches_progress_and_downloads_the_zip(
        tmp_path: Path, browser: WebDriver) -> None:
    spec = multi_series_study(3, 10, patient_id="BRW001", patient_name="BROWSER^TEST", accession="BRWACC1",
                              study_date="20250401")
    write_study(spec, tmp_path / "src")
    shots = shots_dir(tmp_path)
    node_port = free_port()
    with OrthancPeer(tmp_path / "orthanc", ae_title="PACS",
                     modalities={"node": ("DICOMNODE", "127.0.0.1", node_port)}) as pacs:
        pacs.load([tmp_path / "src"])
        config = make_config(
            tmp_path / "node", node={"port": node_port},
            peers={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.dicom_port, "timeout_s": 10}},
            requests={"settle_s": 0.2, "rescan_interval_s": 1}, web={"port": 0})
        Users(config.users_file).set_user("coordinator", PASSWORD, "operator")
        node = Node(config)
        # A PACS that takes a moment per series, so the progress bar has steps to show.
        original = node.scheduler._move_series

        def slow_move(*args: Any, **kwargs: Any) -> None:
            time.sleep(1.5)
            original(*args, **kwargs)

        node.scheduler._move_series = slow_move  # type: ignore[method-assign]
        node.start()
        try:
            assert node.web is not None
            base = f"http://127.0.0.1:{node.web.port}"
            b = browser
            b.get(f"{base}/requests")
            assert "/login" in b.current_url  # not logged in: sent to the login form
            b.find_element(By.ID, "username").send_keys("coordinator")
            b.find_element(By.ID, "password").send_keys("wrong password")
            b.find_element(By.ID, "login").click()
            assert "Wrong user name or password" in wait(b).until(lambda d: d.find_element(By.ID, "error")).text
            b.save_screenshot(str(shots / "01-login-error.png"))
            b.find_element(By.ID, "username").send_keys("coordinator")
            b.find_element(By.ID, "password").send_keys(PASSWORD)
            b.find_element(By.ID, "login").click()
            wait(b).until(EC.url_matches(r"/requests$"))

            b.get(f"{base}/search")
            b.find_element(By.ID, "patient_id").send_keys("BRW001")
            b.find_element(By.ID, "search").click()
            wait(b).until(lambda d: d.find_elements(By.ID, "results"))
            rows = b.find_elements(By.CSS_SELECTOR, "#results tr")
            assert len(rows) == 2 and "BRWACC1" in rows[1].text and "BROWSER^TEST" in rows[1].text
            b.find_element(By.CSS_SELECTOR, "input.pick").click()
            b.save_screenshot(str(shots / "02-search.png"))
            b.find_element(By.ID, "ask").click()
            wait(b).until(EC.url_matches(r"/requests/\d+$"))

            # Live progress: the same page (a marker survives) sees the bar take several values, then done.
            b.execute_script("window.__sameDocument = true;")
            seen: list[float] = []
            shot_mid = False

            def state_and_progress() -> tuple[str, float]:
                row = b.find_element(By.CSS_SELECTOR, "#requests tr[id^=req-]")
                value = float(row.find_element(By.TAG_NAME, "progress").get_attribute("value") or 0)
                return row.find_element(By.CLASS_NAME, "state").text, value

            deadline = time.monotonic() + 180
            state = ""
            while time.monotonic() < deadline:
                state, value = state_and_progress()
                if not seen or seen[-1] != value:
                    seen.append(value)
                if 0 < value < 1 and not shot_mid:
                    b.save_screenshot(str(shots / "03-request-in-progress.png"))
                    shot_mid = True
                if state in ("done", "failed"):
                    break
                time.sleep(0.1)
            assert state == "done", (state, seen)
            final = state_and_progress()[1]  # the bar and the state cell are read one after the other: read again
            if seen[-1] != final:
                seen.append(final)
            # The study row appeared while the page was open (found by the C-FIND after the page was drawn).
            study_row = b.find_element(By.ID, f"study-{b.current_url.rsplit('/', 1)[1]}-{spec.study_uid.replace('.', '_')}")
            assert "BRWACC1" in study_row.text and "done" in study_row.text
            assert "Finished: done" in b.find_element(By.ID, "cancel-form").text  # no cancel button on a done request
            assert b.find_element(By.CSS_SELECTOR, "td[id^=query-]").text == "found"
            assert b.execute_script("return window.__sameDocument === true;"), "the page was reloaded"
            assert seen[-1] == 1.0 and any(0 < v < 1 for v in seen), seen
            assert len(seen) >= 3, f"the bar should move through several values, saw {seen}"
            b.save_screenshot(str(shots / "04-request-done.png"))

            b.get(f"{base}/requests")
            b.save_screenshot(str(shots / "05-requests.png"))
            b.get(f"{base}/studies/{spec.study_uid}")
            series_rows = b.find_elements(By.CSS_SELECTOR, "#series tr")
            assert len(series_rows) == 1 + 3 + 3  # header, 3 series, and a row of previews under each
            assert b.find_elements(By.CSS_SELECTOR, "#mr-cleaned tr"), "MR classes are shown"
            shown = b.find_elements(By.CSS_SELECTOR, "img.preview")
            assert len(shown) == 3 and all(b.execute_script("return arguments[0].naturalWidth", i) > 0 for i in shown)
            b.save_screenshot(str(shots / "06-study.png"))
            b.find_element(By.ID, "download-zip").click()
            downloads = tmp_path / "downloads"

            def downloaded() -> Path | None:
                done = [p for p in downloads.glob("*.zip")] if downloads.exists() else []
                return done[0] if done else None

            zip_path = wait_for(downloaded, timeout=60, what="the zip download")
            names = zipfile.ZipFile(zip_path).namelist()
            assert any(n.endswith("/manifest.json") for n in names)
            assert any(n.endswith("/metadata.xlsx") for n in names)
            assert sum(n.endswith(".nii.gz") for n in names) == 3

            b.get(f"{base}/upload")
            b.save_screenshot(str(shots / "07-upload.png"))
            b.get(f"{base}/status")
            assert b.find_element(By.ID, "healthy").text == "healthy"
            b.save_screenshot(str(shots / "08-status.png"))
        finally:
            node.stop(drain_timeout=5)
