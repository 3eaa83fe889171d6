"""The HTML report in a real browser (headless Chromium through Selenium and Debian's
chromium-driver): the table renders every method, a header button (mouse and keyboard) sorts its
column and sets aria-sort, the curve legend hides a method, the image explorer switches images,
and a screenshot is taken.

Skipped when no Chromium / ChromeDriver / selenium is installed, except in CI (``CI`` set, as
``.ci/run`` does after installing Debian's ``chromium`` and ``chromium-driver``), where a missing
browser is a failure.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_report import METHODS, make_report_run

from xaibench.report import find_chromium, headless_chromium, write_report


def _need_browser() -> None:
    missing = None
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing = "selenium is not installed (pip install -e '.[test]')"
    if missing is None and find_chromium() is None:
        missing = "no chromium + chromedriver on PATH (Debian: apt-get install chromium chromium-driver)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {missing}")
        pytest.skip(missing)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _need_browser()
    root = tmp_path_factory.mktemp("browser")
    page = write_report([make_report_run(root)], root / "report.html")
    with headless_chromium(1280, 900) as driver:
        driver.get(page.resolve().as_uri())
        yield driver, root


def _board_order(driver):
    return [
        r.get_attribute("data-method") for r in driver.find_elements("css selector", "table.board tbody tr")
    ]


def _column(driver, col):
    cells = driver.find_elements("css selector", f"table.board tbody tr > :nth-child({col + 1})")
    return [float(c.get_attribute("data-sort")) for c in cells]


def _header(driver, label):
    for th in driver.find_elements("css selector", "table.board thead th[aria-sort]"):
        if th.find_element("css selector", "button").text.startswith(label):
            return th
    raise AssertionError(f"no column {label}")


def test_table_renders_every_method(browser):
    driver, _ = browser
    assert sorted(_board_order(driver)) == sorted(METHODS)
    rows = driver.find_elements("css selector", "table.board tbody tr")
    assert all(r.is_displayed() and r.size["height"] > 10 for r in rows)
    assert driver.execute_script("return document.documentElement.scrollWidth") <= 1280  # no sideways scroll


def test_clicking_a_header_sorts_its_column(browser):
    driver, _ = browser
    th = _header(driver, "LIF")  # ↓: the first click puts the lowest (best) first
    col = int(th.find_element("css selector", "button").get_attribute("data-col"))
    th.find_element("css selector", "button").click()
    values = _column(driver, col)
    assert th.get_attribute("aria-sort") == "ascending" and values == sorted(values)
    th.find_element("css selector", "button").click()
    values = _column(driver, col)
    assert th.get_attribute("aria-sort") == "descending" and values == sorted(values, reverse=True)
    srg = _header(driver, "SRG")  # ↑: the first click puts the highest first
    srg.find_element("css selector", "button").click()
    assert th.get_attribute("aria-sort") == "none" and srg.get_attribute("aria-sort") == "descending"
    col = int(srg.find_element("css selector", "button").get_attribute("data-col"))
    assert _column(driver, col) == sorted(_column(driver, col), reverse=True)


def test_sorting_works_from_the_keyboard(browser):
    from selenium.webdriver.common.keys import Keys

    driver, _ = browser
    th = _header(driver, "Method")
    button = th.find_element("css selector", "button")
    driver.execute_script("arguments[0].focus()", button)
    assert driver.switch_to.active_element == button
    button.send_keys(Keys.ENTER)
    assert th.get_attribute("aria-sort") == "ascending"
    labels = [
        r.find_element("css selector", "th").text.lower()
        for r in driver.find_elements("css selector", "table.board tbody tr")
    ]
    assert labels == sorted(labels)
    button.send_keys(Keys.SPACE)
    assert th.get_attribute("aria-sort") == "descending"


def test_curve_legend_hides_a_method(browser):
    driver, _ = browser
    box = driver.find_element("css selector", "input[type=checkbox][data-method=saliency]")
    lines = driver.find_elements("css selector", "polyline[data-method=saliency]")
    assert lines and all(line.is_displayed() for line in lines)
    box.click()
    assert not any(line.is_displayed() for line in lines)
    assert all(
        line.is_displayed() for line in driver.find_elements("css selector", "polyline[data-method=gradcam]")
    )
    box.click()
    assert all(line.is_displayed() for line in lines)


def test_explorer_switches_images(browser):
    from selenium.webdriver.support.ui import Select

    driver, _ = browser
    box = driver.find_element("css selector", ".explorer")
    caption = box.find_element("css selector", ".input figcaption")
    base = box.find_element("css selector", ".input img")
    first_src, first_caption = base.get_attribute("src"), caption.text
    select = Select(box.find_element("css selector", "select.pick"))
    assert len(select.options) == 6
    cards = box.find_elements("css selector", ".card")
    assert [c.get_attribute("data-method") for c in cards] == ["gradcam", "saliency", "random"]
    assert all(c.find_element("css selector", "img.heat").is_displayed() for c in cards)
    third = select.options[2].text.split(" ")[0]
    select.select_by_index(2)
    assert caption.text.startswith(third) and caption.text != first_caption
    assert base.get_attribute("src") != first_src
    assert box.find_element("css selector", ".count").text == "3 / 6"
    heat = box.find_element("css selector", ".card img.heat")
    frame = box.find_element("css selector", ".card .frame")
    assert heat.rect == frame.rect  # the map covers exactly the image it lies on
    box.find_element("css selector", "button.next").click()
    assert box.find_element("css selector", ".count").text == "4 / 6"
    assert caption.text.startswith(select.options[3].text.split(" ")[0])


def test_screenshot(browser):
    from PIL import Image

    driver, root = browser
    path = root / "report.png"
    assert driver.save_screenshot(str(path))
    with Image.open(path) as im:
        assert im.size[0] >= 1000 and im.size[1] >= 600
        pixels = np.asarray(im.convert("RGB").resize((64, 64))).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 20  # a page, not a blank
