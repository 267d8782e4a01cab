#!/usr/bin/env python3
"""bench/cuda_attention.py: times moda's CUDA MoDA kernels against PyTorch and the authors' Triton.

Loads build/libmoda_cuda.so with ctypes and passes torch tensors' pointers through a
moda_attn_params built with ctypes.Structure (mirrors c/moda_attn.h). Same process, same inputs:
  ours fwd / fwd+bwd | torch SDPA FLASH / CUDNN plain attention (fwd, fwd+bwd) on the same q/k/v |
  composed PyTorch MoDA (SDPA flash + depth einsum merged through log-sum-exp) |
  the authors' Triton kernel (fla.ops.moda.parallel_moda_fwd), if importable from
  $MODA_TRITON_PATH (default .thirdparty/libs/moda_triton; never committed).
Times are CUDA-event medians in ms. TFLOP/s counts the FLOPs really needed: 4*d per (query, key)
pair for the visible sequence keys and the L depth rows; fwd+bwd counts 3.5x that (the backward
does 2.5x the forward's matrix work, FlashAttention's convention).

Decode (--decode): B=8, T=1, Hq=32, Hk=8, L=64, S = 8192 and 65536 cached keys: our split-K
decode path vs our tiled forward vs SDPA plain attention on the same q/k/v.

Our fwd+bwd is timed on every shape (backward: tensor-core kernels, attn_bwd_mma.cu).
--only picks shapes by label substrings.

Times are the GPU's alone: each timed call is queued behind a sleep kernel. --idle-start times
calls that start on an idle GPU, host launch latency included (the method of the tables before
2026-12-06; docs/BENCHMARKS.md shows both for session 12).

Usage: python3 bench/cuda_attention.py [--quick] [--only 'T=4096,DeiT'] [--bwd-max-t N] [--check] [--decode] [--nondet]
                                       [--idle-start]
"""
import argparse
import ctypes
import math
import os
import re
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETERMINISTIC = 1  # p.deterministic of our backward; --nondet sets 0 (lets the atomic-dQ option run)

MODA_F32, MODA_F16, MODA_BF16 = 0, 2, 3
DTYPE_ID = {torch.float32: MODA_F32, torch.float16: MODA_F16, torch.bfloat16: MODA_BF16}

I64_3 = ctypes.c_int64 * 3
I64_4 = ctypes.c_int64 * 4


class AttnParams(ctypes.Structure):
    """struct moda_attn_params of c/moda_attn.h."""
    _fields_ = [
        ("dtype", ctypes.c_int32), ("causal", ctypes.c_int32), ("chunk", ctypes.c_int32),
        ("impl", ctypes.c_int32), ("deterministic", ctypes.c_int32), ("pad_", ctypes.c_int32),
        ("B", ctypes.c_int64), ("T", ctypes.c_int64), ("S", ctypes.c_int64), ("Hq", ctypes.c_int64),
        ("Hk", ctypes.c_int64), ("G", ctypes.c_int64), ("L", ctypes.c_int64), ("d", ctypes.c_int64),
        ("scale", ctypes.c_double),
        ("q", ctypes.c_void_p), ("q_stride", I64_3),
        ("k", ctypes.c_void_p), ("k_stride", I64_3),
        ("v", ctypes.c_void_p), ("v_stride", I64_3),
        ("kd", ctypes.c_void_p), ("kd_stride", I64_4),
        ("vd", ctypes.c_void_p), ("vd_stride", I64_4),
        ("o", ctypes.c_void_p), ("o_stride", I64_3),
        ("lse", ctypes.c_void_p), ("lse_stride", I64_3),
        ("dout", ctypes.c_void_p), ("dout_stride", I64_3),
        ("dq", ctypes.c_void_p), ("dq_stride", I64_3),
        ("dk", ctypes.c_void_p), ("dk_stride", I64_3),
        ("dv", ctypes.c_void_p), ("dv_stride", I64_3),
        ("dkd", ctypes.c_void_p), ("dkd_stride", I64_4),
        ("dvd", ctypes.c_void_p), ("dvd_stride", I64_4),
    ]


