"""Throughput, memory and latency of BlurFlag's batch pipeline, next to a naive pipeline and the decode floor.

The bench makes its own test sets under ``--work`` (reused when their parameters match):

* ``24mp``: camera-like 6000x4000 JPEGs, quality 92-95, 4:2:2 chroma (what most cameras write), with
  photographic texture (upscaled shared race photos when ``--shared`` exists, procedural scenes otherwise)
  plus luminance and chroma grain; every fourth frame is stored landscape with EXIF orientation 6.
* ``2048px``: 2048-pixel exports (long side), quality 92-95, 4:2:0, light grain.
* ``small``: ``--rss-count`` 1024-px images for the CLI memory run (and a hard-linked 10% subset).

Per image size, in one run, on all cores, it measures side by side:

* shipped: ``BlurClassifier.classify_paths`` (the code the CLI and the desktop app use), end to end;
* naive: full-size decode, ``convert("RGB")``, resize with the model's filter, one ``session.run`` per image,
  in a thread pool of one thread per core;
* floor: only the JPEG decoding that the shipped pipeline performs, at the scale it uses, one thread per core;
* whole frame only: the shipped pipeline without the quadrant check (engine.tiles), to price that check;

and prints images per second, the ratios shipped/naive and shipped/floor, the cores used, how late a 5 ms
timer in a Python thread wakes up meanwhile (a stand-in for the GUI thread), where the CPU time of one image
goes, the peak RSS of ``blurflag classify --json`` over each set, warm single-image latency and cold start.

    .venv/bin/python bench/throughput.py --json bench/results.json
    .venv/bin/python bench/throughput.py --quick              # 20 images per set, for development
    .venv/bin/python bench/throughput.py --draft-check        # probabilities vs full decode per draft factor
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps, features

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.model import BlurClassifier, EngineConfig, load_classifier  # noqa: E402
from engine.preprocess import InputSpec, draft_side, open_image, to_model_image, to_tensor  # noqa: E402

DEFAULT_SHARED = ROOT.parent / "shared" / "data"
DEFAULT_WORK = Path("/tmp/blurflag-bench")
TARGETS = {"24mp_over_naive": 3.0, "24mp_over_floor": 0.75, "2048px_ips": 60.0, "rss_mb": 400.0,
           "warm_24mp_ms": 300.0, "cold_start_s": 2.0}


# --------------------------------------------------------------------------- test sets
@dataclass(frozen=True)
class SetSpec:
    """One generated test set."""

    name: str
    long_side: int
    short_side: int
    count: int
    quality: tuple[int, int]
    subsampling: int  # PIL: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0
    grain: tuple[float, float]  # luminance grain sigma range (8-bit levels)
    camera: bool  # fixed landscape frame, portrait frames stored rotated with EXIF orientation 6


def _sources(shared: Path) -> list[Path]:
    race = shared / "race"
    return sorted(race.rglob("*.jpg")) if race.is_dir() else []


_NOISE: np.ndarray | None = None


def _noise_pool() -> np.ndarray:
    """A per-process pool of unit-sigma*16 grain; images take windows of it at random offsets."""
    global _NOISE
    if _NOISE is None:
        rng = np.random.default_rng(12345 + os.getpid())
        _NOISE = np.clip(rng.standard_normal(6000 * 4000 + 65536, dtype=np.float32) * 16, -127, 127).astype(np.int8)
    return _NOISE


def _procedural(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A scene with 1/f texture and hard-edged shapes, for machines without the shared photos."""
    w, h = size[0] // 4, size[1] // 4
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.rfftfreq(w), indexing="ij")
    amp = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(w, h))
    chans = []
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, amp.shape)
        f = np.fft.irfft2(amp * np.exp(1j * phase), s=(h, w))
        chans.append((f - f.min()) / (np.ptp(f) + 1e-9) * 200 + 28)
    img = Image.fromarray(np.stack(chans, axis=-1).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(60):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(4, w // 4)), y0 + int(rng.integers(4, h // 4))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x0, y0, x1, y1), fill=colour)
    return img.filter(ImageFilter.DETAIL)


def _make_one(spec: SetSpec, index: int, source: str | None, out: str) -> int:
    """Write one test JPEG; returns its size in bytes."""
    rng = np.random.default_rng(zlib.crc32(f"{spec.name}:{index}".encode()))
    if source:
        with Image.open(source) as im:
            base = (ImageOps.exif_transpose(im) or im).convert("RGB")
    else:
        base = _procedural(rng, (spec.long_side, spec.short_side))
    portrait = base.height > base.width
    if spec.camera:
        # Crop to 3:2, scale to the sensor frame; portrait frames are stored rotated, as cameras do.
        upright = (spec.short_side, spec.long_side) if portrait else (spec.long_side, spec.short_side)
        base = ImageOps.fit(base, upright, Image.Resampling.BICUBIC)
        stored = base.transpose(Image.Transpose.ROTATE_90) if portrait else base
    else:
        scale = spec.long_side / max(base.size)
        size = (max(1, round(base.width * scale)), max(1, round(base.height * scale)))
        stored = base.resize(size, Image.Resampling.BICUBIC) if size != base.size else base
    arr = np.asarray(stored, dtype=np.uint8)
    h, w = arr.shape[:2]
    pool = _noise_pool()
    off = int(rng.integers(0, pool.size - h * w))
    sigma = float(rng.uniform(*spec.grain))
    noise = pool[off : off + h * w].reshape(h, w).astype(np.int16)
    noise = (noise * round(sigma * 16)) >> 8  # pool sigma is 16
    mixed = arr.astype(np.int16)
    mixed += noise[..., None]
    ch, cw = (h + 3) // 4, (w + 3) // 4
    chroma = np.clip(rng.standard_normal((ch, cw, 3), dtype=np.float32) * sigma * 0.5, -60, 60).astype(np.int16)
    mixed += np.repeat(np.repeat(chroma, 4, axis=0), 4, axis=1)[:h, :w]
    img = Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8), "RGB")
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "BenchCam", "BC-24"  # Make, Model
    exif[0x0112] = 6 if (spec.camera and portrait) else 1  # Orientation
    quality = int(rng.integers(spec.quality[0], spec.quality[1] + 1))
    tmp = out + ".part"
    img.save(tmp, "JPEG", quality=quality, subsampling=spec.subsampling, exif=exif.tobytes())
    os.replace(tmp, out)
    return os.path.getsize(out)


