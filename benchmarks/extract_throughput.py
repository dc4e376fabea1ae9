"""Figure: batched extraction (featstore's build path) vs a one-clip-at-a-time loop (MERTools / MMSA-FET style).

Both sides use the same loaded model: a HuBERT-base-sized model (hidden 768, 12 layers, 12 heads, FFN 3072,
the standard 7-layer conv front end) with random weights, saved with save_pretrained and loaded through
featstore's own hf-audio loader (`load_encoder(EncoderSpec(family="hf-audio", layers=[-4..-1], sum))`).
The default layout is `feat_extract_norm='layer', do_stable_layer_norm=True` (the HuBERT-large /
chinese-hubert-large layout), the one hf_audio runs as padded batches with attention masks; `--group-norm`
adds a second model with the base layout (GroupNorm front end), which hf_audio batches only over
equal-length windows.

Data: N synthetic speech-like mp4 clips (AAC, 44.1 kHz stereo, so decoding means AAC decode + resampling
to 16 kHz mono), durations uniform in [2, 16] s, written once under --workdir.

- baseline: for each clip, `featstore.media.decode_audio` then `encoder.encode([x])`; no prefetch.
- featstore: `featstore.build.run_partition` on a store key (rows_per_chunk=128, so one partition):
  length-bucketed batches planned from the clips' metadata durations (`--settings BATCHxSECONDS,...`;
  0 s = one clip a forward, BuildOptions' default on a CPU), decoded in batch order by a prefetch thread
  while the previous batch encodes, rows written to the Zarr store (float16).

Roofline, in the same run: the FLOPs of the model's forwards (torch.utils.flop_counter, fitted over clip
length) over their measured time, against a 4096 x 4096 fp32 matmul at the same threads: how much faster
any arrangement of the same arithmetic could be on this CPU.

Correctness, in the same run: the float32 rows that run_partition hands to `FeatureArray.write_rows`
(captured by wrapping it) must equal the baseline rows within 1e-4 relative error (max |a-b| / max |b|
per row, the tolerance of tests/test_encoders_hf.py); the stored float16 rows are also compared with
the baseline rows cast to float16.

Timing: wall clock of each pass, the same `torch.set_num_threads` for all passes; a forward hook on the
model and one on its conv front end split encoder time into conv front end vs transformer and count
padding. The machine may be shared, so other load can land on one side only: with --blocks K the clips
are split into K blocks and the configurations alternate block by block (ABBA; each featstore block is
its own dataset and partition, so bucketing sees only that block), each configuration's time being the
sum over blocks; with --rounds R everything runs R times and the tables report each configuration's
best (least disturbed) total, listing all; with one round and one block the baseline runs before and
after the featstore passes (unless --no-bracket) to expose drift. "CPU use" (process CPU seconds /
wall seconds) shows how much of the machine a pass actually got.

    .venv/bin/python benchmarks/extract_throughput.py --group-norm   # 100 clips, 5 blocks (~25 min on 2 cores)
    .venv/bin/python benchmarks/extract_throughput.py --quick        # 20 clips, a small model (smoke run, ~20 s)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from featstore.build import BuildOptions, make_batches, run_partition  # noqa: E402
from featstore.catalog import EncoderSpec  # noqa: E402
from featstore.datasets.base import DatasetIndex  # noqa: E402
from featstore.encoders import load_encoder  # noqa: E402
from featstore.media import decode_audio  # noqa: E402
from featstore.store import FeatureStore, KeyName  # noqa: E402
from tests.media_helpers import write_mp4  # noqa: E402

import _common as common  # noqa: E402
from _common import machine  # noqa: E402

SR = 16000
FILE_SR = 44100
TOL = 1e-4
DATASET = "bench"
FULL = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
SMALL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
             conv_dim=(128,) * 7)                        # --quick: the standard conv strides/kernels, fewer channels


# ---------------------------------------------------------------------------------------------- data

def speech_like(seconds: float, seed: int, sample_rate: int = FILE_SR) -> np.ndarray:
    """Stereo float32 [2, T]: a voiced harmonic source with a wandering pitch, a syllable-rate amplitude
    envelope with pauses, noise bursts (fricatives) and a low noise floor."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = rng.uniform(110, 240) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 6))
                                  + 0.03 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 9))
    syl = rng.uniform(3.0, 5.5)                                   # syllables per second
    env = np.clip(np.sin(2 * np.pi * syl * t + rng.uniform(0, 6)), 0, None) ** 0.7
    k = max(1, int(0.4 * sample_rate))                            # pauses: 0.4 s blocks switched off
    gate = np.repeat(rng.random(n // k + 1) > 0.2, k)[:n]
    fric = rng.standard_normal(n) * (np.sin(2 * np.pi * syl * 0.5 * t) > 0.85)
    x = 0.25 * voiced * env * gate + 0.05 * fric * gate + 0.005 * rng.standard_normal(n)
    x = (0.5 * x / max(np.abs(x).max(), 1e-6)).astype(np.float32)
    return np.stack([x, 0.9 * x + 0.002 * rng.standard_normal(n).astype(np.float32)])


def write_clips(workdir: Path, n: int, seed: int, min_s: float,
                max_s: float) -> tuple[list[str], list[str], np.ndarray]:
    """n clips clipNNNN.mp4 (AAC only) under workdir/clips; reused when the manifest matches."""
    clips = workdir / "clips"
    durations = np.round(np.random.default_rng(seed).uniform(min_s, max_s, n), 3)
    ids = [f"clip{i:04d}" for i in range(n)]
    paths = [str(clips / f"{sid}.mp4") for sid in ids]
    manifest = {"n": n, "seed": seed, "durations": durations.tolist(), "file_sr": FILE_SR, "version": 1}
    mf = workdir / "clips.json"
    if mf.is_file() and json.loads(mf.read_text()) == manifest and all(Path(p).is_file() for p in paths):
        return ids, paths, durations
    shutil.rmtree(clips, ignore_errors=True)
    clips.mkdir(parents=True)
    for i, (p, d) in enumerate(zip(paths, durations)):
        write_mp4(p, audio=speech_like(float(d), seed * 100003 + i), sample_rate=FILE_SR)
    mf.write_text(json.dumps(manifest))
    return ids, paths, durations


# ---------------------------------------------------------------------------------------------- model

def save_model(folder: Path, size: dict[str, int], layout: str) -> None:
    """A random HuBERT with the standard conv front end; 'layer' = large layout, 'group' = base layout."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    if layout == "layer":
        cfg = HubertConfig(**size, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
    else:
        cfg = HubertConfig(**size)                      # HF defaults: group norm, post-LN (hubert-base)
        assert cfg.feat_extract_norm == "group"
    HubertModel(cfg).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=(layout == "layer")).save_pretrained(folder)


def encoder_spec(folder: Path, size: dict[str, int], recipe: str) -> EncoderSpec:
    return EncoderSpec(name="bench-hubert", modality="audio", family="hf-audio", dim=size["hidden_size"],
                       model=str(folder), layers=(-4, -3, -2, -1), layer_reduce="sum",
                       n_layers=size["num_hidden_layers"] + 1, pooling="mean", recipe=recipe,
                       input={"sample_rate": SR}, availability="local")


def flop_model(model: Any) -> Any:
    """FLOPs of one forward of `model` over one row of t samples, as a function of t: exact counts
    (torch.utils.flop_counter: matmuls and convolutions) at 2, 6 and 10 s fitted by a + b t + c t^2 (the conv
    front end and the linear layers grow linearly with t, attention quadratically)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ts = [2 * SR, 6 * SR, 10 * SR]
    counts = []
    for t in ts:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:    # (inference_mode trips weight_norm's hook)
            model(torch.zeros(1, t), output_hidden_states=True)
        counts.append(fc.get_total_flops())
    coef = np.polyfit(ts, counts, 2)
    return lambda t: float(np.polyval(coef, t))


# ---------------------------------------------------------------------------------------------- instrumentation

class Probe:
    """Forward hooks: per model forward (batch, padded samples, real samples, seconds) and conv front end seconds."""

    def __init__(self, model: Any) -> None:
        self.forwards: list[tuple[int, int, int, float]] = []
        self.conv_s = 0.0
        self._t = self._tc = 0.0
        self._shape: tuple[int, int, int] = (0, 0, 0)
        self.handles = [
            model.register_forward_pre_hook(self._pre, with_kwargs=True),
            model.register_forward_hook(self._post),
            model.feature_extractor.register_forward_pre_hook(lambda m, a: self._conv(True)),
            model.feature_extractor.register_forward_hook(lambda m, a, o: self._conv(False)),
        ]

    def _pre(self, module: Any, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs["input_values"]
        mask = kwargs.get("attention_mask")
        b, t = int(x.shape[0]), int(x.shape[1])
        self._shape = (b, b * t, int(mask.sum()) if mask is not None else b * t)
        self._t = time.perf_counter()

    def _post(self, module: Any, args: tuple, out: Any) -> None:
        self.forwards.append((*self._shape, time.perf_counter() - self._t))

    def _conv(self, start: bool) -> None:
        if start:
            self._tc = time.perf_counter()
        else:
            self.conv_s += time.perf_counter() - self._tc

    def reset(self) -> None:
        self.forwards, self.conv_s = [], 0.0

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class TimedEncoder:
    """The real encoder, with each encode() call's start and duration recorded (run_partition sees no difference)."""

    def __init__(self, enc: Any) -> None:
        self.enc, self.spec = enc, enc.spec
        self.calls: list[tuple[float, float, int]] = []

    def encode(self, batch: list[Any]) -> np.ndarray:
        t = time.perf_counter()
        out = self.enc.encode(batch)
        self.calls.append((t, time.perf_counter() - t, len(batch)))
        return out

    def provenance(self) -> dict[str, Any]:
        return self.enc.provenance()


class LoadMonitor(threading.Thread):
    """Samples the 1-minute load average every few seconds while the benchmark runs."""

    def __init__(self, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.every, self.samples, self._stop_event = every, [os.getloadavg()[0]], threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> tuple[float, float, float]:
        self._stop_event.set()
        s = self.samples
        return min(s), float(np.mean(s)), max(s)


def idle_cores(seconds: float = 2.0) -> float:
    """Idle cores of the whole machine over `seconds` (from /proc/stat; includes iowait as idle)."""
    return (os.cpu_count() or 1) * common.cpu_idle(seconds)


def wait_idle(min_idle: float, max_wait: float) -> float:
    """Wait (at most max_wait s) until at least min_idle cores are idle; returns the idle cores last seen."""
    deadline = time.monotonic() + max_wait
    idle = idle_cores()
    while idle < min_idle and time.monotonic() < deadline:
        idle = idle_cores()
    return idle


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Pass:
    name: str
    setting: str
    wall: float
    cpu: float
    decode: float
    encode: float
    rows: np.ndarray                                     # float32 [n, L, D]
    forwards: list[tuple[int, int, int, float]]
    conv_s: float
    stored: np.ndarray | None = None                     # float16 rows read back from the store
    batches: list[int] = field(default_factory=list)     # clips per encode() call


# ---------------------------------------------------------------------------------------------- passes

def baseline_pass(enc: Any, probe: Probe, ids: list[str], paths: list[str], name: str = "baseline") -> Pass:
    """MERTools / MMSA-FET style: one clip at a time, decode then encode, nothing overlapped."""
    probe.reset()
    rows = np.zeros((len(ids), enc.spec.n_stored_layers, enc.spec.dim), np.float32)
    t_dec = t_enc = 0.0
    c0, t0 = cpu_seconds(), time.perf_counter()
    for i, (sid, path) in enumerate(zip(ids, paths)):
        a = time.perf_counter()
        x = decode_audio(path, sid, sample_rate=SR)
        b = time.perf_counter()
        rows[i] = enc.encode([x])[0]
        t_dec += b - a
        t_enc += time.perf_counter() - b
    wall = time.perf_counter() - t0
    return Pass(name, "1 clip/call, no prefetch", wall, cpu_seconds() - c0, t_dec, t_enc, rows,
                list(probe.forwards), probe.conv_s, batches=[1] * len(ids))


def featstore_pass(store: FeatureStore, enc: Any, probe: Probe, index: DatasetIndex, batch_size: int,
                   max_batch_seconds: float, decode_workers: int, tag: str) -> Pass:
    """featstore's build path: run_partition over all rows of `index` (<= 128 rows: one chunk, one partition)."""
    n = len(index)
    key = KeyName(index.name, f"hubert-{tag}", "clean")
    fa = store.create_key(key, layers=enc.spec.n_stored_layers, dim=enc.spec.dim, dtype="float16",
                          spec={"bench": tag}, spec_hash=f"bench-{tag}", rows_per_chunk=128, overwrite=True)
    captured: dict[str, np.ndarray] = {}
    write_rows = fa.write_rows

    def capture(start: int, values: np.ndarray, valid: np.ndarray | None = None, **kw: Any) -> None:
        captured["values"] = np.array(values, dtype=np.float32, copy=True)
        write_rows(start, values, valid, **kw)

    fa.write_rows = capture  # type: ignore[method-assign]
    timed = TimedEncoder(enc)
    opts = BuildOptions(batch_size=batch_size, max_batch_seconds=max_batch_seconds, decode_workers=decode_workers,
                        rows_per_chunk=128)
    probe.reset()
    c0, t0 = cpu_seconds(), time.perf_counter()
    result = run_partition(fa, timed, index, 0, n, opts, None)
    wall = time.perf_counter() - t0
    if result.records:
        raise SystemExit(f"featstore pass {tag}: failures {result.records[:3]}")
    first = timed.calls[0][0] - t0 if timed.calls else wall
    enc_s = sum(dt for _, dt, _ in timed.calls)
    stored = store.open_key(key).read()
    setting = (f"batch {batch_size}, {max_batch_seconds:g} s" if max_batch_seconds
               else f"batch {batch_size}, 0 s: one clip a forward (the CPU default)")
    return Pass("featstore", setting, wall, cpu_seconds() - c0, first, enc_s,
                captured["values"], list(probe.forwards), probe.conv_s, stored, [b for _, _, b in timed.calls])


def combine(parts: list[Pass]) -> Pass:
    """One configuration's passes over consecutive blocks of clips, as one pass over all of them."""
    p = parts[0]
    stored = None if p.stored is None else np.concatenate([q.stored for q in parts])  # type: ignore[misc]
    return Pass(p.name, p.setting, sum(q.wall for q in parts), sum(q.cpu for q in parts),
                sum(q.decode for q in parts), sum(q.encode for q in parts), np.concatenate([q.rows for q in parts]),
                [f for q in parts for f in q.forwards], sum(q.conv_s for q in parts), stored,
                [b for q in parts for b in q.batches])


# ---------------------------------------------------------------------------------------------- report

def rel_err_rows(a: np.ndarray, b: np.ndarray) -> float:
    """max over rows of max|a-b| / max|b| (tests/test_encoders_hf.py's tolerance, applied per clip)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return float((np.abs(a - b).max(axis=1) / np.maximum(np.abs(b).max(axis=1), 1e-12)).max())


def fmt(x: float, nd: int = 2) -> str:
    return f"{x:.{nd}f}"


def group_passes(passes: list[Pass]) -> list[list[Pass]]:
    """Passes grouped by configuration (baseline first, then featstore settings in first-run order)."""
    groups: dict[tuple[str, str], list[Pass]] = {}
    for p in sorted(passes, key=lambda p: p.name != "baseline"):
        groups.setdefault((p.name, p.setting), []).append(p)
    return list(groups.values())


def best(group: list[Pass]) -> Pass:
    return min(group, key=lambda p: p.wall)


def pass_table(model: str, passes: list[Pass], n: int, audio_s: float, threads: int) -> tuple[str, dict[str, Any]]:
    groups = group_passes(passes)
    base = best(groups[0])
    lines = [f"Model: {model}; {n} clips, {audio_s:.0f} s of audio; torch threads {threads}",
             "",
             "| path | settings | runs: wall s | best wall s | clips/s | audio-s/s | vs baseline | decode s | encode s | "
             "other s | CPU use (of %d cores) |" % os.cpu_count(),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        p = best(g)
        other = p.wall - p.decode - p.encode
        dec_label = fmt(p.decode) if p.name == "baseline" else f"{fmt(p.decode)} (before 1st batch)"
        lines.append(f"| {p.name} | {p.setting} | {', '.join(fmt(q.wall, 1) for q in g)} | {fmt(p.wall, 1)} | "
                     f"{fmt(n / p.wall)} | {fmt(audio_s / p.wall, 1)} | **{fmt(base.wall / p.wall)}×** | {dec_label} | "
                     f"{fmt(p.encode, 1)} | {fmt(other)} | {fmt(p.cpu / p.wall)} |")
    fs = [best(g) for g in groups[1:]]
    top = min(fs, key=lambda p: p.wall)
    summary = {"baseline": base, "best": top, "default": fs[0]}
    return "\n".join(lines), summary


def forward_rate(p: Pass, flops: Any) -> float:
    """FLOP/s of a pass's model forwards (padding included: what the CPU executed)."""
    fwd_s = sum(f[3] for f in p.forwards)
    return sum(b * flops(padded / b) for b, padded, _, _ in p.forwards) / fwd_s if fwd_s else 0.0


def profile_table(passes: list[Pass], audio_s: float, flops: Any, peak: float) -> str:
    lines = ["| path | settings | forwards | clips per call (mean / max) | padding (of padded samples) | "
             "conv front end s | transformer+pool s | forward audio-s/s | forward GFLOP/s (of 4096² matmul) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g in group_passes(passes):
        p = best(g)
        fw = p.forwards
        padded = sum(f[1] for f in fw)
        real = sum(f[2] for f in fw)
        fwd_s = sum(f[3] for f in fw)
        pad = 1 - real / padded if padded else 0.0
        lines.append(f"| {p.name} | {p.setting} | {len(fw)} | {np.mean(p.batches):.1f} / {max(p.batches)} | "
                     f"{100 * pad:.1f}% | {fmt(p.conv_s, 1)} | {fmt(p.encode - p.conv_s, 1)} | "
                     f"{fmt(audio_s / fwd_s if fwd_s else 0, 1)} | {forward_rate(p, flops) / 1e9:.0f} "
                     f"({forward_rate(p, flops) / peak:.0%}) |")
    return "\n".join(lines)


def check_table(passes: list[Pass]) -> tuple[str, bool]:
    ref = passes[0].rows                                  # the first baseline pass
    lines = ["| path | settings | float32: max rel. err vs baseline (tol 1e-4) | stored float16 vs baseline→float16 |",
             "|---|---|---|---|"]
    ok = True
    for g in group_passes(passes):
        g = [p for p in g if p is not passes[0]]
        if not g:
            continue
        e32 = max(rel_err_rows(p.rows, ref) for p in g)
        ok &= e32 <= TOL
        ref16 = ref.astype(np.float16).astype(np.float32)
        e16 = "—" if g[0].stored is None else \
            f"{max(rel_err_rows(p.stored.astype(np.float32), ref16) for p in g if p.stored is not None):.1e}"
        lines.append(f"| {g[0].name} | {g[0].setting} | {e32:.1e} {'ok' if e32 <= TOL else 'FAIL'} | {e16} |")
    return "\n".join(lines), ok


# ---------------------------------------------------------------------------------------------- main

def parse_settings(text: str) -> list[tuple[int, float]]:
    out = []
    for part in text.split(","):
        b, s = part.lower().split("x")
        out.append((int(b), float(s)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=None, help="clips (default 100; 20 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="20 clips, a small model (hidden 256, 4 layers, 128-channel conv front end)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "_work" / "extract")
    ap.add_argument("--keep", action="store_true", help="keep the workdir (clips, model, store)")
    ap.add_argument("--recipe", choices=("mertools", "default"), default="mertools",
                    help="hf-audio recipe (mertools: 10 s windows, zero tail counted, as catalog hubert-large)")
    ap.add_argument("--batch-size", type=int, default=None, help="featstore batch size (with --max-batch-seconds: "
                    "a single setting instead of --settings)")
    ap.add_argument("--max-batch-seconds", type=float, default=None)
    ap.add_argument("--settings", default=None,
                    help="featstore settings BATCHxSECONDS, comma-separated; the first should be BuildOptions' "
                         "default on this device (default: 16x0,16x160,4x40; 0 s = one clip a forward, the CPU default)")
    ap.add_argument("--decode-workers", type=int, default=BuildOptions.decode_workers)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads for every pass")
    ap.add_argument("--group-norm", action="store_true",
                    help="also measure a base-layout (group-norm) model: baseline vs the first setting")
    ap.add_argument("--blocks", type=int, default=None,
                    help="split the clips into this many blocks and alternate the configurations block by block "
                         "(each featstore block is its own dataset and partition); totals are summed over blocks "
                         "(default 5; 2 with --quick)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat every configuration this many times (ABBA order); tables report the best run")
    ap.add_argument("--no-bracket", action="store_true",
                    help="with --rounds 1: run the baseline once (default: before and after the featstore passes)")
    ap.add_argument("--wait-idle", type=float, default=0.0,
                    help="before each pass wait until this many cores are idle (e.g. 1.8 of 2; shared machines)")
    ap.add_argument("--max-wait", type=float, default=300.0, help="longest wait for --wait-idle, seconds")
    ap.add_argument("--min-s", type=float, default=2.0)
    ap.add_argument("--max-s", type=float, default=16.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    import transformers

    n = args.n or (20 if args.quick else 100)
    size = SMALL if args.quick else FULL
    settings = parse_settings(args.settings or "16x0,16x160,4x40")
    if args.batch_size is not None or args.max_batch_seconds is not None:
        settings = [(args.batch_size or BuildOptions.batch_size,
                     args.max_batch_seconds if args.max_batch_seconds is not None else BuildOptions().audio_cap("cpu"))]
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    monitor = LoadMonitor()
    monitor.start()
    t_all = time.perf_counter()
    print(f"# extract_throughput: {machine()}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__} "
          f"(threads {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}), transformers "
          f"{transformers.__version__}; load average at start {os.getloadavg()[0]:.2f}")
    try:
        t = time.perf_counter()
        ids, paths, durations = write_clips(work, n, args.seed, args.min_s, args.max_s)
        print(f"# {n} clips ({durations.sum():.0f} s of audio, {args.min_s:g}-{args.max_s:g} s each) "
              f"in {work / 'clips'} "
              f"({time.perf_counter() - t:.1f} s to write or reuse)", flush=True)
        store_path = work / "store.zarr"
        shutil.rmtree(store_path, ignore_errors=True)
        store = FeatureStore(store_path, create=True)
        n_blocks = args.blocks or (2 if args.quick else 5)
        blocks = [list(b) for b in np.array_split(np.arange(n), n_blocks) if len(b)]
        indexes = []
        for k, rows in enumerate(blocks):
            name = DATASET if len(blocks) == 1 else f"{DATASET}{k}"
            indexes.append(DatasetIndex(name=name, root=str(work), ids=[ids[i] for i in rows],
                                        media=[paths[i] for i in rows], text=[None] * len(rows)))
            store.put_dataset(name, indexes[-1].ids)
        layouts = ["layer"] + (["group"] if args.group_norm else [])
        outputs = []
        all_ok = True
        for layout in layouts:
            folder = work / f"model-{layout}"
            shutil.rmtree(folder, ignore_errors=True)
            save_model(folder, size, layout)
            enc = load_encoder(encoder_spec(folder, size, args.recipe))
            assert enc.equal_length_batches == (layout == "group")
            probe = Probe(enc.model)
            # decoded lengths (for the record and the warm-up), not timed
            for sec in (1.0, 10.0):
                enc.encode([np.random.default_rng(0).standard_normal(int(sec * SR)).astype(np.float32) * 0.1])
            audio_s = float(sum(decode_audio(p, s).size for p, s in zip(paths, ids))) / SR
            kind = ("layer-norm conv + stable layer norm (large layout, padded batches)" if layout == "layer"
                    else "group-norm conv (base layout, equal-length batches only)")
            model_name = (f"HuBERT {size['hidden_size']}-d × {size['num_hidden_layers']} layers, random weights, {kind}"
                          f"; recipe {args.recipe}; layers [-4..-1] sum, mean pool")
            passes: list[Pass] = []
            print(f"## {model_name}", flush=True)
            configs: list[tuple[int, float] | None] = [None] + (settings if layout == "layer" else settings[:1])
            step = 0
            for r in range(args.rounds):
                by_cfg: dict[int, list[Pass]] = {}
                for k, (rows, idx) in enumerate(zip(blocks, indexes)):
                    order = list(range(len(configs)))
                    if step % 2:
                        order = order[::-1]                           # ABBA order across blocks and rounds
                    step += 1
                    if args.rounds == 1 and len(blocks) == 1 and not args.no_bracket:
                        order = order + [0]                           # one run: baseline before and after
                    for c in order:
                        cfg = configs[c]
                        idle = wait_idle(args.wait_idle, args.max_wait) if args.wait_idle else None
                        if cfg is None:
                            part = baseline_pass(enc, probe, [ids[i] for i in rows], [paths[i] for i in rows])
                        else:
                            b, s = cfg
                            part = featstore_pass(store, enc, probe, idx, b, s, args.decode_workers,
                                                  f"{layout}-{b}x{s:g}")
                        if c in by_cfg and len(by_cfg[c]) > k:            # the bracketing baseline: its own pass
                            passes.append(part)
                        else:
                            by_cfg.setdefault(c, []).append(part)
                        print(f"#   round {r + 1} block {k + 1}/{len(blocks)}: {part.name} {part.setting}: "
                              f"{part.wall:.1f} s (CPU use {part.cpu / part.wall:.2f}, load {os.getloadavg()[0]:.2f}"
                              f"{'' if idle is None else f', idle cores at start {idle:.2f}'})", flush=True)
                passes.extend(combine(by_cfg[c]) for c in range(len(configs)))
            probe.close()
            table, summary = pass_table(model_name, passes, n, audio_s, torch.get_num_threads())
            checks, ok = check_table(passes)
            all_ok &= ok
            flops = flop_model(enc.model)
            peak = common.matmul_rate(torch.get_num_threads())
            torch.set_num_threads(args.threads)
            outputs.append((table, summary, profile_table(passes, audio_s, flops, peak), checks, passes))
            summary["roofline"] = (forward_rate(summary["baseline"], flops), peak)
            del enc
        load = monitor.stop()
        print()
        for table, summary, prof, checks, passes in outputs:
            print(table)
            base, top, default = summary["baseline"], summary["best"], summary["default"]
            print(f"\nBest featstore setting: {top.setting} → {base.wall / top.wall:.2f}× the baseline "
                  f"(BuildOptions default {default.setting}: {base.wall / default.wall:.2f}×); each figure is the "
                  f"best of its runs (shared machine: the best run is the least disturbed one).")
            print(f"Baseline time split: decode {base.decode:.1f} s ({100 * base.decode / base.wall:.1f}%), "
                  f"encode {base.encode:.1f} s ({100 * base.encode / base.wall:.1f}%), "
                  f"other {base.wall - base.decode - base.encode:.2f} s; decode runs at "
                  f"{audio_s / base.decode:.0f}× real time on one thread.\n")
            rate, peak = summary["roofline"]
            print(f"Roofline: the one-clip loop's forwards execute {rate / 1e9:.0f} GFLOP/s (matmuls and convolutions "
                  f"counted by torch.utils.flop_counter), {rate / peak:.0%} of a 4096² fp32 matmul at the same threads "
                  f"({peak / 1e9:.0f} GFLOP/s): the same arithmetic, batched or not, can run at most "
                  f"{peak / rate:.2f}× faster on this CPU.\n")
            print("Profile (forward hooks on the model and its conv front end):\n")
            print(prof)
            print("\nCorrectness (featstore rows vs the first baseline pass):\n")
            print(checks)
            print()
        lengths = [int(round(d * SR)) for d in durations]
        for b, s in settings:
            batches = make_batches(lengths, b, s * SR)
            padded = sum(len(g) * max(lengths[i] for i in g) for g in batches)
            print(f"# make_batches {b}x{s:g}: {len(batches)} batches, padding {100 * (1 - sum(lengths) / padded):.1f}% "
                  f"of padded samples (all clips in one partition, before recipe windows)")
        print(f"# load average during the run: min {load[0]:.2f}, mean {load[1]:.2f}, max {load[2]:.2f} "
              f"(nproc {os.cpu_count()}); total {time.perf_counter() - t_all:.0f} s")
        print(f"# correctness: {'all featstore rows within 1e-4 of the baseline' if all_ok else 'FAILED'}")
        return 0 if all_ok else 1
    finally:
        monitor.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
