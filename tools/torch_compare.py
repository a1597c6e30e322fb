#!/usr/bin/env python3
"""torch_compare.py: trains the same model on the same parameters and data with `dualpipe train`
and with PyTorch, and compares the final parameters, to check dualpipe's arithmetic against an
independent implementation (not only against its own single-rank reference).

  python3 tools/torch_compare.py --dualpipe ./tools/dualpipe --steps 3

It asks dualpipe for the model's parameter names and shapes (--steps 0 --save-params), writes
random parameters (--init) and data (--data) of its own as safetensors with the standard library
only, runs dualpipe on them (--save-params), runs the same steps in PyTorch, in float64 by
default, and prints the largest absolute and relative differences with PASS or FAIL against the
stated tolerance. Exits 0 on PASS, 1 on FAIL, 2 on a usage or run error, and 0 with
"SKIP: torch not installed" when PyTorch is missing.

The PyTorch model is what doc/design.md and the engine's block files describe:
  layer L (L = stage * layers_per_stage + layer in stage, stages in pipeline order)
    mlp:      y = linear2(gelu(linear1(x)))                          (Linear without bias)
    residual: y = x + linear2(gelu(linear1(rmsnorm(x))))             rmsnorm(x) = x / sqrt(mean(x^2) + 1e-6) * w
  gelu: the exact (erf) form; dualpipe's cpu driver uses an erf approximation good to 1.5e-7
  loss per micro-batch: mse = mean over all tokens x hidden elements of (y - target)^2;
        xent = softmax cross-entropy over hidden classes, mean over tokens
  each micro-batch's loss is differentiated on its own and the gradients are summed over the
  micro-batches (DualPipe's two copies of a stage each sum their half, then the halves are
  added); one optimizer step per training step: AdamW (lr 1e-3, betas 0.9/0.999, eps 1e-8,
  decoupled weight decay 0 unless given) as torch.optim.AdamW, or SGD as torch.optim.SGD.
With --reference python the same maths runs without PyTorch, written out by hand (the test
suite's independent check of dualpipe's arithmetic).
"""
import argparse
import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile
from array import array

# ----------------------------------------------------------------------------
# safetensors with the standard library (little-endian hosts, as the format's bytes are)