def load_lib():
    path = os.environ.get("MODA_CUDA_LIB", os.path.join(ROOT, "build", "libmoda_cuda.so"))
    lib = ctypes.CDLL(path)
    lib.moda_attn_fwd_cuda.argtypes = [ctypes.POINTER(AttnParams), ctypes.c_void_p]
    lib.moda_attn_bwd_cuda.argtypes = [ctypes.POINTER(AttnParams), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.moda_attn_fwd_cuda_kernel_name.argtypes = [ctypes.POINTER(AttnParams)]
    lib.moda_attn_fwd_cuda_kernel_name.restype = ctypes.c_char_p
    lib.moda_attn_bwd_cuda_kernel_name.argtypes = [ctypes.POINTER(AttnParams)]
    lib.moda_attn_bwd_cuda_kernel_name.restype = ctypes.c_char_p
    lib.moda_attn_bwd_cuda_workspace_size.argtypes = [ctypes.POINTER(AttnParams)]
    lib.moda_attn_bwd_cuda_workspace_size.restype = ctypes.c_int64
    lib.moda_attn_fwd_cuda_workspace_size.argtypes = [ctypes.POINTER(AttnParams)]
    lib.moda_attn_fwd_cuda_workspace_size.restype = ctypes.c_int64
    lib.moda_cuda_set_decode_mode.argtypes = [ctypes.c_int]
    core = ctypes.CDLL(os.path.join(os.path.dirname(path), "libmoda.so"))
    core.moda_last_error.restype = ctypes.c_char_p
    return lib, core


LIB, CORE = load_lib()


def _set(p, name, t, n):
    if t is None:
        setattr(p, name, None)
        return
    setattr(p, name, t.data_ptr())
    getattr(p, name + "_stride")[:] = list(t.stride()[:n])


class Moda:
    """Our kernels on torch tensors q [B,T,Hq,d], k/v [B,S,Hk,d], kd/vd [B,T,L,Hk,d] or None."""

    def __init__(self, q, k, v, kd, vd, causal=True, chunk=0):
        B, T, Hq, d = q.shape
        S, Hk = k.shape[1], k.shape[2]
        L = kd.shape[2] if kd is not None else 0
        self.o = torch.empty_like(q)
        self.lse = torch.empty(B, Hq, T, device=q.device, dtype=torch.float32)
        p = AttnParams()
        p.dtype, p.causal, p.chunk, p.deterministic = DTYPE_ID[q.dtype], int(causal), chunk, DETERMINISTIC
        p.B, p.T, p.S, p.Hq, p.Hk, p.G, p.L, p.d = B, T, S, Hq, Hk, Hq // Hk, L, d
        p.scale = 1.0 / math.sqrt(d)
        _set(p, "q", q, 3); _set(p, "k", k, 3); _set(p, "v", v, 3)
        _set(p, "kd", kd, 4); _set(p, "vd", vd, 4)
        _set(p, "o", self.o, 3); _set(p, "lse", self.lse, 3)
        self.p, self.q, self.k, self.v, self.kd, self.vd = p, q, k, v, kd, vd
        self.grads = None
        self.stream = torch.cuda.current_stream().cuda_stream

    def kernel(self):
        return LIB.moda_attn_fwd_cuda_kernel_name(ctypes.byref(self.p)).decode()

    def bwd_kernel(self):
        return LIB.moda_attn_bwd_cuda_kernel_name(ctypes.byref(self.p)).decode()

    def _check(self, st, what):
        if st != 0:
            raise RuntimeError(f"{what}: {CORE.moda_last_error().decode()}")

    def fwd(self):
        self._check(LIB.moda_attn_fwd_cuda(ctypes.byref(self.p), self.stream), "moda_attn_fwd_cuda")

    def bwd(self, dout):
        if self.grads is None:
            g = [torch.empty_like(x) if x is not None else None for x in (self.q, self.k, self.v, self.kd, self.vd)]
            self.grads = g
            _set(self.p, "dout", dout, 3)
            for name, t, n in zip(("dq", "dk", "dv", "dkd", "dvd"), g, (3, 3, 3, 4, 4)):
                _set(self.p, name, t, n)
            nbytes = LIB.moda_attn_bwd_cuda_workspace_size(ctypes.byref(self.p))
            self.ws = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=self.q.device)
        self._check(LIB.moda_attn_bwd_cuda(ctypes.byref(self.p), self.stream, self.ws.data_ptr(), self.ws.numel()),
                    "moda_attn_bwd_cuda")


