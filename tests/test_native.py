"""trainer.native: the data layers' weight gradient fused with Adam and their forward product (C, compiled on first
use) against torch's matmuls + torch.optim.Adam, inside the trainer, and the fallbacks (no compiler, a failed build,
switched off)."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import native, native_trunk
from trainer.models import build_model
from trainer.optim import BatchedAdam

from test_trainer_models import inputs, spec

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler: trainer.native falls back")


def reference_step(x, g, w, m, v, lr, wd, steps, active, betas=(0.9, 0.999), eps=1e-8) -> None:
    """torch: dW = x^T g by matmul, then torch.optim.Adam's fused step, model by model."""
    for k in range(w.shape[0]):
        if not active[k]:
            continue
        xk = x[k] if x.dim() == 3 else x
        dw = xk.t() @ g[k]
        torch._fused_adam_([w[k]], [dw], [m[k]], [v[k]], [], [torch.tensor(float(steps[k] + 1))], lr=lr[k],
                           beta1=betas[0], beta2=betas[1], weight_decay=wd[k], eps=eps, amsgrad=False,
                           maximize=False)


@pytest.mark.parametrize("K,B,D,H,shared", [(3, 32, 512, 128, False),     # the vector tiles only
                                            (3, 37, 131, 72, False),      # row and column tails
                                            (2, 32, 40, 112, False),      # 64 + 3 x 16 columns
                                            (2, 130, 70, 64, False),      # a batch past the 64-row scratch
                                            (3, 16, 96, 128, True)])      # rows shared by every model
def test_fused_step_equals_matmul_then_torch_adam(K: int, B: int, D: int, H: int, shared: bool) -> None:
    gen = torch.Generator().manual_seed(K * 1000 + D)
    x = torch.randn(B, D, generator=gen) if shared else torch.randn(K, B, D, generator=gen)
    w0 = torch.randn(K, D, H, generator=gen) * 0.05
    lr, wd = [1e-3, 3e-4, 1e-2][:K], [1e-5, 0.0, 1e-3][:K]
    active = [True, False, True][:K]
    ours, ref = [w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)], [w0.clone(), torch.zeros_like(w0),
                                                                           torch.zeros_like(w0)]
    steps = [0, 5, 2][:K]
    for it in range(3):             # three steps: the moments and the bias corrections take part
        g = torch.randn(K, B, H, generator=gen) * 1e-2
        xin = x.expand(K, B, D) if shared and it % 2 else x
        native.wgrad_adam_(xin, g, *ours, lr, wd, steps, active, (0.9, 0.999), 1e-8)
        reference_step(x, g, *ref, lr, wd, steps, active)
        steps = [s + a for s, a in zip(steps, active)]
    update = (ref[0] - w0).abs().max()
    assert float(update) > 1e-3
    assert float((ours[0] - ref[0]).abs().max()) < 1e-5 * float(update) + 1e-7
    for a, b in zip(ours[1:], ref[1:]):      # the moments, to float32 rounding of the gradient sums
        assert float((a - b).abs().max()) < 1e-5 * float(b.abs().max())
    idle = [k for k in range(K) if not active[k]]
    assert all(torch.equal(ours[0][k], w0[k]) and not ours[1][k].any() for k in idle)


@pytest.mark.parametrize("K,B,D,H,shared,scaled,bias", [(3, 32, 700, 128, False, True, True),   # vector tiles
                                                         (3, 37, 131, 80, False, True, True),   # row tails, 64 + 16
                                                         (2, 6, 40, 48, False, False, True),    # 16-wide tiles only
                                                         (5, 130, 600, 64, False, True, False), # rows split in tasks
                                                         (3, 16, 96, 128, True, True, True)])   # rows shared by all