SIZES = {"F32": 4, "I32": 4, "F64": 8}
CODES = {"F32": "f", "I32": "i", "F64": "d"}


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, dtype, shape, flat list of numbers)"""
    header, blobs, at = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, values in tensors:
        blob = array(CODES[dtype], values).tobytes()
        assert len(blob) == SIZES[dtype] * math.prod(shape), name
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [at, at + len(blob)]}
        blobs.append(blob)
        at += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_safetensors(path):
    """{name: (dtype, shape, list of numbers)}, and the metadata"""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n :]
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        out[name] = (e["dtype"], e["shape"], array(CODES[e["dtype"]], data[b:end]).tolist())
    return out, meta


# ----------------------------------------------------------------------------
# the run


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dualpipe", default="./tools/dualpipe", help="the dualpipe program (default ./tools/dualpipe)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--schedule", default="dualpipe")
    p.add_argument("--pp", type=int, default=2)
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--layers-per-stage", type=int, default=1)
    p.add_argument("--block", choices=["residual", "mlp"], default="residual")
    p.add_argument("--loss", choices=["mse", "xent"], default="mse")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--lr", type=float, default=None, help="default: 1e-3 (adamw), 1e-2 (sgd), as dualpipe's")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--momentum", type=float, default=0.9, help="sgd only")
    p.add_argument("--seed", type=int, default=1234, help="of the parameters and data this script writes")
    p.add_argument("--torch-dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--atol", type=float, default=2e-5, help="per element: |dualpipe - torch| <= atol + rtol |torch|")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--keep", metavar="DIR", help="write the files here and keep them (default: a temporary directory)")
    p.add_argument("--reference", choices=["torch", "python"], default="torch",
                   help="torch (default), or python: the same maths written out by hand in float64 with the "
                        "standard library (slow: small shapes only; what the test suite runs without PyTorch)")
    return p.parse_args()


def run_dualpipe(a, extra):
    cmd = [a.dualpipe, "train", "--schedule", a.schedule, "--pp", str(a.pp), "--chunks", str(a.chunks),
           "--hidden", str(a.hidden), "--tokens", str(a.tokens), "--layers-per-stage", str(a.layers_per_stage),
           "--block", a.block, "--loss", a.loss, "--optimizer", a.optimizer, "--weight-decay", repr(a.weight_decay),
           "--threads", "1"]
    if a.lr is not None:
        cmd += ["--lr", repr(a.lr)]
    if a.optimizer == "sgd":
        cmd += ["--momentum", repr(a.momentum)]
    cmd += extra
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(r.stdout)
    if r.returncode != 0:
        print("torch_compare: dualpipe failed (exit %d)" % r.returncode, file=sys.stderr)
        sys.exit(2)
    return r.stdout


def layer_index(name):
    # layers.<L>.<param>.weight
    return int(name.split(".")[1])


def make_files(a, d):
    """the model's names and shapes from dualpipe, then random parameters and data of our own"""
    shapes_file = os.path.join(d, "shapes.safetensors")
    run_dualpipe(a, ["--steps", "0", "--quiet", "--save-params", shapes_file])
    seeded, _ = read_safetensors(shapes_file)
    rng = random.Random(a.seed)
    params = []
    for name in sorted(seeded, key=lambda n: (layer_index(n), n)):
        dtype, shape, _ = seeded[name]
        if name.endswith(".norm.weight"):
            values = [1.0 + 0.1 * rng.uniform(-1, 1) for _ in range(math.prod(shape))]
        else:  # as nn.Linear: uniform in +-1/sqrt(in)
            bound = 1.0 / math.sqrt(shape[1])
            values = [rng.uniform(-bound, bound) for _ in range(math.prod(shape))]
        params.append((name, "F32", shape, array("f", values).tolist()))  # rounded to fp32 once
    write_safetensors(os.path.join(d, "init.safetensors"), params, {"format": "pt"})
    data = []
    C, T, H = a.chunks, a.tokens, a.hidden
    for k in range(1, a.steps + 1):
        data.append(("step%d.inputs" % k, "F32", [C, T, H], [rng.uniform(-1, 1) for _ in range(C * T * H)]))
        if a.loss == "xent":
            data.append(("step%d.targets" % k, "I32", [C, T], [rng.randrange(H) for _ in range(C * T)]))
        else:
            data.append(("step%d.targets" % k, "F32", [C, T, H], [0.5 * rng.uniform(-1, 1) for _ in range(C * T * H)]))
    write_safetensors(os.path.join(d, "data.safetensors"), data)


def run_torch(a, torch, d):
    F = torch.nn.functional
    dt = getattr(torch, a.torch_dtype)
    init, _ = read_safetensors(os.path.join(d, "init.safetensors"))
    data, _ = read_safetensors(os.path.join(d, "data.safetensors"))
    names = sorted(init, key=lambda n: (layer_index(n), n))
    params = {n: torch.tensor(init[n][2], dtype=dt).reshape(init[n][1]).requires_grad_(True) for n in names}
    layers = sorted({layer_index(n) for n in names})

    def forward(x):
        for L in layers:
            w1, w2 = params["layers.%d.linear1.weight" % L], params["layers.%d.linear2.weight" % L]
            if a.block == "residual":
                wn = params["layers.%d.norm.weight" % L]
                xn = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * wn
                x = x + F.linear(F.gelu(F.linear(xn, w1)), w2)
            else:
                x = F.linear(F.gelu(F.linear(x, w1)), w2)
        return x

    plist = [params[n] for n in names]
    if a.optimizer == "adamw":
        opt = torch.optim.AdamW(plist, lr=a.lr if a.lr is not None else 1e-3, betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=a.weight_decay)
    else:
        opt = torch.optim.SGD(plist, lr=a.lr if a.lr is not None else 1e-2, momentum=a.momentum,
                              weight_decay=a.weight_decay)
    C, T, H = a.chunks, a.tokens, a.hidden
    for k in range(1, a.steps + 1):
        x = torch.tensor(data["step%d.inputs" % k][2], dtype=dt).reshape(C, T, H)
        opt.zero_grad(set_to_none=False)
        losses = []
        for c in range(C):  # each micro-batch's loss differentiated on its own, gradients summed
            y = forward(x[c])
            if a.loss == "xent":
                t = torch.tensor(data["step%d.targets" % k][2], dtype=torch.int64).reshape(C, T)
                loss = F.cross_entropy(y, t[c])
            else:
                t = torch.tensor(data["step%d.targets" % k][2], dtype=dt).reshape(C, T, H)
                loss = ((y - t[c]) ** 2).mean()
            loss.backward()
            losses.append(loss.item())
        opt.step()
        print("torch step %4d/%d  loss %.6f" % (k, a.steps, sum(losses) / C))
    return {n: params[n].detach().double().reshape(-1).tolist() for n in names}