GPU_TIME = True  # each timed call queued behind a sleep kernel (see bench_ms); --idle-start: not
SLEEP_CYCLES = 4_000_000  # ~2 ms at H100 clocks: longer than any call's host side here


def bench_ms(fn, budget_ms=300.0, max_reps=50):
    """Median of CUDA-event timings after warm-up; the repeat count fits the budget.

    By default a sleep kernel runs before the start event while the host queues the call, so the
    time is the GPU's alone (what a training loop that keeps the GPU busy sees). With --idle-start
    each timed call starts on an idle GPU, so the time includes the host's launch latency until
    the first kernel runs (what a synchronous caller sees; torch's autograd adds more of it than
    our ctypes call does; every table before 2026-12-06 was timed this way)."""
    fn(); torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record(); fn(); e1.record(); torch.cuda.synchronize()
    first = e0.elapsed_time(e1)
    reps = int(max(3, min(max_reps, budget_ms / max(first, 1e-3))))
    times = []
    for _ in range(reps):
        if GPU_TIME:
            torch.cuda._sleep(SLEEP_CYCLES)
        e0.record(); fn(); e1.record(); e1.synchronize()
        times.append(e0.elapsed_time(e1))
    times.sort()
    return times[len(times) // 2]


def sdpa_ms(q, k, v, causal, backend, bwd):
    from torch.nn.attention import sdpa_kernel, SDPBackend
    be = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]
    G = q.shape[2] // k.shape[2]
    qt = q.transpose(1, 2).detach().requires_grad_(bwd)
    kt = k.repeat_interleave(G, dim=2).transpose(1, 2).detach().requires_grad_(bwd)
    vt = v.repeat_interleave(G, dim=2).transpose(1, 2).detach().requires_grad_(bwd)
    do = torch.randn_like(qt)

    def run():
        with sdpa_kernel([be]):
            o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
            if bwd:
                torch.autograd.grad(o, (qt, kt, vt), do)
    try:
        return bench_ms(run)
    except Exception as e:  # backend refuses the shape
        return float("nan")


def composed_moda(q, k, v, kd, vd, causal):
    """What a PyTorch user writes: SDPA flash for the sequence part (with its lse), the depth part
    as per-token einsums, merged through the log-sum-exp."""
    B, T, Hq, d = q.shape
    Hk = k.shape[2]; G = Hq // Hk
    scale = 1.0 / math.sqrt(d)
    qt = q.transpose(1, 2)
    kt = k.repeat_interleave(G, dim=2).transpose(1, 2)
    vt = v.repeat_interleave(G, dim=2).transpose(1, 2)
    out = torch.ops.aten._scaled_dot_product_flash_attention(qt, kt, vt, 0.0, causal, False, scale=scale)
    o_s, lse_s = out[0].transpose(1, 2), out[1].transpose(1, 2)  # [B,T,Hq,d], [B,T,Hq]
    if kd is None:
        return o_s
    qg = q.view(B, T, Hk, G, d)
    s = torch.einsum("btkgd,btlkd->btkgl", qg.float(), kd.float()) * scale
    lse_d = torch.logsumexp(s, dim=-1)  # [B,T,Hk,G]
    o_d = torch.einsum("btkgl,btlkd->btkgd", torch.softmax(s, dim=-1), vd.float()).reshape(B, T, Hq, d)
    lse_d = lse_d.reshape(B, T, Hq)
    lse = torch.logaddexp(lse_s, lse_d)
    return (o_s.float() * torch.exp(lse_s - lse)[..., None] + o_d * torch.exp(lse_d - lse)[..., None]).to(q.dtype)


