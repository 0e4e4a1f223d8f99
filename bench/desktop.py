"""Desktop app throughput and responsiveness: the real MainWindow (offscreen) classifying a watched backlog.

For each decode-thread count it times how long the app takes to classify a folder of camera-like JPEGs (the
24 MP set of throughput.py), while a 20 ms QTimer on the GUI thread records how late it fires: the stall a user
would feel. Run: .venv/bin/python bench/desktop.py [--count 100] [--workers 1 2].
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from PySide6.QtCore import QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

import throughput  # noqa: E402
from desktop import settings as S  # noqa: E402
from desktop.app import collect_garbage_on_gui_thread  # noqa: E402
from desktop.main_window import MainWindow  # noqa: E402


def run_once(app: QApplication, folder: Path, count: int, workers: int, tmp: Path) -> dict[str, float]:
    """One fresh app (its own settings and result database, so nothing comes from a cache) over `folder`."""
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=tmp))
    settings = S.Settings(tmp / "settings.ini", data_dir=tmp / "data")
    window = MainWindow(settings)
    window.worker.decode_workers = workers
    window.show()
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0] - 0.020)
        last[0] = now

    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(tick)
    timer.start()
    t0 = time.perf_counter()
    window.add_folder(folder)
    window.start_watching()
    deadline = t0 + 600
    while window.worker.classified_count < count and time.perf_counter() < deadline:
        app.processEvents()
        time.sleep(0.002)
    wall = time.perf_counter() - t0
    timer.stop()
    done = window.worker.classified_count
    window.shutdown()
    window.deleteLater()
    app.processEvents()
    gc.collect()
    late = sorted(max(0.0, g) * 1000 for g in gaps)
    return {
        "decode_workers": workers,
        "images": done,
        "img_per_s": round(done / wall, 2),
        "timer_late_ms_median": round(statistics.median(late), 2),
        "timer_late_ms_p99": round(late[int(0.99 * (len(late) - 1))], 1),
        "timer_late_ms_max": round(late[-1], 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--work", type=Path, default=throughput.DEFAULT_WORK)
    ap.add_argument("--shared", type=Path, default=throughput.DEFAULT_SHARED)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--set", choices=["24mp", "small"], default="24mp",
                    help="24 MP camera files, or the 1024-px memory set (up to 5,000 files: a long run)")
    args = ap.parse_args()
    spec = (throughput.SetSpec("24mp", 6000, 4000, 200, (92, 95), 1, (3.0, 6.0), True) if args.set == "24mp"
            else throughput.SetSpec("small", 1024, 683, 5000, (88, 92), 2, (1.0, 2.0), False))
    files = throughput.ensure_set(spec, args.work, args.shared, os.cpu_count() or 1)[: args.count]
    app = QApplication.instance() or QApplication([])
    gc_timer = collect_garbage_on_gui_thread(app)  # as the app does: Qt objects must die on the GUI thread
    out = []
    with tempfile.TemporaryDirectory(prefix="blurflag-desktop-bench-") as tmp:
        folder = throughput.subset_folder(files, Path(tmp) / "backlog")
        throughput.warm_page_cache(files)
        for w in args.workers:
            r = run_once(app, folder, len(files), w, Path(tmp))
            out.append(r)
            print(f"decode threads {w}: {r['img_per_s']} img/s over {r['images']} {args.set} images; GUI timer late "
                  f"median {r['timer_late_ms_median']} ms, p99 {r['timer_late_ms_p99']} ms, max {r['timer_late_ms_max']} ms")
    gc_timer.stop()
    if args.json:
        args.json.write_text(json.dumps({"cores": os.cpu_count(), "runs": out}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