def run_python(a, d):
    """The same steps without PyTorch: forward and backward written out in float64 by hand."""
    init, _ = read_safetensors(os.path.join(d, "init.safetensors"))
    data, _ = read_safetensors(os.path.join(d, "data.safetensors"))
    P = {n: list(init[n][2]) for n in init}
    H, C, T = a.hidden, a.chunks, a.tokens
    layers = sorted({layer_index(n) for n in P})
    Fw = len(P["layers.%d.linear1.weight" % layers[0]]) // H
    m = {n: [0.0] * len(P[n]) for n in P}
    v = {n: [0.0] * len(P[n]) for n in P}

    def linear(x, w, n_in, n_out):  # x [T][n_in], w [n_out * n_in] row-major: x w^T
        return [[sum(row[i] * w[o * n_in + i] for i in range(n_in)) for o in range(n_out)] for row in x]

    def gelu(z):
        return 0.5 * z * (1.0 + math.erf(z / math.sqrt(2.0)))

    def dgelu(z):
        return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0))) + z * math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)

    for k in range(1, a.steps + 1):
        X, Y = data["step%d.inputs" % k][2], data["step%d.targets" % k][2]
        G = {n: [0.0] * len(P[n]) for n in P}
        losses = []
        for c in range(C):
            x = [list(X[(c * T + t) * H:(c * T + t + 1) * H]) for t in range(T)]
            saved = []
            for L in layers:
                w1, w2 = P["layers.%d.linear1.weight" % L], P["layers.%d.linear2.weight" % L]
                if a.block == "residual":
                    wn = P["layers.%d.norm.weight" % L]
                    r = [1.0 / math.sqrt(sum(e * e for e in row) / H + 1e-6) for row in x]
                    xn = [[row[i] * r[t] * wn[i] for i in range(H)] for t, row in enumerate(x)]
                else:
                    r, xn = None, x
                pre = linear(xn, w1, H, Fw)
                g = [[gelu(e) for e in row] for row in pre]
                z = linear(g, w2, Fw, H)
                saved.append((x, r, xn, pre, g))
                x = [[x[t][i] + z[t][i] for i in range(H)] for t in range(T)] if a.block == "residual" else z
            if a.loss == "xent":
                labels = Y[c * T:(c + 1) * T]
                loss, dy = 0.0, []
                for t in range(T):
                    mx = max(x[t])
                    se = sum(math.exp(e - mx) for e in x[t])
                    loss += math.log(se) + mx - x[t][labels[t]]
                    row = [math.exp(e - mx) / se / T for e in x[t]]
                    row[labels[t]] -= 1.0 / T
                    dy.append(row)
                loss /= T
            else:
                tg = [Y[(c * T + t) * H:(c * T + t + 1) * H] for t in range(T)]
                loss = sum((x[t][i] - tg[t][i]) ** 2 for t in range(T) for i in range(H)) / (T * H)
                dy = [[2.0 * (x[t][i] - tg[t][i]) / (T * H) for i in range(H)] for t in range(T)]
            losses.append(loss)
            for L, (x0, r, xn, pre, g) in reversed(list(zip(layers, saved))):
                w1, w2 = P["layers.%d.linear1.weight" % L], P["layers.%d.linear2.weight" % L]
                g1, g2 = G["layers.%d.linear1.weight" % L], G["layers.%d.linear2.weight" % L]
                for i in range(H):
                    for f in range(Fw):
                        g2[i * Fw + f] += sum(dy[t][i] * g[t][f] for t in range(T))
                da = [[sum(dy[t][i] * w2[i * Fw + f] for i in range(H)) * dgelu(pre[t][f]) for f in range(Fw)]
                      for t in range(T)]
                for f in range(Fw):
                    for i in range(H):
                        g1[f * H + i] += sum(da[t][f] * xn[t][i] for t in range(T))
                dxn = [[sum(da[t][f] * w1[f * H + i] for f in range(Fw)) for i in range(H)] for t in range(T)]
                if a.block != "residual":
                    dy = dxn
                    continue
                wn, gn = P["layers.%d.norm.weight" % L], G["layers.%d.norm.weight" % L]
                for i in range(H):
                    gn[i] += sum(dxn[t][i] * x0[t][i] * r[t] for t in range(T))
                dx = []
                for t in range(T):
                    u = [dxn[t][i] * wn[i] for i in range(H)]
                    s = sum(u[i] * x0[t][i] for i in range(H)) / H
                    dx.append([r[t] * u[i] - r[t] ** 3 * x0[t][i] * s + dy[t][i] for i in range(H)])
                dy = dx
        for n in P:  # torch.optim.AdamW / SGD, element by element
            p, g, mm, vv = P[n], G[n], m[n], v[n]
            for i in range(len(p)):
                if a.optimizer == "adamw":
                    lr = a.lr if a.lr is not None else 1e-3
                    mm[i] = 0.9 * mm[i] + 0.1 * g[i]
                    vv[i] = 0.999 * vv[i] + 0.001 * g[i] * g[i]
                    p[i] *= 1.0 - lr * a.weight_decay
                    p[i] -= lr * (mm[i] / (1.0 - 0.9 ** k)) / (math.sqrt(vv[i] / (1.0 - 0.999 ** k)) + 1e-8)
                else:
                    lr = a.lr if a.lr is not None else 1e-2
                    gi = g[i] + a.weight_decay * p[i]
                    mm[i] = a.momentum * mm[i] + gi if k > 1 else gi
                    p[i] -= lr * mm[i]
        print("python step %4d/%d  loss %.6f" % (k, a.steps, sum(losses) / C))
    return P


