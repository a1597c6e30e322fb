# bench_reference.py: times deepseek-ai/DualPipe's example stage (Linear h->4h, GELU, Linear 4h->h)
# side by side with `dualpipe bench-cuda`. Two GPUs: DualPipe, pp 2, 20 chunks. One GPU: the
# example's own sequential reference step (the same work as both ranks). TF32 off. Usage: put the
# reference's source (git archive of deepseek-ai/DualPipe) in a folder `ref` beside this file,
# then `python3 bench_reference.py` (REF_STEPS, REF_DTYPES=float32,bfloat16 to choose).
import os, sys, time, statistics
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "ref")); sys.path.insert(0, os.path.join(here, "ref", "examples"))
import torch, torch.nn as nn, torch.distributed as dist
import example_dualpipe as ex
from dualpipe import DualPipe, set_p2p_tensor_shapes, set_p2p_tensor_dtype

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
CHUNKS, WARM, STEPS = 20, 2, int(os.environ.get("REF_STEPS", "8"))

def gemm_floor(h, t, dtype):
    x = torch.randn(t, h, dtype=dtype) * 0.1; w1 = torch.randn(4 * h, h, dtype=dtype) * 0.05
    w2 = torch.randn(h, 4 * h, dtype=dtype) * 0.05; hh = torch.randn(t, 4 * h, dtype=dtype) * 0.1
    dy = torch.randn(t, h, dtype=dtype) * 0.1; dh = torch.randn(t, 4 * h, dtype=dtype) * 0.1
    ops = [lambda: torch.nn.functional.linear(x, w1), lambda: torch.nn.functional.linear(hh, w2),
           lambda: dy @ w2, lambda: dh @ w1, lambda: dy.T @ hh, lambda: dh.T @ x]
    total = 0.0
    for op in ops:
        for _ in range(3): op()
        ts = []
        for _ in range(10):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); op(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b))
        total += statistics.median(ts)
    return total  # ms per stage visit

def run_dualpipe(rank, pp, h, t, dtype, q):
    dist.init_process_group("nccl", rank=rank, world_size=pp, device_id=torch.device(f"cuda:{rank}"))
    torch.cuda.set_device(rank); torch.set_default_device(f"cuda:{rank}"); torch.manual_seed(233)
    set_p2p_tensor_shapes([(1, t, h)]); set_p2p_tensor_dtype(dtype)
    mods = nn.Sequential(ex.PipelineStage(h), ex.PipelineStage(h)).to(dtype)
    model = DualPipe(mods)
    first, last = rank == 0, rank == pp - 1
    x = torch.randn(CHUNKS // 2, t, h, dtype=dtype) if first or last else None
    l = torch.randn(CHUNKS // 2, t, h, dtype=dtype) if first or last else None
    ts = []
    for i in range(WARM + STEPS):
        torch.cuda.synchronize(); dist.barrier(); t0 = time.perf_counter()
        model.step(x, num_chunks=CHUNKS, criterion=ex.criterion, labels=(l,), return_outputs=False)
        torch.cuda.synchronize(); dist.barrier(); ts.append((time.perf_counter() - t0) * 1e3)
        model.zero_grad()
    floor = gemm_floor(h, t, dtype) * CHUNKS * 2 / pp if rank == 0 else 0
    if rank == 0: q.put((statistics.median(ts[WARM:]), min(ts[WARM:]), floor))
    dist.destroy_process_group()

def run_sequential(h, t, dtype):
    torch.set_default_device("cuda:0"); torch.manual_seed(233)
    mods = nn.Sequential(ex.PipelineStage(h), ex.PipelineStage(h)).to(dtype)
    x = torch.randn(CHUNKS, t, h, dtype=dtype); l = torch.randn(CHUNKS, t, h, dtype=dtype)
    ts = []
    for i in range(WARM + STEPS):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        ex.ref_step(x, l, mods, CHUNKS)
        torch.cuda.synchronize(); ts.append((time.perf_counter() - t0) * 1e3)
        mods.zero_grad()
    return statistics.median(ts[WARM:]), min(ts[WARM:]), gemm_floor(h, t, dtype) * CHUNKS * 2

if __name__ == "__main__":
    import torch.multiprocessing as mp
    ngpu = torch.cuda.device_count()
    shapes = [(1024, 2048), (2048, 4096), (4096, 8192)]
    dtypes = [d for d in os.environ.get("REF_DTYPES", "float32,bfloat16").split(",")]
    print(f"reference: deepseek-ai/DualPipe example stage, {CHUNKS} chunks, TF32 off, "
          f"{'DualPipe pp 2 on 2 GPUs' if ngpu >= 2 else 'sequential ref_step on 1 GPU (both stages)'}; "
          f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    for dn in dtypes:
        dtype = getattr(torch, dn)
        for h, t in shapes:
            flops_gpu = CHUNKS * 48 * t * h * h * (2 / (2 if ngpu >= 2 else 1))
            if ngpu >= 2:
                os.environ.setdefault("MASTER_ADDR", "127.0.0.1"); os.environ["MASTER_PORT"] = str(29500 + h % 1000 + t % 7)
                ctx = mp.get_context("spawn"); q = ctx.Queue()
                ps = [ctx.Process(target=run_dualpipe, args=(r, 2, h, t, dtype, q)) for r in range(2)]
                [p.start() for p in ps]; med, best, floor = q.get(); [p.join() for p in ps]
            else:
                med, best, floor = run_sequential(h, t, dtype)
            print(f"  {dn:8s} hidden {h:5d} tokens {t:5d}: step median {med:9.2f} ms (best {best:9.2f}), "
                  f"{flops_gpu / (med * 1e-3) * 1e-12:7.1f} TFLOP/s per GPU; GEMM floor {floor:9.2f} ms "
                  f"({flops_gpu / (floor * 1e-3) * 1e-12:6.1f} TFLOP/s); step/floor {med / floor:.3f}", flush=True)
