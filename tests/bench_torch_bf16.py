#!/usr/bin/env python3
"""tests/bench_torch_bf16.py — PyTorch bf16 against dinomap bf16 on the same safetensors file.

Needs PyTorch and transformers (PyPI: pip install torch transformers safetensors; for this check
only, dinomap does not use them). Without --model it writes a random full-size ViT-L/16 in the
Hugging Face DINOv3ViTModel layout once (build/bench/hf_vitl16/: model.safetensors + config.json,
fp32), then, interleaving the two, times:
  - PyTorch: DINOv3ViTModel in bfloat16 (its CPU kernels: oneDNN), torch.inference_mode, one
    512x512 tile per call, after a warm-up call;
  - dinomap: `dinomap forward --precision bf16` on the same file, on 1 tile and on a batch of
    BATCH tiles; the forward pass times it reports (weights loading excluded) give the time per
    tile once set up, (T_BATCH - T_1) / (BATCH - 1), as PyTorch's is after its warm-up. (The
    first call's set-up, mostly oneDNN generating its kernels, is printed too: a run pays it
    once.)
Both on --threads threads. Prints seconds per tile (best and median of --reps) and the ratio.
Not a test: it asserts nothing.

  python3 tests/bench_torch_bf16.py [--dinomap ./dinomap] [--model HF_DIR] [--threads 2]
                                    [--size 512] [--reps 3] [--batch 4] [--compile]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dinomap", default="./dinomap")
    ap.add_argument("--model", help="a Hugging Face DINOv3ViTModel folder (default: random ViT-L/16)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (bf16)")
    a = ap.parse_args()
    if a.batch < 2:
        ap.error("--batch must be at least 2")
    try:
        import numpy as np
        import torch
        from transformers import DINOv3ViTConfig, DINOv3ViTModel
    except ImportError as e:
        print(f"bench_torch_bf16: needs PyTorch and transformers ({e}); "
              "pip install torch transformers safetensors")
        return 2
    torch.set_num_threads(a.threads)
    model_dir = a.model
    if not model_dir:
        model_dir = "build/bench/hf_vitl16"
        if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
            print(f"writing a random ViT-L/16 (Hugging Face layout, fp32) once: {model_dir}")
            cfg = DINOv3ViTConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, num_register_tokens=4, patch_size=16,
                                  image_size=a.size, key_bias=False, layerscale_value=0.3)
            torch.manual_seed(0)
            DINOv3ViTModel(cfg).eval().save_pretrained(model_dir, safe_serialization=True)
    model = DINOv3ViTModel.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    rng = np.random.default_rng(0)
    img = rng.standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
    x = torch.from_numpy(img[:1]).to(torch.bfloat16)
    tmp = tempfile.mkdtemp(prefix="dm_torch_bench_")
    npy = os.path.join(tmp, "in.npy")
    np.save(npy, img)
    npy1 = os.path.join(tmp, "in1.npy")
    np.save(npy1, img[:1])

    def torch_once(m):
        time.sleep(1)
        with torch.inference_mode():
            t0 = time.perf_counter()
            m(pixel_values=x)
            return time.perf_counter() - t0

    def dinomap_run(path):
        time.sleep(1)  # PyTorch's OpenMP threads spin a while after a call: let them sleep
        cmd = [a.dinomap, "forward", "-m", model_dir, "-i", path, "-o", os.path.join(tmp, "o"),
               "--precision", "bf16", "--threads", str(a.threads)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        m = re.search(r"forward pass: ([0-9.]+) s", r.stderr + r.stdout)
        if r.returncode or not m:
            sys.exit(f"bench_torch_bf16: dinomap failed ({r.returncode}): {r.stderr.strip()}")
        return float(m.group(1))

    setup = []

    def dinomap_once():
        t1, tb = dinomap_run(npy1), dinomap_run(npy)
        per = (tb - t1) / (a.batch - 1)
        setup.append(t1 - per)
        return per

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads, oneDNN "
          f"{'on' if torch.backends.mkldnn.is_available() else 'off'}); file {model_dir}; "
          f"{a.size}x{a.size} px; load average {os.getloadavg()[0]:.2f}")
    torch_once(model)  # warm-up
    tt, td = [], []
    for _ in range(a.reps):  # interleaved
        tt.append(torch_once(model))
        td.append(dinomap_once())
    tc = []
    if a.compile:
        cm = torch.compile(model)
        torch_once(cm)
        tc = [torch_once(cm) for _ in range(a.reps)]
    def show(name, v):
        print(f"{name:24s} {min(v):.3f} s/tile best, {statistics.median(v):.3f} median "
              f"(of {len(v)})")
    show("PyTorch bf16", tt)
    if tc:
        show("PyTorch bf16 compiled", tc)
    show("dinomap --precision bf16", td)
    print(f"{'dinomap first-call set-up':24s} {min(setup):.3f} s best (once per run)")
    print(f"ratio PyTorch / dinomap: {min(tt) / min(td):.2f} best/best, "
          f"{statistics.median(tt) / statistics.median(td):.2f} median/median"
          + (f"; compiled / dinomap {min(tc) / min(td):.2f}" if tc else ""))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