def compare(a, ours, theirs):
    worst_abs = worst_rel = 0.0
    outside = total = 0
    first = None
    for name in sorted(theirs, key=lambda n: (layer_index(n), n)):
        if name not in ours:
            print("FAIL: dualpipe saved no %s" % name)
            return 1
        got, want = ours[name][2], theirs[name]
        name_abs = 0.0
        for i, (g, w) in enumerate(zip(got, want)):
            diff = abs(g - w) if not (math.isnan(g) or math.isnan(w)) else math.inf
            rel = diff / abs(w) if w != 0 else (0.0 if diff == 0 else math.inf)
            worst_abs, worst_rel, name_abs = max(worst_abs, diff), max(worst_rel, rel), max(name_abs, diff)
            total += 1
            if not diff <= a.atol + a.rtol * abs(w):
                outside += 1
                if first is None:
                    first = (name, i, g, w)
        print("  %-28s max |difference| %.3g" % (name, name_abs))
    if set(ours) != set(theirs):
        print("FAIL: the tensors differ: %s" % sorted(set(ours) ^ set(theirs)))
        return 1
    print("parameters after %d steps: max abs difference %.3g, max rel difference %.3g over %d elements"
          % (a.steps, worst_abs, worst_rel, total))
    print("tolerance per element: |dualpipe - reference| <= %g + %g |reference| (fp32 dualpipe against %s)"
          % (a.atol, a.rtol, "torch " + a.torch_dtype if a.reference == "torch" else "python float64"))
    if outside:
        name, i, g, w = first
        print("FAIL: %d elements outside; the first: %s[%d] dualpipe %.9g reference %.9g" % (outside, name, i, g, w))
        return 1
    print("PASS")
    return 0


def main():
    a = parse_args()
    torch = None
    if a.reference == "torch":
        try:
            import torch
        except ImportError:
            print("SKIP: torch not installed")
            return 0
    if a.steps < 1:
        print("torch_compare: --steps must be >= 1", file=sys.stderr)
        return 2
    tmp = None
    if a.keep:
        os.makedirs(a.keep, exist_ok=True)
        d = a.keep
    else:
        tmp = tempfile.TemporaryDirectory(prefix="torch_compare-")
        d = tmp.name
    make_files(a, d)
    out = os.path.join(d, "dualpipe.safetensors")
    run_dualpipe(a, ["--steps", str(a.steps), "--init", os.path.join(d, "init.safetensors"),
                     "--data", os.path.join(d, "data.safetensors"), "--save-params", out])
    theirs = run_torch(a, torch, d) if torch else run_python(a, d)
    ours, _ = read_safetensors(out)
    rc = compare(a, ours, theirs)
    if tmp:
        tmp.cleanup()
    return rc


if __name__ == "__main__":
    sys.exit(main())
