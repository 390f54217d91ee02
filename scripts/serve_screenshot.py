"""A screenshot of `charrnn serve`'s page after a real session: start the server on a free
localhost port, open the page in headless Chromium, type a prompt, let the continuation
stream in, shade it (by surprisal, or by one unit), and save the window as a PNG.

    python scripts/serve_screenshot.py --checkpoint runs/shakespeare --prompt "ROMEO:" \
        --neuron 2:37c --out docs/serve.png

Needs the serve extra, selenium (the dev extra), and Debian's chromium and chromium-driver.
Exits non-zero, saying why, if the page does not show the generated text or the shading.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: str, port: int, *options: str, timeout: float = 180) -> subprocess.Popen:
    """`charrnn serve` (with `options`) in its own process, once it accepts connections."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "charrnn", "serve", "--checkpoint", checkpoint,
                               "--port", str(port), *options], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout  # a busy machine takes a while to import torch
    while server.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            if time.monotonic() > deadline:
                server.terminate()
                sys.exit(f"charrnn serve did not listen on port {port} within {timeout:.0f} s")
            time.sleep(0.5)
    sys.exit(f"charrnn serve exited: {server.stderr.read().decode().strip()}")


def browse(url: str, prompt: str, length: int, neuron: str | None, out: Path) -> None:
    """Drive the page as a person would and save what the window shows."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,760"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        browser.get(url)
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: "hidden" in b.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "prompt").send_keys(prompt)
        length_box = browser.find_element(By.ID, "length")
        length_box.clear()
        length_box.send_keys(str(length))
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: len(b.find_element(By.ID, "output").text) >= len(prompt.strip()) + length // 2)
        wait.until(lambda b: b.find_element(By.ID, "text").get_property("value"))  # the stream has ended
        if not browser.find_element(By.ID, "output").text.startswith(prompt.strip()):
            sys.exit("the generated text does not start with the prompt")
        if neuron:
            Select(browser.find_element(By.ID, "by")).select_by_value("neuron")
            browser.find_element(By.ID, "neuron").send_keys(neuron)
        browser.find_element(By.ID, "shade").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#shaded span")
                   or b.find_element(By.ID, "error").text)
        if browser.find_element(By.ID, "error").text:
            sys.exit(f"the page says {browser.find_element(By.ID, 'error').text}")
        # the whole page, from the top: a window as tall as the page (the outer size counts its frame)
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1000, height + 150)
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(out))
    finally:
        browser.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--checkpoint", help="start `charrnn serve` on this checkpoint file or run directory")
    where.add_argument("--url", help="or use a server that is already running, e.g. http://127.0.0.1:8000/")
    parser.add_argument("--prompt", default="The ")
    parser.add_argument("--length", type=int, default=300, help="characters to generate")
    parser.add_argument("--neuron", help="shade by this unit (L:U or L:Uc) instead of by surprisal")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "serve.png")
    args = parser.parse_args()
    missing = [name for name in ("chromium", "chromedriver") if not shutil.which(name)]
    if missing:
        sys.exit(f"{' and '.join(missing)} not found: apt-get install chromium chromium-driver")
    if args.url:
        browse(args.url, args.prompt, args.length, args.neuron, args.out)
    else:
        port = free_port()
        server = start_server(args.checkpoint, port)
        try:
            browse(f"http://127.0.0.1:{port}/", args.prompt, args.length, args.neuron, args.out)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
