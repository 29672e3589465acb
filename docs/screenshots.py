"""Take the README's screenshots of the demo page: ``python docs/screenshots.py``.

Serves the embedded model on 127.0.0.1 (a free port), drives headless Chromium through selenium
(``apt-get install chromium chromium-driver fonts-noto-cjk``, ``pip install selenium``) and writes
``docs/images/ui-*.png``, shrunk with ``pngquant`` when it is installed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
#: (file, example index in the page's Examples menu, viewport width, height before it grows to fit the page)
SHOTS = [("ui-schema.png", 3, 1180, 600), ("ui-entities.png", 2, 1180, 600)]


def state(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def serve(app):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    for _ in range(600):
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return url, server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("the server never became ready")


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from api.app import create_app
    from api.settings import Settings
    from hugie import Extractor

    url, server = serve(create_app(Settings(warmup=False), extractor=Extractor.load()))
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                "--force-device-scale-factor=1", f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        for name, example, width, height in SHOTS:
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
            driver.get(url + "/ui/")
            WebDriverWait(driver, 30).until(lambda d: state(d) == "idle")
            Select(driver.find_element(By.ID, "example")).select_by_index(example)
            driver.find_element(By.ID, "run").click()
            WebDriverWait(driver, 60).until(lambda d: state(d) in ("done", "error"))
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {  # the viewport fits the page
                "width": width, "height": driver.execute_script("return document.body.scrollHeight"),
                "deviceScaleFactor": 1, "mobile": False})
            driver.execute_script("window.scrollTo(0, 0)")
            time.sleep(0.5)  # the arcs are redrawn on resize
            path = OUT / name
            driver.save_screenshot(str(path))
            if shutil.which("pngquant"):
                subprocess.run(["pngquant", "--force", "--skip-if-larger", "--quality=60-90", "--output", str(path),
                                str(path)], check=False)
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KiB")
    finally:
        driver.quit()
        server.should_exit = True


if __name__ == "__main__":
    main()