def test_forward_equals_bmm(K: int, B: int, D: int, H: int, shared: bool, scaled: bool, bias: bool) -> None:
    gen = torch.Generator().manual_seed(K * 100 + D)
    x = torch.randn(B, D, generator=gen) if shared else torch.randn(K, B, D, generator=gen)
    w = torch.randn(K, D, H, generator=gen) * 0.05
    b = torch.randn(K, 1, H, generator=gen) if bias else None
    scale = torch.rand(K, 1, 1, generator=gen) + 1.0 if scaled else None
    ref = torch.bmm(x.expand(K, B, D), w)
    ref = ref * scale if scaled else ref
    ref = ref + b if bias else ref
    for xin in ((x, x.expand(K, B, D)) if shared else (x,)):
        out = native.data_forward(xin, w, b, scale)
        assert out.shape == (K, B, H)
        assert float((out - ref).abs().max()) < 2e-6 * float(ref.abs().max())
    buf = torch.full((K, B, H), float("nan"))
    assert native.data_forward(x, w, b, scale, out=buf) is buf and torch.equal(buf, native.data_forward(x, w, b, scale))


def test_result_does_not_depend_on_the_thread_count() -> None:
    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(3, 32, 300, generator=gen), torch.randn(3, 32, 128, generator=gen)
    w0 = torch.randn(3, 300, 128, generator=gen)
    b = torch.randn(3, 1, 128, generator=gen)
    outs, fwd = [], []
    before = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            st = [w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)]
            native.wgrad_adam_(x, g, *st, [1e-3] * 3, [1e-5] * 3, [0] * 3, [True] * 3, (0.9, 0.999), 1e-8)
            outs.append(st[0])
            fwd.append(native.data_forward(torch.randn(3, 512, 3000, generator=torch.Generator().manual_seed(1)),
                                           torch.randn(3, 3000, 128, generator=torch.Generator().manual_seed(2)), b))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1]) and torch.equal(fwd[0], fwd[1])


def test_trainer_steps_natively_and_matches_the_torch_path() -> None:
    """A batched attention model trained with defer_data_grads (the trainer's setting) ends where the torch path
    ends, to float32 rounding; the data layers' gradients went through the kernel, not through .grad."""
    batches = [inputs(3, 32) for _ in range(4)]
    runs = []
    for defer in (False, True):
        m = build_model("attention", spec(K=3, dropout=0.5)).train()
        m.defer_data_grads = defer
        opt = BatchedAdam(list(m.parameters()), [1e-3, 3e-3, 1e-3], [1e-5, 0.0, 1e-4])
        for x in batches:
            out = m(x)
            opt.zero_grad()
            (out["emotion"].square().mean() + out["valence"].square().mean()).backward()
            if defer:
                assert all(getattr(m, n)._deferred_grad is not None for n in m.data_weights)
                assert all(getattr(m, n).grad is None for n in m.data_weights)   # no dW buffer at all
            else:
                assert all(getattr(m, n).grad is not None for n in m.data_weights)   # dW written in place
            opt.step()
            assert all(getattr(getattr(m, n), "_deferred_grad", None) is None for n in m.data_weights)
        runs.append(dict(m.named_parameters()))
    for name, p in runs[0].items():
        assert torch.allclose(p, runs[1][name], rtol=0, atol=2e-6), name
    start = dict(build_model("attention", spec(K=3, dropout=0.5)).named_parameters())
    assert min(float((runs[1][n] - start[n]).detach().abs().max()) for n in start) > 1e-4   # every layer trained


