"""Screenshot of a merged build in the real Perfetto UI (the picture README shows).

make demo
.venv/bin/lynanalyze merge build/demo/traces -o build/demo/build.json
.venv/bin/python analysis/perfetto_screenshot.py build/demo/build.json analysis/perfetto-merged-build.png
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from perfetto import Perfetto  # noqa: E402


def main(trace: str, png: str) -> None:
    perfetto = Perfetto()
    try:
        with perfetto.load(Path(trace)):
            page = perfetto._browser.contexts[0].pages[0]
            page.set_viewport_size({"width": 1600, "height": 1000})
            time.sleep(3)
            # Expand the first mdfield process and its main thread to show the nested imports.
            page.get_by_text("mdfield title", exact=False).first.click()
            time.sleep(1)
            page.get_by_text("MainThread", exact=False).first.click()
            time.sleep(2)
            page.screenshot(path=png)
    finally:
        perfetto.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