def ensure_set(spec: SetSpec, work: Path, shared: Path, jobs: int) -> list[Path]:
    """Generate `spec` under `work` unless an identical set is already there; return its files in order."""
    folder = work / spec.name
    stamp = folder / ".params.json"
    sources = _sources(shared)
    params = json.loads(json.dumps({**asdict(spec), "sources": len(sources), "version": 2}))
    files = [folder / f"{spec.name}_{i:05d}.jpg" for i in range(spec.count)]
    if stamp.exists() and json.loads(stamp.read_text()) == params and all(f.exists() for f in files):
        return files
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    todo = [(spec, i, str(sources[i % len(sources)]) if sources else None, str(f)) for i, f in enumerate(files)]
    total = 0
    with cf.ProcessPoolExecutor(max_workers=jobs) as pool:
        for n, size in enumerate(pool.map(_make_one_star, todo, chunksize=4), 1):
            total += size
            if n % 50 == 0 or n == len(todo):
                print(f"  generated {n}/{len(todo)} {spec.name} images", file=sys.stderr, flush=True)
    stamp.write_text(json.dumps(params))
    texture = "shared race photos" if sources else "procedural scenes"
    print(f"  {spec.name}: {len(files)} files, {total / len(files) / 1e6:.1f} MB average, from {texture}, "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return files


def _make_one_star(job: tuple[SetSpec, int, str | None, str]) -> int:
    return _make_one(*job)


def subset_folder(files: Sequence[Path], folder: Path) -> Path:
    """A folder holding exactly `files` (hard links, copies where links fail)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for f in files:
        try:
            os.link(f, folder / f.name)
        except OSError:
            shutil.copy2(f, folder / f.name)
    return folder


def warm_page_cache(files: Sequence[Path]) -> None:
    """Read every file once so the first timed pipeline does not pay for the disk."""
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 22):
                pass


# --------------------------------------------------------------------------- pipelines
def floor_decode(path: Path, spec: InputSpec) -> tuple[int, int]:
    """Only the JPEG decoding the shipped pipeline performs, at its scale."""
    with Image.open(path) as im:
        side = draft_side(spec, im.size)
        if side:
            im.draft("RGB", (side, side))
        im.load()
        return im.size


def naive_one(path: Path, classifier: BlurClassifier) -> np.ndarray:
    """Full-size decode, convert, resize with the model's filter (plain, no reducing gap), one inference call."""
    spec = classifier.spec
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    x = to_tensor(rgb.resize((spec.size, spec.size), spec.filter))
    return classifier.predict(x[None])[0]


class Stall:
    """A Python thread that sleeps 5 ms in a loop and records how late it wakes (GUI-thread stand-in)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.late: list[float] = []
        self._thread = threading.Thread(target=self._run, name="bench-stall", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            time.sleep(0.005)
            self.late.append(time.perf_counter() - t - 0.005)

    def __enter__(self) -> Stall:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        if not self.late:
            return {"p99_ms": 0.0, "max_ms": 0.0}
        ms = np.asarray(self.late) * 1000
        return {"p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1)}


@dataclass(frozen=True)
class Timing:
    """One timed pass over a set."""

    images: int
    wall_s: float
    cpu_s: float
    stall: dict[str, float]
    other_cpu_s: float = 0.0  # CPU time other processes used meanwhile (Linux), to spot contention

    @property
    def other_cores(self) -> float:
        return self.other_cpu_s / self.wall_s

    @property
    def ips(self) -> float:
        return self.images / self.wall_s

    @property
    def cores_used(self) -> float:
        return self.cpu_s / self.wall_s


def _system_busy_s() -> float:
    """CPU seconds all processes have used since boot (0 where /proc/stat is missing)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], int], stall: bool = False) -> Timing:
    """Run `fn` (returns the number of images done) and time it, wall and process CPU."""
    b0 = _system_busy_s()
    c0, t0 = time.process_time(), time.perf_counter()
    if stall:
        with Stall() as s:
            n = fn()
        summary = s.summary()
    else:
        n = fn()
        summary = {}
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return Timing(n, wall, cpu, summary, max(0.0, _system_busy_s() - b0 - cpu))


