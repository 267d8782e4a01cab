"""bench/memory_floor.py: what this GPU's memory system gives a depth-streaming kernel.

The depth backward (cuda/attn_bwd_depth.cu) reads kd, vd and writes dkd, dvd once; the forward's
depth phase reads kd, vd. Their floor is set by the memory system, not by FLOPs. This prints, for
the depth tensors of a model shape ([B, T, L, Hk, d] bf16), the time and rate of: a copy of kd
and vd into dkd and dvd (torch's copy_), a read of both (a sum), and a write of both (fill_).
Median of CUDA-event timings; rates count bytes moved (read + written). `f+b floor` is read + copy:
the least time a MoDA forward and backward can spend on the depth rows alone at this card's rates,
whatever the kernels (the sequence part comes on top).
    python3 bench/memory_floor.py [--only=LM-64]
"""
import argparse
import torch

SHAPES = [  # label, B, T, L, Hk, d
    ("LM-64", 8, 2048, 126, 2, 64),
    ("DeiT-Tiny-64", 256, 197, 126, 1, 64),
    ("DeiT-Tiny", 256, 197, 22, 1, 64),
    ("T=4096", 1, 4096, 64, 8, 64),
]


def timed(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"{'shape':14s} {'MB/tensor':>9s} {'copy ms':>8s} {'copy TB/s':>9s} {'read ms':>8s} {'read TB/s':>9s}"
          f" {'write ms':>8s} {'write TB/s':>10s} {'f+b floor':>9s}")
    for label, B, T, L, Hk, d in SHAPES:
        if args.only and not any(o in label for o in args.only.split(",")):
            continue
        g = torch.Generator(device="cuda").manual_seed(1)
        kd, vd = (torch.randn(B, T, L, Hk, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
        dkd, dvd = torch.empty_like(kd), torch.empty_like(vd)
        nbytes = kd.numel() * kd.element_size()
        out = torch.empty(2, device="cuda", dtype=torch.float32)

        def copy():
            dkd.copy_(kd)
            dvd.copy_(vd)

        def read():
            out[0] = kd.sum(dtype=torch.float32)
            out[1] = vd.sum(dtype=torch.float32)

        def write():
            dkd.fill_(1.0)
            dvd.fill_(2.0)

        tc, tr, tw = timed(copy), timed(read), timed(write)
        print(f"{label:14s} {nbytes / 1e6:9.1f} {tc:8.3f} {4 * nbytes / tc / 1e9:9.2f} {tr:8.3f} "
              f"{2 * nbytes / tr / 1e9:9.2f} {tw:8.3f} {2 * nbytes / tw / 1e9:10.2f} {tr + tc:9.3f}")


if __name__ == "__main__":
    main()