def authors_triton():
    path = os.environ.get("MODA_TRITON_PATH", os.path.join(ROOT, ".thirdparty", "libs", "moda_triton"))
    if not os.path.isdir(path):
        return None, "not fetched"
    sys.path.insert(0, path)
    try:
        from fla.ops.moda import parallel_moda_fwd, parallel_moda_bwd
        return (parallel_moda_fwd, parallel_moda_bwd), None
    except Exception as e:
        return None, f"import failed: {type(e).__name__}: {e}"


def flops(B, T, S, Hq, d, L, causal):
    seq = (T * (S - T) + T * (T + 1) / 2) if causal else T * S
    return 4.0 * B * Hq * d * (seq + T * L)


def check_small(dtype=torch.bfloat16):
    """Ours vs a float64 torch reference on a small shape (sanity of the ctypes plumbing)."""
    torch.manual_seed(0)
    B, T, Hk, G, L, d = 2, 77, 2, 4, 5, 64
    q = torch.randn(B, T, Hk * G, d, device="cuda", dtype=dtype)
    k = torch.randn(B, T, Hk, d, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    kd = torch.randn(B, T, L, Hk, d, device="cuda", dtype=dtype)
    vd = torch.randn_like(kd)
    m = Moda(q, k, v, kd, vd, causal=True)
    m.fwd(); torch.cuda.synchronize()
    ref = composed_moda(q, k, v, kd, vd, True)
    err = (m.o.float() - ref.float()).abs().max().item() / ref.float().abs().max().item()
    print(f"check: ours vs composed torch MoDA, rel err {err:.2e} ({'ok' if err < 2e-2 else 'MISMATCH'})")
    # backward: ours vs autograd through the composed MoDA on float64 copies of the same inputs
    leaves = [x.detach().double().requires_grad_(True) for x in (q, k, v, kd, vd)]
    dout = torch.randn_like(q)
    ref_o = composed_moda_f64(*leaves, True)
    ref_g = torch.autograd.grad(ref_o, leaves, dout.double())
    m.bwd(dout); torch.cuda.synchronize()
    for name, got, ref in zip(("dq", "dk", "dv", "dkd", "dvd"), m.grads, ref_g):
        e = (got.double() - ref).abs().max().item() / ref.abs().max().item()
        print(f"check bwd ({m.bwd_kernel()}): {name} rel err {e:.2e} ({'ok' if e < 2e-2 else 'MISMATCH'})")


def composed_moda_f64(q, k, v, kd, vd, causal):
    """Differentiable float64 MoDA (token depth) by plain softmax over [sequence | depth] scores."""
    B, T, Hq, d = q.shape
    Hk = k.shape[2]; G = Hq // Hk; L = kd.shape[2]
    scale = 1.0 / math.sqrt(d)
    qh = q.view(B, T, Hk, G, d)
    s_seq = torch.einsum("btkgd,bskd->btkgs", qh, k) * scale
    if causal:
        S = k.shape[1]
        mask = torch.arange(S, device=q.device)[None, :] > (S - T + torch.arange(T, device=q.device))[:, None]
        s_seq = s_seq.masked_fill(mask[None, :, None, None, :], float("-inf"))
    s_dep = torch.einsum("btkgd,btlkd->btkgl", qh, kd) * scale
    pr = torch.softmax(torch.cat([s_seq, s_dep], dim=-1), dim=-1)
    S = k.shape[1]
    o = torch.einsum("btkgs,bskd->btkgd", pr[..., :S], v) + torch.einsum("btkgl,btlkd->btkgd", pr[..., S:], vd)
    return o.reshape(B, T, Hq, d)


def sdpa_decode_ms(q, k, v, backend):
    """Plain attention of T new queries against the whole cache (T = 1: no mask needed), through
    SDPA's GQA support (no K/V copy) where the backend takes it, else on repeated K/V."""
    from torch.nn.attention import sdpa_kernel, SDPBackend
    be = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
          "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]
    G = q.shape[2] // k.shape[2]
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    for gqa in (True, False):
        try:
            if gqa:
                def run():
                    with sdpa_kernel([be]):
                        F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True)
            else:
                kr = k.repeat_interleave(G, dim=2).transpose(1, 2)
                vr = v.repeat_interleave(G, dim=2).transpose(1, 2)

                def run():
                    with sdpa_kernel([be]):
                        F.scaled_dot_product_attention(qt, kr, vr)
            return bench_ms(run), ("gqa" if gqa else "repeat")
        except Exception:
            continue
    return float("nan"), "-"