def run_shipped(classifier: BlurClassifier, files: Sequence[Path], workers: int | None = None,
                batch_size: int = 8) -> int:
    n = 0
    for r in classifier.classify_paths(files, workers=workers, batch_size=batch_size):
        if not r.ok:
            raise RuntimeError(f"shipped pipeline failed on {r.path}: {r.error}")
        n += 1
    return n


def run_pool(fn: Callable[[Path], Any], files: Sequence[Path], workers: int) -> int:
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(1 for _ in pool.map(fn, files))


# --------------------------------------------------------------------------- where the time goes
def stage_breakdown(classifier: BlurClassifier, files: Sequence[Path], batch: int = 8) -> dict[str, float]:
    """CPU ms per image of each step, one thread (thread CPU time, so other load barely matters)."""
    spec = classifier.spec
    acc = {"decode": 0.0, "open_exif_orient_rgb": 0.0, "resize": 0.0, "to_tensor": 0.0, "inference": 0.0}
    tensors: list[np.ndarray] = []
    for f in files:
        t = time.thread_time()
        floor_decode(f, spec)
        acc["decode"] += time.thread_time() - t
        t = time.thread_time()
        img = open_image(f, spec)
        acc["open_exif_orient_rgb"] += time.thread_time() - t
        t = time.thread_time()
        small = to_model_image(img, spec)
        acc["resize"] += time.thread_time() - t
        t = time.thread_time()
        tensors.append(to_tensor(small))
        acc["to_tensor"] += time.thread_time() - t
    for i in range(0, len(tensors), batch):
        x = np.stack(tensors[i : i + batch])
        t = time.thread_time()
        classifier.predict(x)
        acc["inference"] += time.thread_time() - t
    out = {k: v * 1000 / len(files) for k, v in acc.items()}
    out["open_exif_orient_rgb"] = max(0.0, out["open_exif_orient_rgb"] - out["decode"])
    return {k: round(v, 2) for k, v in out.items()}


