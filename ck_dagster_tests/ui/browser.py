"""Headless Chromium driven by Selenium, for checking what the Dagster UI shows.

Only the browser tests import this module (it needs the `selenium` package of the dev extra).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

WINDOW = (1600, 1000)
LARGEST_SCREENSHOT = (4_000, 12_000)  # px; what a page has beyond is left out

# How far the page, or its widest and its tallest scrolling panel, reach beyond the window.
HIDDEN_JS = """
const scrolling = Array.from(document.querySelectorAll('*')).filter(e => {
    const style = getComputedStyle(e);
    return /auto|scroll/.test(style.overflowX + style.overflowY);
});
const page = document.documentElement;
return [Math.max(page.scrollWidth - window.innerWidth,
                 ...scrolling.map(e => e.scrollWidth - e.clientWidth), 0),
        Math.max(page.scrollHeight - window.innerHeight,
                 ...scrolling.map(e => e.scrollHeight - e.clientHeight), 0)];
"""
# Rows of a table as the cells' visible text, in one round trip instead of one per cell.
TABLE_ROWS_JS = """
return Array.from(arguments[0].querySelectorAll('tr'),
                  row => Array.from(row.cells, cell => cell.innerText.trim()));
"""
# Resolves after the browser has laid out and painted the next frame (e.g. after a resize).
NEXT_FRAME_JS = """
const done = arguments[arguments.length - 1];
requestAnimationFrame(() => requestAnimationFrame(() => done()));
"""


class Browser:
    """One headless Chromium session against one web server; it saves screenshots to a folder.

    Waits are explicit waits for text to appear (React renders after its GraphQL answers
    arrive), never fixed sleeps.
    """

    def __init__(
        self,
        base_url: str,
        artifacts: Path,
        *,
        chromium: Path,
        chromedriver: Path,
        timeout: float = 30,
    ) -> None:
        options = Options()
        options.binary_location = str(chromium)  # no Selenium Manager: there is no internet
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
        ):
            options.add_argument(argument)
        self.driver = webdriver.Chrome(options=options, service=Service(str(chromedriver)))
        self.base_url = base_url
        self.artifacts = artifacts
        self.timeout = timeout
        artifacts.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        """End the browser session (and its chromedriver)."""
        self.driver.quit()

    @contextmanager
    def page(self, path: str, *, screenshot: str) -> Iterator[None]:
        """Load ``path`` for the checks in the block, then save a full-page screenshot
        ``<screenshot>.png``, also when a check fails (it shows what the page showed)."""
        self.driver.get(self.base_url + path)
        try:
            yield
        finally:
            self.save_screenshot(screenshot)

    def wait_for(self, condition: Callable[[str], bool], what: str) -> None:
        """Wait until the page's visible text meets ``condition``; fail with what it shows."""
        try:
            WebDriverWait(self.driver, self.timeout, poll_frequency=0.2).until(
                lambda _: condition(self.visible_text())
            )
        except TimeoutException:
            raise AssertionError(
                f"{self.driver.current_url} did not show {what} within "
                f"{self.timeout} s; it shows:\n{self.visible_text()}"
            ) from None

    def wait_for_text(self, *texts: str) -> None:
        """Wait until the page shows every one of ``texts``."""
        for text in texts:
            self.wait_for(lambda shown, text=text: text in shown, repr(text))

    def visible_text(self) -> str:
        """The text the page shows (hidden elements excluded)."""
        return self.driver.find_element(By.TAG_NAME, "body").text

    def metadata_value(self, key: str) -> WebElement:
        """The value cell of metadata entry ``key`` in a Dagster metadata table."""
        return self.driver.find_element(By.XPATH, f"//tr[td[1][normalize-space()='{key}']]/td[2]")

    def table_rows(self, element: WebElement) -> list[list[str]]:
        """The rows (header included) of the first table in ``element``, as cell texts."""
        table = element.find_element(By.TAG_NAME, "table")
        return self.driver.execute_script(TABLE_ROWS_JS, table)

    def metadata_code_block(self, key: str) -> str:
        """The code block of markdown metadata entry ``key`` (see :meth:`metadata_markdown`)."""
        return self.metadata_markdown(key).find_element(By.TAG_NAME, "pre").text

    def metadata_markdown(self, key: str) -> WebElement:
        """The rendered markdown of metadata entry ``key``. Dagster shows markdown under
        1,000 characters in the table and longer markdown in a dialog that the entry's
        [Show Markdown] link opens; this opens it like a user would (and leaves it open)."""
        cell = self.metadata_value(key)
        links = cell.find_elements(By.XPATH, ".//a[normalize-space()='[Show Markdown]']")
        if not links:
            return cell
        links[0].click()
        return WebDriverWait(self.driver, self.timeout).until(
            expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, "[role=dialog]"))
        )

    def click_last(self, text: str) -> None:
        """Click the last element on the page, other than a link, whose own text is ``text``
        (e.g. the oldest entry of an event list)."""
        self.wait_for_text(text)
        self.driver.find_elements(By.XPATH, f"//*[not(self::a)][normalize-space(text())='{text}']")[
            -1
        ].click()

    def image_width(self, element: WebElement, css: str) -> int:
        """The natural width of the image ``css`` in ``element`` (0 when it did not decode)."""
        image = element.find_element(By.CSS_SELECTOR, css)
        return int(self.driver.execute_script("return arguments[0].naturalWidth", image))

    def save_screenshot(self, name: str) -> Path:
        """Save the whole page as ``<name>.png``. The Dagster UI scrolls inside panels, not
        the page, so the window grows for the shot until no panel hides anything (the layout
        changes as it grows, hence a few rounds), within a bound."""
        size = self.driver.get_window_size()
        path = self.artifacts / f"{name}.png"
        try:
            for _ in range(3):
                width, height = self.driver.execute_script(HIDDEN_JS)
                current = self.driver.get_window_size()
                grown = (
                    min(current["width"] + width, LARGEST_SCREENSHOT[0]),
                    min(current["height"] + height, LARGEST_SCREENSHOT[1]),
                )
                if grown == (current["width"], current["height"]):
                    break
                self.driver.set_window_size(*grown)
                self.driver.execute_async_script(NEXT_FRAME_JS)
            self.driver.save_screenshot(str(path))
        finally:
            self.driver.set_window_size(size["width"], size["height"])
        return path