def bench_decode():
    """Decode: B=8, T=1 new query per sequence, Hq=32, Hk=8, L=64, against S cached keys.
    Ours with the split-K decode path (automatic choice) and with it off (the tiled forward),
    torch SDPA plain attention on the same q/k/v. GB/s counts the bytes that must be read
    (K, V, the depth rows, q) and written (o)."""
    print("\ndecode: B=8, T=1, Hq=32, Hk=8, L=64, causal (query at position S-1)")
    hdr = (f"{'d':>4} {'S':>6} {'kernel':<15} {'ours split':>10} {'GB/s':>6} {'ours tiled':>10} "
           f"{'flash':>8} {'cudnn':>8} {'effic.':>8} {'split/flash':>11} {'split/tiled':>11}")
    rows = []
    for d in (64, 128):
        for S in (8192, 65536):
            torch.manual_seed(0)
            B, T, Hq, Hk, L = 8, 1, 32, 8, 64
            dtype = torch.bfloat16
            q = torch.randn(B, T, Hq, d, device="cuda", dtype=dtype)
            k = torch.randn(B, S, Hk, d, device="cuda", dtype=dtype)
            v = torch.randn_like(k)
            kd = torch.randn(B, T, L, Hk, d, device="cuda", dtype=dtype)
            vd = torch.randn_like(kd)
            m = Moda(q, k, v, kd, vd, causal=True)
            LIB.moda_cuda_set_decode_mode(0)
            kname = m.kernel()
            t_split = bench_ms(m.fwd)
            o_split = m.o.clone()
            LIB.moda_cuda_set_decode_mode(1)
            t_tiled = bench_ms(m.fwd)
            diff = (m.o.float() - o_split.float()).abs().max().item()
            LIB.moda_cuda_set_decode_mode(0)
            fl, _ = sdpa_decode_ms(q, k, v, "flash")
            cu, _ = sdpa_decode_ms(q, k, v, "cudnn")
            ef, _ = sdpa_decode_ms(q, k, v, "efficient")
            nbytes = 2 * (2 * B * S * Hk * d + 2 * B * T * L * Hk * d + 2 * B * T * Hq * d)
            row = (f"{d:4d} {S:6d} {kname:<15} {t_split:10.4f} {nbytes / t_split / 1e6:6.0f} {t_tiled:10.4f} "
                   f"{fl:8.4f} {cu:8.4f} {ef:8.4f} {t_split / fl:11.2f} {t_split / t_tiled:11.3f}"
                   f"   (split vs tiled max|diff| {diff:.1e})")
            rows.append(row)
            print(row, flush=True)
            del q, k, v, kd, vd, m
            torch.cuda.empty_cache()
    print("\n" + hdr)
    for r in rows:
        print(r)
    print("ms (CUDA-event medians); SDPA: plain attention, no depth rows")