# --------------------------------------------------------------------------- CLI runs
def _cli() -> list[str]:
    script = Path(sys.executable).with_name("blurflag")
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine.cli"]


# A child's ru_maxrss starts from its parent's high-water mark (vfork/fork then exec keep it), so the
# CLI is started from this tiny launcher rather than from the bench process with its big naive decodes.
_LAUNCHER = """
import os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, time.perf_counter() - t0)
"""


def cli_run(args: Sequence[str]) -> tuple[float, float]:
    """Run `blurflag ...` with stdout discarded; return (wall seconds, peak RSS in MB) of that process."""
    out = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, *_cli(), *args], capture_output=True, text=True,
                         cwd=ROOT, check=False)
    fields = out.stdout.split()[-3:]
    if len(fields) != 3:
        raise RuntimeError(f"the CLI launcher failed: {out.stderr[-400:]}")
    code, maxrss_kib, wall = int(fields[0]), int(fields[1]), float(fields[2])
    if code != 0:
        raise RuntimeError(f"blurflag {' '.join(args[:2])} ... exited {code}: {out.stderr[-400:]}")
    return wall, maxrss_kib / 1024  # Linux reports KiB; wall is fork to exit


def import_profile() -> dict[str, float]:
    """Seconds to import the CLI module, onnxruntime, and to create the session, in a fresh process."""
    code = (
        "import time; t0=time.perf_counter(); import engine.cli; t1=time.perf_counter();"
        "import onnxruntime; t2=time.perf_counter(); from engine.model import load_classifier;"
        "c=load_classifier(); t3=time.perf_counter();"
        "print(t1-t0, t2-t1, t3-t2)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    a, b, c = (float(x) for x in out.stdout.split())
    return {"import_engine_cli_s": round(a, 3), "import_onnxruntime_s": round(b, 3), "load_model_s": round(c, 3)}


# --------------------------------------------------------------------------- draft-factor accuracy
MODEL_GAP = "model"


@dataclass(frozen=True)
class Variant:
    """A cheaper input pipeline to compare with full decoding."""

    label: str
    draft_factor: float | None  # None: the model's own decoding (camera originals further down); else for every size
    # PIL's resize(reducing_gap=...): integer box reduction first. MODEL_GAP: the model's own (its metadata).
    reducing_gap: float | str | None = MODEL_GAP


VARIANTS = (Variant("shipped", None), Variant("draft 1.0", 1.0), Variant("draft 2.0", 2.0), Variant("draft 3.0", 3.0), Variant("draft 4.0", 4.0),
            Variant("draft 4.0, no reducing_gap", 4.0, None), Variant("draft 4.0 + reducing_gap 2", 4.0, 2.0),
            Variant("draft 4.0 + reducing_gap 3", 4.0, 3.0))


def draft_check(classifier: BlurClassifier, files: Sequence[Path], variants: Sequence[Variant]) -> dict[str, Any]:
    """Max and mean |p_variant - p_full| over all classes, and top-class agreement, per variant.

    The reference is how the model's training images were made: a full decode, then the model's own resize
    (Lanczos with the reducing gap recorded in its metadata)."""
    spec = classifier.spec

    def variant_spec(draft_factor: float | None, gap: float | str | None) -> InputSpec:
        s = replace(spec, reducing_gap=spec.reducing_gap if gap == MODEL_GAP else gap)
        if draft_factor is not None:
            s = replace(s, draft_factor=draft_factor, original_draft_factor=draft_factor)
        return s

    def probs(f: Path, draft_factor: float | None, gap: float | str | None) -> np.ndarray:
        s = variant_spec(draft_factor, gap)
        return classifier.predict(to_tensor(to_model_image(open_image(f, s), s))[None])[0]

    diffs: dict[str, list[float]] = {v.label: [] for v in variants}
    agree: dict[str, int] = {v.label: 0 for v in variants}
    scales: dict[str, set[str]] = {v.label: set() for v in variants}
    for f in files:
        full = probs(f, 0.0, MODEL_GAP)
        for v in variants:
            p = probs(f, v.draft_factor, v.reducing_gap)
            diffs[v.label].append(float(np.abs(p - full).max()))
            agree[v.label] += int(np.argmax(p) == np.argmax(full))
            with Image.open(f) as im:
                w0 = im.size[0]
                side = draft_side(variant_spec(v.draft_factor, v.reducing_gap), im.size)
                if side:
                    im.draft("RGB", (side, side))
                scales[v.label].add(f"1/{round(w0 / im.size[0])}")
    return {
        v.label: {
            "images": len(files),
            "max_abs_diff": round(max(diffs[v.label]), 4),
            "mean_abs_diff": round(statistics.fmean(diffs[v.label]), 5),
            "p99_abs_diff": round(float(np.percentile(diffs[v.label], 99)), 4),
            "top_class_agreement": round(agree[v.label] / len(files), 4),
            "jpeg_scales": sorted(scales[v.label]),
        }
        for v in variants
    }


# --------------------------------------------------------------------------- configuration sweep
def classifier_with(model: Path | None, intra_op_threads: int, spinning: bool) -> BlurClassifier:
    """The bundled classifier, with its session rebuilt under explicit onnxruntime thread settings."""
    import onnxruntime as ort

    base = load_classifier(model, EngineConfig(model_dir=model, intra_op_threads=intra_op_threads))
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(str(base.info.onnx_path), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    return BlurClassifier(base.info, session)


def sweep(model: Path | None, files: dict[str, list[Path]], repeat: int) -> dict[str, Any]:
    """shipped img/s and CPU ms per image over decode workers, onnxruntime threads and batch sizes."""
    out: dict[str, Any] = {}
    cores = os.cpu_count() or 1
    ort_modes = ((0, True), (0, False), (1, False))  # old default (spinning), shipped, one thread
    combos = [(w, 8, t, sp) for t, sp in ort_modes for w in sorted({1, cores, cores + 1})]
    combos += [(cores, b, 0, False) for b in (1, 4, 16, 32)]
    sessions = {mode: classifier_with(model, *mode) for mode in ort_modes}
    for key, fs in files.items():
        rows = []
        for w, b, t, sp in combos:
            clf = sessions[(t, sp)]
            run_shipped(clf, fs[:16])
            passes = [timed(partial(run_shipped, clf, fs, w, b), stall=True) for _ in range(repeat)]
            best = max(passes, key=lambda x: x.ips)
            rows.append({"workers": w, "batch": b, "ort_threads": t or "default", "spinning": sp,
                         "ips": round(best.ips, 1), "cpu_ms_per_image": round(best.cpu_s * 1000 / best.images, 1),
                         "cores_used": round(best.cores_used, 2), "timer_late_p99_ms": best.stall["p99_ms"],
                         "other_processes_cores": round(best.other_cores, 2)})
            print(f"  {key}: workers {w} batch {b:2d} ort threads {t or 'default'} spinning {sp!s:5}: "
                  f"{best.ips:6.1f} img/s, {best.cpu_s * 1000 / best.images:5.1f} CPU ms/img, "
                  f"{best.cores_used:.2f} cores, 5 ms timer p99 late {best.stall['p99_ms']} ms, "
                  f"others {best.other_cores:.2f} cores", flush=True)
        out[key] = rows
    return out


# --------------------------------------------------------------------------- main
def machine() -> dict[str, Any]:
    import onnxruntime as ort

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(), "cpu": cpu, "platform": platform.platform(), "python": platform.python_version(),
        "pillow": Image.__version__, "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
        "libjpeg": features.version("jpg"), "onnxruntime": ort.__version__, "numpy": np.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _running(pattern: str) -> bool:
    try:
        out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    except OSError:
        return False
    return bool(out.stdout.strip())


def tile_share(whole_only: BlurClassifier, check: BlurClassifier, files: Sequence[Path]) -> float:
    """Fraction of `files` whose whole frame calls for the quadrant check (engine.tiles)."""
    rows = [np.array([r.probabilities[n] for n in whole_only.names]) for r in whole_only.classify_paths(files)]
    return sum(check.wants_tiles(p) for p in rows) / max(1, len(rows))


def measure_set(name: str, files: list[Path], classifier: BlurClassifier, workers: int, repeat: int,
                naive_limit: int, whole_only: BlurClassifier | None = None) -> dict[str, Any]:
    """shipped / naive / floor passes over one set, best of `repeat` each, interleaved.

    With `whole_only` (the same model without the quadrant check), a fourth pass times the shipped pipeline
    without it, side by side.
    """
    spec = classifier.spec
    naive_files = files[:naive_limit] if naive_limit else files
    shipped: list[Timing] = []
    naive: list[Timing] = []
    floor: list[Timing] = []
    whole: list[Timing] = []
    run_shipped(classifier, files[: min(16, len(files))])  # warm the session and the pool code
    for _ in range(repeat):
        floor.append(timed(lambda: run_pool(lambda f: floor_decode(f, spec), files, workers)))
        shipped.append(timed(lambda: run_shipped(classifier, files), stall=True))
        naive.append(timed(lambda: run_pool(lambda f: naive_one(f, classifier), naive_files, workers)))
        if whole_only is not None:
            whole.append(timed(lambda: run_shipped(whole_only, files)))
    best = {k: max(v, key=lambda t: t.ips) for k, v in (("shipped", shipped), ("naive", naive), ("floor", floor))}
    out: dict[str, Any] = {
        "images": len(files),
        "naive_images": len(naive_files),
        "shipped_ips": round(best["shipped"].ips, 2),
        "naive_ips": round(best["naive"].ips, 2),
        "floor_ips": round(best["floor"].ips, 2),
        "shipped_over_naive": round(best["shipped"].ips / best["naive"].ips, 3),
        "shipped_over_floor": round(best["shipped"].ips / best["floor"].ips, 3),
        "shipped_cores_used": round(best["shipped"].cores_used, 2),
        "floor_cores_used": round(best["floor"].cores_used, 2),
        "naive_cores_used": round(best["naive"].cores_used, 2),
        "timer_lateness_during_shipped": best["shipped"].stall,
        "other_processes_cores": {k: round(t.other_cores, 2) for k, t in best.items()},
        "all_passes_ips": {k: [round(t.ips, 2) for t in v] for k, v in
                           (("shipped", shipped), ("naive", naive), ("floor", floor))},
    }
    if whole_only is not None and classifier.tile_check is not None:
        best_whole = max(whole, key=lambda t: t.ips)
        out["whole_frame_only_ips"] = round(best_whole.ips, 2)
        out["tile_check_cost"] = round(1 - best["shipped"].ips / best_whole.ips, 3)
        out["tile_share"] = round(tile_share(whole_only, classifier, files), 3)
        out["all_passes_ips"]["whole_frame_only"] = [round(t.ips, 2) for t in whole]
    with Image.open(files[0]) as im:
        w, h = im.size
        side = draft_side(spec, im.size)
        if side:
            im.draft("RGB", (side, side))
        out["decoded_size"] = f"{im.size[0]}x{im.size[1]} from {w}x{h}"
    out["mean_file_mb"] = round(sum(f.stat().st_size for f in files) / len(files) / 1e6, 2)
    return out


def print_set(name: str, r: dict[str, Any]) -> None:
    print(f"\n== {name}: {r['images']} images ({r['mean_file_mb']} MB avg, decoded {r['decoded_size']})")
    print(f"  shipped {r['shipped_ips']:7.1f} img/s  ({r['shipped_cores_used']:.2f} cores busy)")
    print(f"  naive   {r['naive_ips']:7.1f} img/s  ({r['naive_cores_used']:.2f} cores busy, {r['naive_images']} images)")
    print(f"  floor   {r['floor_ips']:7.1f} img/s  ({r['floor_cores_used']:.2f} cores busy)")
    print(f"  shipped/naive {r['shipped_over_naive']:.2f}x   shipped/floor {r['shipped_over_floor']:.2f}")
    if "whole_frame_only_ips" in r:
        print(f"  without the quadrant check {r['whole_frame_only_ips']:7.1f} img/s: the check costs "
              f"{r['tile_check_cost']:.1%} (it looks at the tiles of {r['tile_share']:.1%} of these images)")
    oth = r["other_processes_cores"]
    print(f"  other processes meanwhile: shipped {oth['shipped']}, naive {oth['naive']}, floor {oth['floor']} cores")
    st = r["timer_lateness_during_shipped"]
    print(f"  5 ms timer in a Python thread during shipped: p99 {st['p99_ms']} ms late, max {st['max_ms']} ms")
    if "stages_ms_per_image" in r:
        stages = r["stages_ms_per_image"]
        total = sum(stages.values())
        print("  CPU per image, one thread: " + ", ".join(f"{k} {v:.1f} ms" for k, v in stages.items())
              + f" = {total:.1f} ms")
    if "peak_rss_mb" in r:
        print(f"  blurflag classify --json on this folder: peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"{r['cli_ips']:.1f} img/s including start-up")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where test sets are made (not the repo)")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="photos for texture, when present")
    ap.add_argument("--count", type=int, default=200, help="images per size (24 MP and 2048 px)")
    ap.add_argument("--rss-count", type=int, default=5000, help="images in the CLI memory folder")
    ap.add_argument("--repeat", type=int, default=2, help="passes per pipeline; the best is reported")
    ap.add_argument("--naive-limit", type=int, default=0, help="time the naive pipeline on the first N only")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes for set generation")
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: bundled)")
    ap.add_argument("--quick", action="store_true", help="20 images per set, 200 for memory, one pass")
    ap.add_argument("--generate-only", action="store_true", help="make the sets and stop")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--draft-check", action="store_true",
                    help="only compare probabilities of reduced-scale decoding and resize variants with the model's "
                         "training pipeline (full decode, its own resize)")
    ap.add_argument("--sweep", action="store_true",
                    help="only time the shipped pipeline over decode workers, batch sizes and onnxruntime threads")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.quick:
        args.count, args.rss_count, args.repeat = 20, 200, 1
    cores = os.cpu_count() or 1
    classifier = load_classifier(args.model, EngineConfig(model_dir=args.model))
    whole_only = load_classifier(args.model, EngineConfig(model_dir=args.model, tile_check=None))
    spec = classifier.spec
    model_dir = args.model or (ROOT / "models")
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "machine": machine(),
        "model": {"dir": str(model_dir), "onnx_mb": round(classifier.info.onnx_path.stat().st_size / 1e6, 2),
                  "input": spec.size, "resize": spec.resize, "draft_factor": spec.draft_factor,
                  "original_draft_factor": spec.original_draft_factor, "original_side": spec.original_side,
                  "reducing_gap": spec.reducing_gap},
    }
    if _running("blurflag-train"):
        report["contention"] = "a blurflag-train process was running during this measurement"
        print("WARNING: a blurflag-train process is running: figures are under contention", file=sys.stderr)
    print(f"{cores} cores, {report['machine']['cpu']}, model {spec.size}px {spec.resize}, "
          f"draft factor {spec.draft_factor}, reducing gap {spec.reducing_gap}", file=sys.stderr)

    sets = {
        "24mp": SetSpec("24mp", 6000, 4000, args.count, (92, 95), 1, (3.0, 6.0), True),
        "2048px": SetSpec("2048px", 2048, 1365, args.count, (92, 95), 2, (1.5, 3.0), False),
    }
    small = SetSpec("small", 1024, 683, args.rss_count, (88, 92), 2, (1.0, 2.0), False)
    files = {k: ensure_set(s, args.work, args.shared, args.jobs) for k, s in sets.items()}
    small_files = [] if args.skip_rss or args.draft_check or args.sweep else ensure_set(small, args.work, args.shared, args.jobs)
    if args.generate_only:
        return 0

    if args.draft_check:
        sources = _sources(args.shared)
        report["draft_check"] = {}
        for label, fs in (("shared race photos", sources), ("24mp", files["24mp"]), ("2048px", files["2048px"])):
            if not fs:
                continue
            res = draft_check(classifier, fs, VARIANTS)
            report["draft_check"][label] = res
            for fa, r in res.items():
                print(f"{label:>18} {fa:>26}: max |dp| {r['max_abs_diff']:.4f}, mean {r['mean_abs_diff']:.5f}, "
                      f"p99 {r['p99_abs_diff']:.4f}, top class same {r['top_class_agreement']:.1%}, "
                      f"scales {r['jpeg_scales']} ({r['images']} images)")
        _write(args.json, report)
        return 0

    for fs in files.values():
        warm_page_cache(fs)
    if args.sweep:
        report["sweep"] = sweep(args.model, files, args.repeat)
        _write(args.json, report)
        return 0
    for key, fs in files.items():
        naive_limit = args.naive_limit if key == "24mp" else 0
        r = measure_set(key, fs, classifier, cores, args.repeat, naive_limit, whole_only)
        r["stages_ms_per_image"] = stage_breakdown(classifier, fs[: min(40, len(fs))])
        if not args.skip_rss:
            wall, rss = cli_run(["classify", "--json", str(fs[0].parent)])
            r["peak_rss_mb"], r["cli_ips"] = round(rss, 1), round(len(fs) / wall, 2)
        report[key] = r
        print_set(key, r)

    # Latency: a warm single check of a 24 MP JPEG, and a cold `blurflag classify` on one.
    big = files["24mp"]
    classifier.classify(big[0])
    lat = []
    for f in big[1 : 1 + min(20, len(big) - 1)] or big[:1]:
        t = time.perf_counter()
        classifier.classify(f)
        lat.append((time.perf_counter() - t) * 1000)
    cold = [cli_run(["classify", str(big[i % len(big)])])[0] for i in range(5)]
    report["latency"] = {
        "warm_single_24mp_ms_median": round(statistics.median(lat), 1),
        "warm_single_24mp_ms_max": round(max(lat), 1),
        "cold_start_s_median": round(statistics.median(cold), 3),
        "cold_start_s_max": round(max(cold), 3),
        **import_profile(),
    }
    la = report["latency"]
    print(f"\n== latency: warm single 24 MP check {la['warm_single_24mp_ms_median']} ms median "
          f"({la['warm_single_24mp_ms_max']} max); cold `blurflag classify` on one 24 MP image "
          f"{la['cold_start_s_median']} s median ({la['cold_start_s_max']} max)")
    print(f"   imports: engine.cli {la['import_engine_cli_s']} s, onnxruntime {la['import_onnxruntime_s']} s, "
          f"model load {la['load_model_s']} s")

    if not args.skip_rss:
        tenth = subset_folder(small_files[: max(1, len(small_files) // 10)], args.work / "small_tenth")
        rss_runs = {}
        for label, folder, n in (("tenth", tenth, max(1, len(small_files) // 10)),
                                 ("full", small_files[0].parent, len(small_files))):
            wall, rss = cli_run(["classify", "--json", str(folder)])
            rss_runs[label] = {"images": n, "peak_rss_mb": round(rss, 1), "cli_ips": round(n / wall, 1)}
        report["cli_memory"] = rss_runs
        print(f"\n== blurflag classify --json on {small.long_side}-px folders: "
              + ", ".join(f"{v['images']} images peak RSS {v['peak_rss_mb']:.0f} MB ({v['cli_ips']} img/s)"
                          for v in rss_runs.values()))

    print("\n== targets")
    checks = [
        ("24 MP shipped >= 3x naive", report["24mp"]["shipped_over_naive"] >= TARGETS["24mp_over_naive"]),
        ("24 MP shipped >= 0.75x floor", report["24mp"]["shipped_over_floor"] >= TARGETS["24mp_over_floor"]),
        ("2048 px >= 60 img/s", report["2048px"]["shipped_ips"] >= TARGETS["2048px_ips"]),
        ("warm 24 MP check < 300 ms", la["warm_single_24mp_ms_max"] < TARGETS["warm_24mp_ms"]),
        ("cold start < 2 s", la["cold_start_s_max"] < TARGETS["cold_start_s"]),
    ]
    if "cli_memory" in report:
        peak = max(v["peak_rss_mb"] for v in report["cli_memory"].values())
        checks.append((f"CLI peak RSS < 400 MB over {args.rss_count} images", peak < TARGETS["rss_mb"]))
    for label, ok in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {label}")
    report["targets_met"] = {label: ok for label, ok in checks}
    _write(args.json, report)
    return 0


def _write(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