def test_fallbacks_say_why(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    w = torch.zeros(2, 8, 16)
    try:
        monkeypatch.setenv("FEATSTORE_NATIVE", "0")
        native.reset()
        assert not native.usable(w) and native.status() == "torch (disabled by FEATSTORE_NATIVE=0)"
        monkeypatch.delenv("FEATSTORE_NATIVE")
        monkeypatch.setattr(native, "_torch_gomp", lambda: False)     # torch on another OpenMP runtime
        native.reset()
        assert not native.usable(w) and "does not run on GNU OpenMP" in native.status()
        monkeypatch.undo()
        monkeypatch.setenv("CC", "no-such-compiler-here")
        native.reset()
        assert not native.usable(w) and "no C compiler ('no-such-compiler-here' not found" in native.status()
        monkeypatch.setenv("CC", "false")                      # a compiler that fails
        monkeypatch.setenv("FEATSTORE_KERNEL_CACHE", str(tmp_path / "cache"))
        native.reset()
        assert not native.usable(w) and native.status() == ("torch (could not build the kernels in trainer/kernels: "
                                                            "false failed (exit status 1))")
        with pytest.raises(RuntimeError, match="not available"):
            native.wgrad_adam_(torch.zeros(2, 4, 8), torch.zeros(2, 4, 16), w, w.clone(), w.clone(), [1e-3] * 2,
                               [0.0] * 2, [0, 0], [True, True], (0.9, 0.999), 1e-8)
        with pytest.raises(RuntimeError, match="not available"):
            native.data_forward(torch.zeros(2, 4, 8), w, None)
        monkeypatch.delenv("CC")
        native.reset()                                          # builds into the fresh cache
        assert native.status() == "native" and len(list((tmp_path / "cache").glob("kernels-*.so"))) == 1
        assert native.usable(w) and not native.usable(w.double()) and not native.usable(w.transpose(1, 2))
        assert not native.usable(torch.zeros(2, 8, 24))        # a width the vector tiles do not cover
    finally:
        monkeypatch.undo()
        native.reset()


def test_run_experiment_with_and_without_the_kernel(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The trainer defers its data layers' gradients to the kernel; switched off, it trains the same models."""
    from trainer.data import load_features
    from trainer.fit import run_experiment
    from trainer.protocol import Protocol
    from trainer.synthetic import make_store

    make_store(tmp_path / "s.zarr", n_train=160, n_test=40, dims={"a": ("audio", 20), "t": ("text", 140)},
               signal=1.0, seed=2)
    fs = load_features(tmp_path / "s.zarr", "synth", audio=["a"], text=["t"])
    p = Protocol(epochs=2, batch_size=16, hidden=64, lr=1e-3)
    calls, forwards = [], []
    real, real_forward = native.wgrad_adam_, native.data_forward
    monkeypatch.setattr(native, "wgrad_adam_", lambda *a, **k: (calls.append((a[2].shape, k.get("x_next") is not None)),
                                                                 real(*a, **k))[1])
    monkeypatch.setattr(native, "data_forward", lambda *a, **k: (forwards.append(a[1].shape), real_forward(*a, **k))[1])
    trunks = []
    real_trunk = native_trunk.AttentionTrunk.apply
    monkeypatch.setattr(native_trunk.AttentionTrunk, "apply", lambda *a: (trunks.append(a[0]), real_trunk(*a))[1])
    with_kernel = run_experiment(fs, "attention", p)
    assert calls and {tuple(s) for s, _ in calls} == {(5, 20, 64), (5, 140, 64)}
    assert {tuple(s) for s in forwards} == {(5, 20, 64), (5, 140, 64)}
    # one product a data layer a step: the first step's of an epoch from data_forward, the others made by the
    # previous step's Adam pass (prefetch)
    ahead = sum(nxt for _, nxt in calls)
    assert len(forwards) == 2 * p.epochs and ahead == len(calls) - len(forwards)      # two layers, one group
    assert len(trunks) == len(calls) // 2 and {d[:4] for d in trunks} == {(5, 16, 2, 64)}   # one a step
    try:
        monkeypatch.setenv("FEATSTORE_NATIVE", "0")
        native.reset()
        counts = len(calls), len(forwards), len(trunks)
        without = run_experiment(fs, "attention", p)
        assert (len(calls), len(forwards), len(trunks)) == counts
    finally:
        monkeypatch.delenv("FEATSTORE_NATIVE")
        native.reset()
    for key, out in with_kernel.test_outputs.items():
        assert np.abs(out.emotion - without.test_outputs[key].emotion).max() < 1e-4


def test_a_second_backward_before_the_step_is_refused() -> None:
    m = build_model("attention", spec(K=2, dropout=0.0)).train()
    m.defer_data_grads = True
    for attempt in range(2):
        out = m(inputs(2, 8))
        loss = out["emotion"].square().mean()
        if attempt:
            with pytest.raises(RuntimeError, match="ran twice in one training step"):
                loss.backward()
        else:
            loss.backward()


def test_an_unavailable_kernel_is_said_once_per_run(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from trainer.data import load_features
    from trainer.fit import run_experiment
    from trainer.protocol import Protocol
    from trainer.synthetic import make_store

    make_store(tmp_path / "s.zarr", n_train=80, n_test=20, dims={"a": ("audio", 12)}, signal=1.0, seed=3)
    fs = load_features(tmp_path / "s.zarr", "synth", audio=["a"])
    p = Protocol(epochs=1, batch_size=16, hidden=16)
    try:
        monkeypatch.setenv("CC", "no-such-compiler-here")
        native.reset()
        said = [w for w in run_experiment(fs, "mlp", p).warnings if "trainer.native" in w]
        assert said == ["the data layers and the attention trunk ran on the PyTorch path, about 1.3x slower: "
                        "trainer.native's kernels are unavailable, no C compiler ('no-such-compiler-here' not found; "
                        "set CC)"]
        monkeypatch.setenv("FEATSTORE_NATIVE", "0")            # switched off on purpose: nothing to say
        native.reset()
        assert not [w for w in run_experiment(fs, "mlp", p).warnings if "trainer.native" in w]
    finally:
        monkeypatch.undo()
        native.reset()
    assert not [w for w in run_experiment(fs, "mlp", p).warnings if "trainer.native" in w]


def test_mismatched_tensors_are_refused_with_their_shapes() -> None:
    w = torch.zeros(2, 8, 16)
    args = ([1e-3] * 2, [0.0] * 2, [0, 0], [True, True], (0.9, 0.999), 1e-8)
    with pytest.raises(ValueError, match=r"do not fit w \(2, 8, 16\)"):
        native.wgrad_adam_(torch.zeros(2, 4, 8), torch.zeros(2, 5, 16), w, w.clone(), w.clone(), *args)
    with pytest.raises(ValueError, match=r"float32 rows \[K=2, B, D=8\].*\(3, 4, 8\)"):
        native.wgrad_adam_(torch.zeros(3, 4, 8), torch.zeros(2, 4, 16), w, w.clone(), w.clone(), *args)
    with pytest.raises(ValueError, match="contiguous float32 CPU tensors of one shape"):
        native.wgrad_adam_(torch.zeros(2, 4, 8), torch.zeros(2, 4, 16), w, w.double(), w.clone(), *args)
    with pytest.raises(ValueError, match=r"float32 rows \[K=2, B, D=8\].*\(2, 4, 9\)"):
        native.data_forward(torch.zeros(2, 4, 9), w, None)
    with pytest.raises(ValueError, match=r"bias torch.float32 \(2, 1, 8\) does not fit w \(2, 8, 16\)"):
        native.data_forward(torch.zeros(2, 4, 8), w, torch.zeros(2, 1, 8))
    with pytest.raises(ValueError, match=r"scale .* needs one float32 per model"):
        native.data_forward(torch.zeros(2, 4, 8), w, None, torch.ones(3, 1, 1))
    with pytest.raises(ValueError, match=r"out torch.float32 \(2, 5, 16\) is not a contiguous float32 \[2, 4, 16\]"):
        native.data_forward(torch.zeros(2, 4, 8), w, None, out=torch.zeros(2, 5, 16))
    with pytest.raises(ValueError, match=r"H a multiple of 16, got torch.float32 \(2, 8, 12\)"):
        native.data_forward(torch.zeros(2, 4, 8), torch.zeros(2, 8, 12), None)


@pytest.mark.parametrize("drops", [[0.5] * 3,                   # 1 bit (MERTools' default)
                                   [0.25, 0.5, 0.75],           # 2 bits for some, 1 for one: per-model widths
                                   [0.0625, 0.0, 0.4375],       # 4 bits; a model without dropout
                                   [7 / 256] * 3,               # 8 bits
                                   [0.3] * 3])                  # 16 bits
def test_dropout_kernel_draws_the_masks_of_keep_mask(drops: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    """BatchedModel.dropped through native.dropout_apply gives the numbers of x * keep_mask (and keep_mask times
    1 / (1 - p)) bit for bit: same draws, same decisions, idle models drawing nothing."""
    gen = torch.Generator().manual_seed(11)
    x, shared = torch.randn(3, 7, 130, generator=gen), torch.randn(7, 130, generator=gen)
    got = []
    for kernel in (True, False):
        m = build_model("attention", spec(K=3, dropout=drops)).train()
        m.active = [True, False, True]
        if not kernel:
            monkeypatch.setattr(native, "library", lambda: None)
        got.append([m.dropped(x, 7, 130, torch.empty(3, 7, 130)).clone(),
                    m.dropped(None, 7, 130, torch.empty(3, 7, 130), scaled=True).clone(),
                    m.dropped(shared.expand(3, 7, 130), 7, 130, torch.empty(3, 7, 130)).clone(),
                    m.dropped(shared, 7, 130, torch.empty(3, 7, 130)).clone()])
        monkeypatch.undo()
    for a, b in zip(*got):
        assert torch.equal(a[[0, 2]], b[[0, 2]])         # the idle model's rows are never used
    twin = build_model("attention", spec(K=3, dropout=drops)).train()      # the same generators: the first mask
    twin.active = [True, False, True]
    first = twin.dropped(None, 7, 130, torch.empty(3, 7, 130))
    masked, mask = got[0][0], got[0][1]
    for k in (0, 2):
        dropped = float((first[k] == 0).float().mean())
        assert abs(dropped - drops[k]) < 0.15 and (drops[k] > 0) == (dropped > 0)
        assert torch.equal(masked[k], x[k] * first[k]) and set(first[k].unique().tolist()) <= {0.0, 1.0}
        assert torch.allclose(mask[k][mask[k] > 0], torch.tensor(1.0 / (1.0 - drops[k])))


def test_dropout_kernel_refuses_what_does_not_fit() -> None:
    raw = torch.zeros(2, 4, dtype=torch.int64)
    bits, thr = torch.ones(2, dtype=torch.int32), torch.ones(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="does not hold 300 draws"):
        native.dropout_apply(None, raw, bits, thr, None, torch.empty(2, 3, 100))
    with pytest.raises(ValueError, match="does not fit out"):
        native.dropout_apply(torch.zeros(2, 5, 8), raw, bits, thr, None, torch.empty(2, 4, 8))
    with pytest.raises(ValueError, match="one int32 per model"):
        native.dropout_apply(None, raw, bits.long(), thr, None, torch.empty(2, 4, 8))
    with pytest.raises(ValueError, match="contiguous float32"):
        native.dropout_apply(None, raw, bits, thr, None, torch.empty(2, 4, 8, dtype=torch.float64))


@pytest.mark.parametrize("K,B,D,H,shared", [(3, 32, 512, 128, False), (2, 37, 131, 80, False), (3, 16, 96, 64, True)])
def test_adam_pass_makes_the_next_steps_product(K: int, B: int, D: int, H: int, shared: bool) -> None:
    """wgrad_adam_(..., x_next=) takes the same Adam step and returns x_next @ W on the updated weights (what
    data_forward gives after the step, to float32 rounding: the sum over D comes in two partial sums)."""
    gen = torch.Generator().manual_seed(D)
    x = torch.randn(B, D, generator=gen) if shared else torch.randn(K, B, D, generator=gen)
    xn = torch.randn(B, D, generator=gen) if shared else torch.randn(K, B, D, generator=gen)
    g = torch.randn(K, B, H, generator=gen) * 1e-2
    w0 = torch.randn(K, D, H, generator=gen) * 0.05
    active = [True, False, True][:K]
    hyper = ([1e-3, 3e-4, 1e-2][:K], [1e-5, 0.0, 1e-3][:K], [2, 0, 5][:K], active, (0.9, 0.999), 1e-8)
    a = [w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)]
    b = [w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)]
    z = native.wgrad_adam_(x, g, *a, *hyper, x_next=xn)
    assert native.wgrad_adam_(x, g, *b, *hyper) is None
    assert all(torch.equal(s, t) for s, t in zip(a, b))          # the same Adam step, bit for bit
    ref = native.data_forward(xn, b[0], None)
    assert z is not None and z.shape == (K, B, H)
    assert float((z - ref).abs().max()) < 1e-5 * float(ref.abs().max())
    if K > 1:   # the idle model kept its weights, and its product is made with them
        assert torch.equal(a[0][1], w0[1]) and float((z[1] - (xn if shared else xn[1]) @ w0[1]).abs().max()) < 1e-4


def test_prefetched_steps_train_the_same_models(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """run_experiment hands each step's inputs to the model a step ahead (products from the Adam pass); without
    that it trains the same models, to float32 rounding."""
    from trainer.data import load_features
    from trainer.fit import run_experiment
    from trainer.models.base import BatchedModel
    from trainer.protocol import Protocol
    from trainer.synthetic import make_store

    make_store(tmp_path / "s.zarr", n_train=160, n_test=40, dims={"a": ("audio", 20), "t": ("text", 140)},
               signal=1.0, seed=4)
    fs = load_features(tmp_path / "s.zarr", "synth", audio=["a"], text=["t"])
    p = Protocol(epochs=2, batch_size=16, hidden=32, lr=1e-3)
    taken = []
    real = BatchedModel.prefetch
    monkeypatch.setattr(BatchedModel, "prefetch", lambda self, *a: (taken.append(real(self, *a)), taken[-1])[1])
    ahead = run_experiment(fs, "attention", p)
    assert taken and all(taken)
    monkeypatch.setattr(BatchedModel, "prefetch", lambda self, *a: False)
    plain = run_experiment(fs, "attention", p)
    for key, out in ahead.test_outputs.items():
        assert np.abs(out.emotion - plain.test_outputs[key].emotion).max() < 1e-4
    # under bf16 autocast the data layers multiply in bf16 from each step's own inputs: nothing is prefetched
    monkeypatch.setattr(BatchedModel, "prefetch", lambda self, *a: (taken.append("asked"), real(self, *a))[1])
    n = len(taken)
    run_experiment(fs, "attention", Protocol(epochs=1, batch_size=16, hidden=32, lr=1e-3, bf16=True))
    assert len(taken) == n


def test_prefetch_applies_where_the_draws_allow_it() -> None:
    x, other = inputs(2, 8), inputs(2, 8)
    m = build_model("attention", spec(K=2, hidden=16)).train()
    assert not m.prefetch(x, None)                    # outside the trainer (no deferred data layers)
    m.defer_data_grads = True
    opt = BatchedAdam(list(m.parameters()), [1e-3] * 2, [0.0] * 2)
    assert m.prefetch(x, None)                       # masks drawn now, the product made by the forward
    m(x)["emotion"].sum().backward()
    assert m.prefetch(x, None)
    opt.step()                                        # makes the next step's products...
    with pytest.raises(RuntimeError, match="prefetched for another input"):
        m(other)                                      # ...which a different input may not take
    tfn = build_model("tfn", spec(K=2, hidden=16)).train()
    tfn.defer_data_grads = True
    assert not tfn.prefetch(x, None)                 # its forward draws in another order


# the kernels built for another ISA and run under an emulator: (compiler, extra flags, emulator with its sysroot)
CROSS = {"aarch64": ("aarch64-linux-gnu-gcc", ("-march=armv8-a",), ("qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"))}
HARNESS = Path(__file__).with_name("kernel_bits.c")


def _kernel_records(cc: str, extra: tuple[str, ...], run: tuple[str, ...],
                    out: Path) -> tuple[int, list[tuple[str, np.ndarray]]]:
    """tests/kernel_bits.c linked against the kernels as trainer.native builds them with `cc` and `extra` flags,
    run (under `run`, an emulator, where given): the build's vector lanes and its (name, float32 values) records
    in order."""
    lib = native._compile(cc, extra)
    subprocess.run([cc, "-O2", str(HARNESS), str(lib), f"-Wl,-rpath,{lib.parent}", "-o", str(out)], check=True,
                   capture_output=True, timeout=120)
    proc = subprocess.run([*run, str(out)], check=True, capture_output=True, timeout=120)
    raw, records, at = proc.stdout, [], 0
    while at < len(raw):
        name = raw[at:at + 16].rstrip(b"\0").decode()
        n = int(np.frombuffer(raw, np.int64, 1, at + 16)[0])
        records.append((name, np.frombuffer(raw, np.float32, n, at + 24)))
        at += 24 + 4 * n
    return int(proc.stderr.split()[0]), records


@pytest.mark.parametrize("lanes", [4, 8])
def test_a_narrower_vector_unit_gives_the_same_bits(lanes: int, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vec.h: every lane is summed in one order whatever the width of the native vectors, so a build with narrower
    ones (-DVN=4: NEON's width; 8: AVX2's) makes this CPU's build's numbers bit for bit, on tests/kernel_bits.c's
    inputs (row and column tails, every kernel)."""
    if lanes >= native.vector_lanes():
        pytest.skip(f"this CPU's kernels use {native.vector_lanes()} lanes")
    monkeypatch.setenv("FEATSTORE_KERNEL_CACHE", str(tmp_path))
    _, ours = _kernel_records(native._compiler(), (), (), tmp_path / "cpu")
    narrow_lanes, narrow = _kernel_records(native._compiler(), (f"-DVN={lanes}",), (), tmp_path / f"vn{lanes}")
    assert narrow_lanes == lanes
    assert [name for name, _ in ours] == [name for name, _ in narrow]
    assert all(np.array_equal(a.view(np.uint32), b.view(np.uint32)) for (_, a), (_, b) in zip(ours, narrow))


def test_vector_width_follows_the_cpu() -> None:
    flags = set(native._cpu_signature().split())      # the CPU's model name and flag lines, as words
    expected = 16 if "avx512f" in flags else 8 if "avx" in flags else 4
    assert native.vector_lanes() == expected


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the x86-64 ISA levels")
@pytest.mark.parametrize("march", ["x86-64-v2", "x86-64-v3", "x86-64-v4"])
def test_the_kernels_build_for_every_x86_level(march: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SSE only (4 lanes, no FMA), AVX2 (8) and AVX-512 (16: the wide tiles) all compile, whichever of them this
    CPU runs: a build that only the test machine's ISA exercises once broke every CPU without AVX-512."""
    monkeypatch.setenv("FEATSTORE_KERNEL_CACHE", str(tmp_path))
    lib = native._compile(native._compiler(), (f"-march={march}",))
    assert lib.exists() and lib.stat().st_size > 10_000


@pytest.mark.skipif(platform.machine() != "x86_64", reason="compares this x86-64 machine's build with another ISA's")
@pytest.mark.parametrize("isa", sorted(CROSS))
def test_the_kernels_compute_the_same_numbers_on_another_isa(isa: str, tmp_path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels cross-compiled for AArch64 (NEON: 4-lane units, "+w" register pins) and run under qemu give this
    machine's numbers: the dropout kernel's bit for bit, every product, Adam step and trunk gradient to float32
    rounding (the compilers fuse the scalar tails' multiply-adds differently: up to 6e-8 apart here). Needs the
    cross compiler and qemu-user (`.ci/run` installs them); the lane count is checked too."""
    cc, extra, run = CROSS[isa]
    missing = [tool for tool in (cc, run[0]) if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    monkeypatch.setenv("FEATSTORE_KERNEL_CACHE", str(tmp_path))
    _, ours = _kernel_records(native._compiler(), (), (), tmp_path / "host")
    lanes, theirs = _kernel_records(cc, extra, run, tmp_path / isa)
    assert lanes == 4
    assert [name for name, _ in ours] == [name for name, _ in theirs] and len(ours) == 71
    for (name, a), (_, b) in zip(ours, theirs):
        assert a.shape == b.shape and np.isfinite(a).all() and np.isfinite(b).all(), name
        if name.startswith("dropout"):
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), name
        else:
            assert np.allclose(a, b, rtol=1e-5, atol=1e-6), (name, float(np.abs(a - b).max()))
        assert a.size == 0 or np.abs(a).max() > 0, name     # (no valence in the second trunk)


def test_an_installed_package_carries_every_kernel_source() -> None:
    """pyproject's package data ships every file the kernels compile from (a wheel without the headers would fall
    back to the PyTorch path on every machine)."""
    import fnmatch
    import tomllib

    root = Path(native.__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["trainer"]
    for f in (*native.SOURCES, *native.HEADERS):
        rel = f.relative_to(root / "trainer").as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel
    assert {f.name for f in native.KERNELS.iterdir() if f.suffix in (".c", ".h")} == \
        {f.name for f in (*native.SOURCES, *native.HEADERS)}
