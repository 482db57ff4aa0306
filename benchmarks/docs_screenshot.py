"""Screenshot the documentation site's start page (docs/site.png), as a reader's browser shows it.

    make docs && python -m benchmarks.docs_screenshot      # Debian's chromium, driven by Playwright

Serves site/ on a loopback port (the search and navigation scripts need http, not file://).
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright

SITE, OUT = Path("site"), Path("docs/site.png")


def main() -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or not (SITE / "index.html").is_file():
        raise SystemExit("needs Debian's chromium and a built site (make docs)")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{server.server_port}/")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(OUT))
            browser.close()
    finally:
        server.shutdown()
    print(OUT)


if __name__ == "__main__":
    main()