def print_kernel_profile(label, prof, reps):
    """One line per GPU kernel (memsets too): its CUDA time per fwd+bwd in ms, largest first."""
    try:
        rows = []
        for ev in prof.key_averages():
            t = getattr(ev, "self_device_time_total", None)
            if t is None:
                t = getattr(ev, "self_cuda_time_total", 0)
            if t and t > 0:
                key = ev.key.replace("(anonymous namespace)::", "")
                name = re.sub(r"^void |[(<].*$", "", key).split("::")[-1]
                rows.append((t / reps / 1000.0, name))
        rows.sort(reverse=True)
        total = sum(r[0] for r in rows)
        print(f"-- {label}: CUDA time per fwd+bwd ({reps} runs), total {total:.3f} ms: " +
              " | ".join(f"{n} {t:.3f}" for t, n in rows))
    except Exception as e:  # a profiler API change must not cost the timing run
        print(f"-- {label}: kernel profile unavailable ({type(e).__name__}: {e})")
        print(prof.key_averages().table(row_limit=10, max_name_column_width=60))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a few shapes only")
    ap.add_argument("--bwd-max-t", type=int, default=1 << 40,
                    help="time our fwd+bwd only up to this T (default: every shape)")
    ap.add_argument("--only", default="", help="comma-separated label substrings: run those shapes only")
    ap.add_argument("--profile", action="store_true",
                    help="per-kernel CUDA times of our fwd+bwd (torch.profiler) for each shape")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--decode", action="store_true", help="the decode shapes only")
    ap.add_argument("--ours-only", action="store_true",
                    help="time only our kernels (A/B runs): the baseline columns print nan")
    ap.add_argument("--shape", action="append", default=[], metavar="LABEL:B,T,Hk,G,L,causal",
                    help="one more shape (repeatable), e.g. LM-32:8,2048,2,4,62,1; runs with the others (--only filters)")
    ap.add_argument("--nondet", action="store_true",
                    help="our backward with deterministic = 0 (with MODA_CUDA_BWD_ATOMIC_DQ=1: dQ by atomics)")
    ap.add_argument("--idle-start", action="store_true",
                    help="start each timed call on an idle GPU, host launch latency included (the tables "
                         "before 2026-12-06); default: the GPU's time alone, each call queued behind a sleep kernel")
    args = ap.parse_args()
    global DETERMINISTIC, GPU_TIME
    DETERMINISTIC = 0 if args.nondet else 1
    GPU_TIME = not args.idle_start
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; times: "
          f"{'GPU alone (calls queued behind a sleep kernel)' if GPU_TIME else 'from an idle GPU, host launch latency included (--idle-start)'}")
    if args.decode:
        bench_decode()
        return
    if args.check:
        check_small()
    triton_fns, why = authors_triton() if not args.ours_only else (None, "not run (--ours-only)")
    print(f"authors' Triton kernel: {'loaded' if triton_fns else why}")

    shapes = []  # (label, B, T, Hk, G, L, causal)
    Ts = [4096, 16384] if args.quick else [4096, 8192, 16384, 32768, 65536]
    for T in Ts:
        shapes.append((f"paper T={T}", 1, T, 8, 8, 64, True))
    if not args.quick:
        for G in (2, 4, 16, 32):
            shapes.append((f"paper G={G}", 1, 16384, 8, G, 64, True))
        for L in (128, 256):
            shapes.append((f"paper L={L}", 1, 16384, 8, 8, L, True))
    shapes.append(("DeiT-Tiny L=22", 256, 197, 1, 4, 22, False))
    shapes.append(("DeiT-Tiny-64 L=126", 256, 197, 1, 4, 126, False))
    shapes.append(("LM-64 L=126", 8, 2048, 2, 4, 126, True))
    for spec in args.shape:
        label, _, nums = spec.partition(":")
        vals = [int(x) for x in nums.split(",")]
        if len(vals) != 6 or not label:
            ap.error(f"--shape {spec!r}: expected LABEL:B,T,Hk,G,L,causal")
        shapes.append((label, *vals[:5], bool(vals[5])))
    if args.only:
        keys = [x for x in args.only.split(",") if x]
        shapes = [s for s in shapes if any(k in s[0] for k in keys)]

    d = 64
    dtype = torch.bfloat16
    hdr = (f"{'shape':<20} {'kernel':<13} {'ours fwd':>9} {'TF/s':>6} {'ours f+b':>9} {'TF/s':>6} {'flash fwd':>9} {'flash f+b':>9} "
           f"{'cudnn fwd':>9} {'cudnn f+b':>9} {'torchMoDA':>9} {'authors':>9} {'fwd/flash':>9} {'fwd/authr':>9} {'f+b/flash':>9} {'f+b/cudnn':>9} {'fwd/cudnn':>9}")
    rows = []
    for label, B, T, Hk, G, L, causal in shapes:
        torch.manual_seed(0)
        Hq = Hk * G
        q = torch.randn(B, T, Hq, d, device="cuda", dtype=dtype)
        k = torch.randn(B, T, Hk, d, device="cuda", dtype=dtype)
        v = torch.randn_like(k)
        kd = torch.randn(B, T, L, Hk, d, device="cuda", dtype=dtype) if L else None
        vd = torch.randn_like(kd) if L else None
        m = Moda(q, k, v, kd, vd, causal=causal)
        kname = m.kernel()
        t_fwd = bench_ms(m.fwd)
        fl = flops(B, T, T, Hq, d, L, causal)
        t_fb = float("nan")
        if T <= args.bwd_max_t:
            dout = torch.randn_like(q)
            t_fb = bench_ms(lambda: (m.fwd(), m.bwd(dout)))  # as the SDPA baselines: up to 50 runs in 300 ms
            if args.profile:
                from torch.profiler import profile, ProfilerActivity
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(3):
                        m.fwd(); m.bwd(dout)
                    torch.cuda.synchronize()
                print_kernel_profile(label, prof, 3)
        nan = float("nan")
        fl_fwd = fl_fb = cu_fwd = cu_fb = t_torch = t_auth = nan
        if not args.ours_only:
            fl_fwd, fl_fb = sdpa_ms(q, k, v, causal, "flash", False), sdpa_ms(q, k, v, causal, "flash", True)
            cu_fwd, cu_fb = sdpa_ms(q, k, v, causal, "cudnn", False), sdpa_ms(q, k, v, causal, "cudnn", True)
            try:
                t_torch = bench_ms(lambda: composed_moda(q, k, v, kd, vd, causal), budget_ms=200, max_reps=10)
            except Exception as e:
                t_torch = nan
        if triton_fns is not None and not args.ours_only:
            try:
                qa = q.view(B, T, Hk, G, d).transpose(2, 3).reshape(B, T * G, Hk, d)
                ck = kd.reshape(B, T * L, Hk, d) if L else None
                cv = vd.reshape(B, T * L, Hk, d) if L else None
                fwd_fn = triton_fns[0]
                t_auth = bench_ms(lambda: fwd_fn(q=qa, k=k, v=v, g_cumsum=None, scale=1.0 / math.sqrt(d),
                                                 cu_seqlens=None, cached_k=ck, cached_v=cv,
                                                 moda_group_num=G, is_causal=causal),
                                  budget_ms=200, max_reps=20)
            except Exception as e:
                print(f"  authors' kernel failed at {label}: {type(e).__name__}: {str(e)[:200]}")
        del q, k, v, kd, vd, m
        torch.cuda.empty_cache()
        row = (f"{label:<20} {kname:<13} {t_fwd:9.3f} {fl / t_fwd / 1e9:6.0f} {t_fb:9.3f} {3.5 * fl / t_fb / 1e9:6.0f} "
               f"{fl_fwd:9.3f} {fl_fb:9.3f} {cu_fwd:9.3f} {cu_fb:9.3f} {t_torch:9.3f} {t_auth:9.3f} "
               f"{t_fwd / fl_fwd:9.2f} {t_fwd / t_auth:9.2f} {t_fb / fl_fb:9.2f} {t_fb / cu_fb:9.2f} {t_fwd / cu_fwd:9.2f}")
        rows.append(row)
        print(row, flush=True)
    print("\n" + hdr)
    for r in rows:
        print(r)
    print("times in ms (CUDA-event medians); TF/s = useful FLOPs of our forward (f+b: 3.5x them); x/y = our time over"
          " the baseline's (flash, cudnn: torch SDPA plain attention; authr: the authors' MoDA forward); nan = not run")


if __name__ == "__main__":
    main()
