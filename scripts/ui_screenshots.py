"""Screenshots of the web page for docs/ui.md, from a runs folder: python scripts/ui_screenshots.py RUNS OUT_DIR

Shoots the runs page, the first run's page, the comparison of the first two runs, the new-run form, and a chat
with the first chat run (when there is one) in Debian's chromium through Playwright.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path


def main(root: Path, out: Path) -> None:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from tunesmith.ui import create_app
    from tunesmith.ui.runs import RunsFolder

    out.mkdir(parents=True, exist_ok=True)
    rows = RunsFolder(root).rows()
    port = 7869
    server = uvicorn.Server(uvicorn.Config(create_app(root, port=port), host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    chats = [row.name for row in rows if row.task == "chat" and row.state == "finished"]
    plain = [row.name for row in rows if row.task == "lm"]
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        shots = [("ui-runs.png", "/", None), ("ui-run.png", f"/runs/{plain[0]}", "#plot-loss .trace"),
                 ("ui-compare.png", f"/compare?run={plain[0]}&run={plain[1]}", "#plot-compare-loss .trace"),
                 ("ui-new.png", "/new", None)]
        for name, path, ready in shots:
            page.goto(base + path)
            if ready:
                page.wait_for_selector(ready)
            page.wait_for_timeout(500)
            page.screenshot(path=str(out / name), full_page=name != "ui-run.png")
        if chats:
            page.goto(f"{base}/runs/{chats[0]}")
            for text in ("Hi, how are you today?", "Any plans for the weekend?"):
                page.fill("#chat-input", text)
                page.click("#chat-form button[type=submit]")
                page.wait_for_function(f"document.querySelectorAll('.message.assistant').length >= {1 + (text[0] == 'A')}",
                                       timeout=120_000)
            page.locator("#try").screenshot(path=str(out / "ui-chat.png"))
        browser.close()
    server.should_exit = True
    print(f"wrote {', '.join(p.name for p in sorted(out.glob('ui-*.png')))} to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
