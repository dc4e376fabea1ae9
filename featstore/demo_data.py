"""Make the offline demo corpus: emotion-labelled subtitles, espeak-ng speech and cartoon faces muxed into mp4 clips.

Layout written under `out` (read back by `featstore.datasets.demo`):

    labels.csv          name,emotion,valence,subtitle,split   (UTF-8, one row per clip, canonical order)
    clips/<name>.mp4    H.264 (libx264; mpeg4 if the bundled FFmpeg lacks it) video + AAC 16 kHz mono audio
    meta.json           generator settings and per-clip speech/face parameters (voice, pitch, rate, duration ...)
    README.txt          this layout in words

Determinism: everything is drawn from numpy generators seeded by (seed, sample index), and espeak-ng is
deterministic, so the same seed gives the same labels, subtitles, PCM speech, rendered frames and, on the
same machine and library versions, byte-identical mp4 files (single-threaded x264, FFmpeg's bitexact flags,
no creation time). Across FFmpeg/x264/espeak-ng versions or CPUs the encoded bytes and the decoded audio may
differ slightly; labels.csv is identical everywhere.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import multiprocessing
import os
import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from xml.sax.saxutils import escape

import av
import numpy as np
from PIL import Image, ImageDraw

from featstore.errors import FeatstoreError

EMOTIONS = ("neutral", "angry", "happy", "sad", "worried", "surprise")
SAMPLE_RATE = 16_000
TEST_FRACTION = 0.2
FORMAT_VERSION = 1

# ----------------------------------------------------------------------------------------------- text
_TOPICS = ("the meeting", "the exam results", "the new apartment", "the train schedule", "the package",
           "the interview", "the weekend trip", "the report", "dinner tonight", "the test results",
           "the concert", "the car repair", "the phone bill", "the garden", "the project")
_PEOPLE = ("my sister", "the manager", "our neighbour", "the doctor", "my friend", "the teacher",
           "my brother", "your father", "the landlord", "Anna")
_TIMES = ("tomorrow", "on Monday", "this afternoon", "next week", "at noon", "tonight")

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "neutral": (
        "{Topic} is scheduled for {time}.",
        "I think {person} mentioned {topic} earlier.",
        "We need to check {topic} before {time}.",
        "{Person} said {topic} will be discussed {time}.",
        "Please send me the details about {topic}.",
        "The notes about {topic} are on the table.",
        "Okay, I will call {person} about {topic} {time}.",
    ),
    "angry": (
        "I can't believe {person} ruined {topic} again!",
        "This is {bad}, {topic} was a total disaster!",
        "Stop lying to me about {topic}!",
        "How dare {person} blame me for {topic}!",
        "I am so {angry} about {topic}, it's ridiculous!",
        "Get out, I'm sick of hearing about {topic}!",
        "Don't you dare touch {topic} ever again!",
    ),
    "happy": (
        "I'm so {glad}, {topic} went wonderfully!",
        "We did it, {topic} was a huge success!",
        "Thank you so much, {topic} made my day!",
        "{Person} is coming {time}, I'm really {glad}!",
        "What a {lovely} day, I love {topic}!",
        "Ha, this is the best news about {topic} ever!",
        "I feel fantastic, {topic} turned out {lovely}!",
    ),
    "sad": (
        "I miss {person} so much, nothing feels the same.",
        "{Topic} fell apart and I feel {down}.",
        "I'm sorry, I can't stop crying about {topic}.",
        "Everyone left and I'm alone again.",
        "It hurts to think about {topic} now.",
        "{Person} is gone and the house feels empty.",
        "I lost {topic}, and I feel so {down}.",
    ),
    "worried": (
        "What if {topic} goes wrong {time}?",
        "I'm {nervous} that {person} hasn't called back.",
        "I keep thinking something bad will happen with {topic}.",
        "Are you sure {topic} will be okay? I'm {nervous}.",
        "I couldn't sleep, {topic} has me so {nervous}.",
        "{Person} looked pale, I hope it's nothing serious.",
        "I don't know if we can afford {topic} {time}.",
    ),
    "surprise": (
        "Wait, {person} is here? I had no idea!",
        "Really? {Topic} is already finished?",
        "Oh my goodness, I never expected {topic}!",
        "No way, are you serious about {topic}?",
        "What? When did {person} decide that?",
        "Whoa, {topic} happened {time}? Unbelievable!",
        "You're kidding, {person} did all of {topic}?",
    ),
}
_WORDS = {
    "bad": ("unacceptable", "outrageous", "absurd", "insulting"),
    "angry": ("furious", "angry", "fed up", "mad"),
    "glad": ("happy", "thrilled", "delighted", "excited"),
    "lovely": ("lovely", "wonderful", "great", "brilliant"),
    "down": ("sad", "miserable", "heartbroken", "empty"),
    "nervous": ("worried", "nervous", "anxious", "scared"),
}
# Where an ambiguous sentence's wording comes from: text alone should not give the label away every time.
_CONFUSABLE = {"neutral": ("worried", "sad"), "angry": ("surprise", "sad"), "happy": ("surprise",),
               "sad": ("worried",), "worried": ("sad", "neutral"), "surprise": ("happy", "worried")}
P_NEUTRAL_WORDING = 0.12   # an emotional clip whose subtitle is worded neutrally (voice and face carry it)
P_CONFUSABLE_WORDING = 0.10

# ----------------------------------------------------------------------------------------------- valence
_VALENCE_MEAN = {"neutral": 0.0, "angry": -2.6, "happy": 2.8, "sad": -2.4, "worried": -1.6, "surprise": 0.8}
_VALENCE_SD = 0.9

# ----------------------------------------------------------------------------------------------- speech
_VOICES = ("en-us+m1", "en-us+m3", "en-us+f2", "en-us+f4", "en-gb+m2", "en-gb+f3")
# espeak-ng: -p pitch 0-99, -s words/minute, -a amplitude 0-200, SSML prosody range in % relative
_PROSODY = {  # (pitch, rate, amplitude, range %)
    "neutral": (45, 165, 100, 0),
    "angry": (38, 195, 170, 45),
    "happy": (66, 185, 130, 70),
    "sad": (28, 135, 65, -60),
    "worried": (56, 178, 85, -25),
    "surprise": (76, 168, 145, 100),
}
_JITTER = (6, 12, 12, 15)

# ----------------------------------------------------------------------------------------------- face
# (mouth curve, brow tilt (+ = inner ends down, angry), brow raise, eye openness, mouth width, mouth open)
_FACE = {
    "neutral": (0.0, 0.0, 0.0, 1.0, 1.0, 0.0),
    "angry": (-0.45, 1.0, -0.2, 0.65, 0.9, 0.0),
    "happy": (1.0, 0.0, 0.25, 0.8, 1.25, 0.15),
    "sad": (-0.9, -0.9, 0.1, 0.7, 0.9, 0.0),
    "worried": (-0.35, -0.8, 0.35, 1.15, 0.85, 0.05),
    "surprise": (0.0, 0.0, 1.0, 1.45, 0.65, 0.85),
}
_SKIN = ((241, 194, 167), (224, 172, 138), (198, 134, 98), (160, 105, 70), (255, 214, 186), (141, 94, 62))
_HAIR = ((30, 22, 18), (70, 45, 25), (120, 85, 40), (200, 170, 100), (60, 60, 60), (140, 50, 30))


@dataclass(frozen=True)
class _Sample:
    index: int
    name: str
    emotion: str
    valence: float
    subtitle: str
    split: str
    voice: str
    pitch: int
    rate: int
    amplitude: int
    range_pct: int
    face_seed: int


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FeatstoreError("espeak-ng not found on PATH: the demo corpus needs it for speech; "
                             "install it with `apt-get install espeak-ng`")
    return exe


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, *key]))


def _subtitle(rng: np.random.Generator, emotion: str) -> str:
    u = rng.random()
    source = emotion
    if emotion != "neutral" and u < P_NEUTRAL_WORDING:
        source = "neutral"
    elif u < P_NEUTRAL_WORDING + P_CONFUSABLE_WORDING:
        options = _CONFUSABLE[emotion]
        source = options[int(rng.integers(len(options)))]
    templates = _TEMPLATES[source]
    template = templates[int(rng.integers(len(templates)))]
    topic = _TOPICS[int(rng.integers(len(_TOPICS)))]
    person = _PEOPLE[int(rng.integers(len(_PEOPLE)))]
    slots = {"topic": topic, "Topic": topic[0].upper() + topic[1:], "person": person,
             "Person": person[0].upper() + person[1:], "time": _TIMES[int(rng.integers(len(_TIMES)))]}
    for key, words in _WORDS.items():
        slots[key] = words[int(rng.integers(len(words)))]
    return template.format(**slots)


def _plan(n: int, seed: int) -> list[_Sample]:
    """Labels, subtitles, splits and speech parameters for every sample (cheap, no media)."""
    rng = _rng(seed, 0)
    emotions = [EMOTIONS[i % len(EMOTIONS)] for i in range(n)]
    rng.shuffle(emotions)
    # stratified-ish split: round-robin over per-emotion shuffled queues, the first ~20% go to test1
    queues = {e: [i for i, x in enumerate(emotions) if x == e] for e in EMOTIONS}
    for q in queues.values():
        rng.shuffle(q)
    order_e = list(EMOTIONS)
    rng.shuffle(order_e)
    interleaved: list[int] = []
    while any(queues.values()):
        for e in order_e:
            if queues[e]:
                interleaved.append(queues[e].pop())
    n_test = int(round(TEST_FRACTION * n)) if n >= 2 else 0
    test = set(interleaved[:n_test])

    samples = []
    for i, emotion in enumerate(emotions):
        r_text, r_voice, r_face = (_rng(seed, 1, i, k) for k in range(3))
        valence = float(np.clip(_VALENCE_MEAN[emotion] + _VALENCE_SD * r_text.normal(), -5.0, 5.0))
        subtitle = _subtitle(r_text, emotion)
        base = _PROSODY[emotion]
        jit = [int(round(j * r_voice.uniform(-1, 1))) for j in _JITTER]
        samples.append(_Sample(
            index=i, name=f"demo_{i:05d}", emotion=emotion, valence=round(valence, 2), subtitle=subtitle,
            split="test1" if i in test else "train", voice=_VOICES[int(r_voice.integers(len(_VOICES)))],
            pitch=int(np.clip(base[0] + jit[0], 0, 99)), rate=int(np.clip(base[1] + jit[1], 80, 400)),
            amplitude=int(np.clip(base[2] + jit[2], 10, 200)), range_pct=base[3] + jit[3],
            face_seed=int(r_face.integers(2**31)),
        ))
    return samples


def _speak(exe: str, s: _Sample) -> np.ndarray:
    """espeak-ng speech for one sample as float32 mono PCM at 16 kHz."""
    ssml = f'<speak><prosody range="{s.range_pct:+d}%">{escape(s.subtitle)}</prosody></speak>'
    cmd = [exe, "-v", s.voice, "-p", str(s.pitch), "-s", str(s.rate), "-a", str(s.amplitude), "-z", "-m",
           "--stdout", ssml]
    proc = subprocess.run(cmd, capture_output=True, timeout=60)
    if proc.returncode != 0 or len(proc.stdout) < 44:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        why = msg[0] if msg else "no output"
        raise FeatstoreError(f"espeak-ng failed for {s.name} (exit {proc.returncode}): {why}")
    wav = proc.stdout
    # --stdout writes a streaming header (sizes 0x7fff....): read the format, then everything after 'data'
    rate = int.from_bytes(wav[24:28], "little")
    pos = wav.find(b"data", 12)
    pcm = np.frombuffer(wav[pos + 8:len(wav) - (len(wav) - pos - 8) % 2], dtype="<i2")
    frame = av.AudioFrame.from_ndarray(pcm[None, :].copy(), format="s16", layout="mono")
    frame.sample_rate = rate
    frame.pts = 0
    frame.time_base = Fraction(1, rate)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    audio = np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
    if audio.size < SAMPLE_RATE // 10:
        raise FeatstoreError(f"espeak-ng produced no speech for {s.name}")
    return audio


# ----------------------------------------------------------------------------------------------- rendering
@functools.lru_cache(maxsize=8)
def _circle(k: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], 1)


def _ellipse(cx: float, cy: float, rx: float, ry: float, k: int = 28) -> np.ndarray:
    return _circle(k) * (rx, ry) + (cx, cy)


class _Face:
    """One sample's look (skin, hair, background, proportions) and its per-frame drawing."""

    SS = 2  # supersampling factor for antialiasing

    def __init__(self, s: _Sample, size: int) -> None:
        rng = np.random.default_rng(s.face_seed)
        self.size, S = size, size * self.SS
        self.S = S
        skin = np.array(_SKIN[int(rng.integers(len(_SKIN)))], float) + rng.uniform(-10, 10, 3)
        self.skin = tuple(int(v) for v in np.clip(skin, 0, 255))
        self.shadow = tuple(int(v * 0.78) for v in self.skin)
        self.socket = tuple(int(v * 0.6) for v in self.skin)
        self.light = tuple(int(v + 0.18 * (255 - v)) for v in self.skin)
        self.hair = _HAIR[int(rng.integers(len(_HAIR)))]
        self.shirt = tuple(int(v) for v in rng.integers(30, 230, 3))
        self.scale = rng.uniform(0.9, 1.04)
        self.eye_dx = rng.uniform(0.095, 0.115)
        self.phase = rng.uniform(0, 2 * np.pi, 3)
        self.freq = rng.uniform(0.25, 0.6, 3)
        # expression: emotion prototype scaled by a per-sample intensity (sometimes faint -> ambiguous)
        intensity = rng.uniform(0.2, 0.45) if rng.random() < 0.12 else rng.uniform(0.65, 1.05)
        proto, neutral = np.array(_FACE[s.emotion]), np.array(_FACE["neutral"])
        self.expr = neutral + intensity * (proto - neutral) + rng.normal(0, 0.05, proto.size)
        self.blink_rate = rng.uniform(0.15, 0.45)  # blinks per second
        self.blink_rng = np.random.default_rng(s.face_seed + 1)
        self.background = self._background(rng)

    def _background(self, rng: np.random.Generator) -> Image.Image:
        S = self.S
        top, bottom = rng.integers(20, 235, 3), rng.integers(20, 235, 3)
        t = np.linspace(0, 1, S)[:, None, None]
        arr = (top[None, None, :] * (1 - t) + bottom[None, None, :] * t) * np.ones((1, S, 1))
        img = Image.fromarray(arr.astype(np.uint8), "RGB")
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 6))):
            c = tuple(int(v) for v in rng.integers(0, 255, 3))
            x, y, r = rng.uniform(0, S), rng.uniform(0, S), rng.uniform(0.05, 0.25) * S
            if rng.random() < 0.5:
                d.ellipse([x - r, y - r, x + r, y + r], fill=c)
            else:
                d.rectangle([x - r, y - r * 0.6, x + r, y + r * 0.6], fill=c)
        return img

    def frames(self, audio: np.ndarray, fps: int) -> np.ndarray:
        n = max(1, math.ceil(len(audio) * fps / SAMPLE_RATE))
        hop = SAMPLE_RATE / fps
        rms = np.array([np.sqrt(np.mean(audio[int(i * hop):int((i + 1) * hop)] ** 2) + 1e-12) for i in range(n)])
        energy = np.clip(rms / (np.percentile(rms, 90) + 1e-6), 0, 1.2)
        energy = np.convolve(energy, [0.25, 0.5, 0.25], mode="same")
        blinks = np.zeros(n, bool)
        t = self.blink_rng.exponential(1 / self.blink_rate)
        while t * fps < n:
            blinks[int(t * fps)] = True
            t += 0.4 + self.blink_rng.exponential(1 / self.blink_rate)
        out = np.empty((n, self.size, self.size, 3), np.uint8)
        for i in range(n):
            out[i] = self._draw(i / fps, float(energy[i]), bool(blinks[i]))
        return out

    def _draw(self, t: float, energy: float, blink: bool) -> np.ndarray:
        S, k = self.S, self.scale
        curve, tilt, raise_, eye_open, width, open_ = self.expr
        dx = 0.015 * S * math.sin(2 * np.pi * self.freq[0] * t + self.phase[0])
        dy = 0.010 * S * math.sin(2 * np.pi * self.freq[1] * t + self.phase[1])
        ang = math.radians(3.0 * math.sin(2 * np.pi * self.freq[2] * t + self.phase[2]))
        cx, cy = 0.5 * S + dx, 0.5 * S + dy
        ca, sa = math.cos(ang), math.sin(ang)

        def P(pts: np.ndarray) -> list[tuple[float, float]]:  # face-relative units -> rotated pixel coords
            x, y = pts[:, 0] * S * k, pts[:, 1] * S * k
            return list(zip((cx + ca * x - sa * y).tolist(), (cy + sa * x + ca * y).tolist()))

        img = self.background.copy()
        d = ImageDraw.Draw(img)
        # shoulders and neck
        d.ellipse([cx - 0.42 * S, cy + 0.36 * S * k, cx + 0.42 * S, cy + 0.9 * S], fill=self.shirt)
        d.polygon(P(np.array([[-0.09, 0.2], [0.09, 0.2], [0.1, 0.45], [-0.1, 0.45]])), fill=self.shadow)
        # hair behind, head, ears
        d.polygon(P(_ellipse(0, -0.05, 0.3, 0.36)), fill=self.hair)
        for sx in (-1, 1):
            d.polygon(P(_ellipse(sx * 0.265, 0.0, 0.04, 0.07, 16)), fill=self.shadow)
        d.polygon(P(_ellipse(0, 0.0, 0.265, 0.34)), fill=self.skin)
        d.polygon(P(np.concatenate([_ellipse(0, -0.19, 0.27, 0.16, 32)[16:], [[0.27, -0.2], [-0.27, -0.2]]])),
                  fill=self.hair)  # fringe
        # soft light on the cheeks and nose bridge
        d.polygon(P(_ellipse(0, -0.04, 0.03, 0.09, 16)), fill=self.light)
        # eyes
        ey, edx = -0.07, self.eye_dx
        ry = 0.001 if blink else 0.028 * max(0.15, eye_open)
        for sx in (-1, 1):  # eye sockets are darker than cheeks and the nose bridge (what face detectors key on)
            d.polygon(P(_ellipse(sx * edx, ey - 0.01, 0.075, 0.05)), fill=self.socket)
        for sx in (-1, 1):
            d.polygon(P(_ellipse(sx * edx, ey, 0.045, ry + 0.004)), fill=(235, 232, 228), outline=(40, 30, 30))
            if not blink:
                d.polygon(P(_ellipse(sx * edx, ey, 0.03, min(0.03, ry + 0.002))), fill=(25, 18, 15))
        # brows: inner ends drop when tilt > 0 (angry), rise when tilt < 0 (sad, worried)
        by = ey - 0.065 - 0.03 * raise_
        for sx in (-1, 1):
            inner = np.array([sx * (edx - 0.045), by + 0.025 * tilt])
            outer = np.array([sx * (edx + 0.055), by - 0.006 * tilt])
            d.line(P(np.stack([inner, outer])), fill=self.hair if sum(self.hair) < 250 else (50, 35, 25),
                   width=max(2, int(0.022 * S * k)))
        # nose shadow
        d.polygon(P(np.array([[0.0, -0.03], [-0.035, 0.07], [0.0, 0.085], [0.035, 0.07]])), fill=self.shadow)
        # mouth: curve > 0 smiles (centre below corners); opening grows with speech energy
        my, w = 0.17, 0.085 * width
        xs = np.linspace(-1, 1, 15)
        bend = 0.045 * curve * (1 - xs ** 2)
        upper = np.stack([xs * w, my + bend - 0.012 * open_ * (1 - xs ** 2)], 1)
        gap = (0.01 + 0.05 * open_ + 0.035 * min(energy, 1.0)) * np.sqrt(1 - xs ** 2)
        lower = np.stack([xs * w, my + bend + gap], 1)
        d.polygon(P(np.concatenate([upper, lower[::-1]])), fill=(110, 30, 35), outline=(150, 60, 60))
        return np.asarray(img.reduce(self.SS))


# ----------------------------------------------------------------------------------------------- muxing
def video_codec() -> str:
    """The video encoder used for the clips: libx264 when PyAV's FFmpeg has it, else mpeg4."""
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - codec not built into this FFmpeg
            continue
    raise FeatstoreError("PyAV's FFmpeg has neither a libx264 nor an mpeg4 encoder; cannot write demo clips")


def _rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] uint8 RGB -> [T, H*3/2, W] uint8 planar YUV 4:2:0, BT.601 limited range (FFmpeg's default).

    Done here rather than by swscale so that the encoder's input does not depend on swscale's version or SIMD path.
    """
    t, h, w, _ = frames.shape
    r, g, b = (frames[..., c].astype(np.float32) for c in range(3))
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    r, g, b = ((p[:, 0::2, 0::2] + p[:, 1::2, 0::2] + p[:, 0::2, 1::2] + p[:, 1::2, 1::2]) * 0.25 for p in (r, g, b))
    u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    out = np.concatenate([y.reshape(t, -1), u.reshape(t, -1), v.reshape(t, -1)], axis=1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(t, h * 3 // 2, w)


def _mux(path: Path, frames: np.ndarray, audio: np.ndarray, fps: int, vcodec: str) -> None:
    """Encode frames + 16 kHz audio into one mp4 (written to a temporary name, then renamed)."""
    tmp = path.with_name(path.stem + ".tmp.mp4")
    with av.open(str(tmp), "w", format="mp4", container_options={"fflags": "+bitexact"}) as c:
        v = c.add_stream(vcodec, rate=fps)
        v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        v.codec_context.thread_count = 1          # x264's output depends on its thread count: fix it
        if vcodec == "libx264":
            # mbtree=0: with macroblock-tree rate control x264 (core 165) gave run-to-run differences in our tests
            v.codec_context.options = {"crf": "23", "preset": "veryfast", "x264-params": "mbtree=0",
                                       "flags": "+bitexact"}
        else:
            v.bit_rate = 400_000
            v.codec_context.options = {"flags": "+bitexact"}
        a = c.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        a.bit_rate = 48_000
        a.codec_context.options = {"aac_coder": "fast", "flags": "+bitexact"}  # 'fast' is ~8x quicker
        for i, yuv in enumerate(_rgb_to_yuv420p(frames)):
            f = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            f.pts = i
            f.time_base = Fraction(1, fps)
            c.mux(v.encode(f))
        c.mux(v.encode(None))
        af = av.AudioFrame.from_ndarray(audio[None, :].astype(np.float32), format="flt", layout="mono")
        af.sample_rate, af.pts, af.time_base = SAMPLE_RATE, 0, Fraction(1, SAMPLE_RATE)
        c.mux(a.encode(af))
        c.mux(a.encode(None))
    os.replace(tmp, path)


def _make_clip(exe: str, s: _Sample, clips: Path, size: int, fps: int, vcodec: str) -> dict:
    audio = _speak(exe, s)
    frames = _Face(s, size).frames(audio, fps)
    _mux(clips / f"{s.name}.mp4", frames, audio, fps, vcodec)
    return {"name": s.name, "voice": s.voice, "pitch": s.pitch, "rate": s.rate, "amplitude": s.amplitude,
            "range_pct": s.range_pct, "duration_s": round(len(audio) / SAMPLE_RATE, 4),
            "n_samples": int(len(audio)), "n_frames": int(len(frames))}


_README = """\
featstore demo corpus (synthetic, offline)
==========================================
Made by featstore.demo_data.generate(n={n}, seed={seed}); same seed -> same labels, subtitles and speech.

labels.csv        one row per clip, in canonical order; UTF-8, comma-separated, header:
                    name      clip id (clips/<name>.mp4)
                    emotion   one of: {emotions}
                    valence   float in [-5, 5] (negative = unpleasant), MER2023 style
                    subtitle  the English sentence spoken in the clip
                    split     train (~80%) or test1 (~20%), stratified by emotion
clips/<name>.mp4  {size}x{size} video at {fps} fps ({vcodec}) of a cartoon face whose expression follows the
                  emotion (mouth moves with the speech), and AAC audio at 16 kHz mono: espeak-ng speaking the
                  subtitle with per-emotion prosody (pitch, rate, loudness, pitch range) plus per-clip jitter.
meta.json         generator settings and per-clip parameters (voice, pitch, rate, amplitude, duration).

Some subtitles are worded neutrally or like a neighbouring emotion, and some faces are faint, so no single
modality gives the label away every time. featstore reads this layout with its `demo` dataset adapter.
On the same machine and library versions the same seed also gives byte-identical mp4 files.
"""


def generate(out: Path, n: int = 120, seed: int = 0, *, size: int = 224, fps: int = 12,
             workers: int | None = None) -> Path:
    """Write a demo corpus of `n` clips under `out` (created if needed) and return `out`.

    Existing clips named demo_*.mp4 under out/clips that are not part of the new corpus are removed;
    labels.csv is written last, so an interrupted run leaves no labels.csv.
    """
    if n < 1:
        raise FeatstoreError(f"demo corpus: n must be at least 1, got {n}")
    if size < 64 or size % 2:
        raise FeatstoreError(f"demo corpus: size must be an even number >= 64, got {size}")
    if not 1 <= fps <= 60:
        raise FeatstoreError(f"demo corpus: fps must be in 1..60, got {fps}")
    exe = _espeak()
    vcodec = video_codec()
    out = Path(out)
    clips = out / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    (out / "labels.csv").unlink(missing_ok=True)
    samples = _plan(n, seed)
    keep = {f"{s.name}.mp4" for s in samples}
    for stale in clips.glob("demo_*.mp4"):
        if stale.name not in keep:
            stale.unlink()

    if workers is None:  # worker processes pay ~0.5 s to start: only worth it for larger corpora
        workers = min(4, os.cpu_count() or 1) if n >= 24 else 1
    job = functools.partial(_make_clip, exe, clips=clips, size=size, fps=fps, vcodec=vcodec)
    if workers > 1:  # processes, not threads: rendering and encoding hold the GIL
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            meta = list(pool.map(job, samples, chunksize=max(1, n // (8 * workers))))
    else:
        meta = [job(s) for s in samples]

    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.split("Data at")[0].strip()
    info = {"generator": "featstore.demo_data", "format_version": FORMAT_VERSION, "n": n, "seed": seed,
            "emotions": list(EMOTIONS), "size": size, "fps": fps, "sample_rate": SAMPLE_RATE,
            "video_codec": vcodec, "audio_codec": "aac", "espeak": version, "pyav": av.__version__,
            "clips": meta}
    (out / "meta.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    (out / "README.txt").write_text(_README.format(n=n, seed=seed, emotions=", ".join(EMOTIONS), size=size,
                                                   fps=fps, vcodec=vcodec), encoding="utf-8")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "emotion", "valence", "subtitle", "split"])
    for s in samples:
        w.writerow([s.name, s.emotion, f"{s.valence:.2f}", s.subtitle, s.split])
    tmp = out / "labels.csv.tmp"
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, out / "labels.csv")
    return out
