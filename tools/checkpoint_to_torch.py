#!/usr/bin/env python3
"""checkpoint_to_torch.py: loads a `dualpipe train --save` checkpoint into a PyTorch model of the
same architecture, and checks that the model computes what dualpipe computes on the same inputs.

  python3 tools/checkpoint_to_torch.py CHECKPOINT --dualpipe ./tools/dualpipe

CHECKPOINT is a checkpoint directory (holding index.json) or the directory --save wrote (its
`latest`, else its highest step-N). The script checks each file's size and CRC-32 against the
index, reads the tensors with the `safetensors` package when it is importable (else with the small
reader below: the format is a little-endian u64 header length, a JSON header, then the bytes),
builds the model the index describes, loads the parameters with load_state_dict(strict=True) and
the optimizer's moments into torch.optim.AdamW's (or SGD's) state. Then it runs
`dualpipe train --resume CHECKPOINT --steps STEP --save-outputs FILE` (no training step: the
forward of the next batch's inputs on the checkpoint's parameters), or reads such a FILE given
with --outputs, runs the same inputs through the PyTorch model, and compares the outputs:
|dualpipe - torch| <= atol + rtol |torch| element by element, NaN never passing. The default
tolerance is for an fp32 checkpoint (atol 1e-5, rtol 1e-4: fp32 rounding in a different order,
and the cpu driver's erf approximation, good to 1.5e-7); a bf16 run's forward rounds activations
and weight copies to bf16, so for one the default is atol 3e-2, rtol 3e-2.

Exits 0 on PASS, 1 on FAIL, 2 on a bad checkpoint or a failed run, and 0 with
"SKIP: torch not installed" when PyTorch is missing.

The model: layer L (0 .. layers-1, in pipeline order) of kind
    mlp:      y = linear2(gelu(linear1(x)))                       (Linear without bias)
    residual: y = x + linear2(gelu(linear1(rmsnorm(x))))          rmsnorm(x) = x / sqrt(mean(x^2) + eps) * norm.weight
with state_dict keys layers.L.linear1.weight [ffn, hidden], layers.L.linear2.weight [hidden, ffn],
layers.L.norm.weight [hidden]; the optimizer's state is optimizer.<key>.exp_avg, .exp_avg_sq (AdamW)
or .momentum_buffer (SGD with momentum), and the index's "step" is the optimizer's step count.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib

DTYPES = {"F32": ("f", 4), "F64": ("d", 8), "I32": ("i", 4), "I64": ("q", 8)}


class BadCheckpoint(Exception):
    pass


# ----------------------------------------------------------------------------
# the checkpoint


def find_checkpoint(path):
    """The checkpoint directory path means, as `dualpipe train --resume` finds it."""
    if os.path.isfile(os.path.join(path, "index.json")):
        return path
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest):
        name = open(latest).read().strip()
        if name.startswith("step-") and os.path.isdir(os.path.join(path, name)):
            return os.path.join(path, name)
    steps = [n for n in os.listdir(path) if n.startswith("step-") and n[5:].isdigit()] if os.path.isdir(path) else []
    if not steps:
        raise BadCheckpoint("%s: no checkpoint there (no index.json, no latest, no step-N directory)" % path)
    return os.path.join(path, max(steps, key=lambda n: int(n[5:])))


def read_safetensors_builtin(path, raw, torch):
    """{name: tensor} from the bytes of a safetensors file, with the standard library and torch"""
    if len(raw) < 8:
        raise BadCheckpoint("%s: truncated (%d bytes)" % (path, len(raw)))
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise BadCheckpoint("%s: the header says %d bytes, the file has %d after the length" % (path, n, len(raw) - 8))
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n:]
    out = {}
    for name, e in header.items():
        code, size = DTYPES.get(e["dtype"], (None, 0))
        begin, end = e["data_offsets"]
        count = 1
        for d in e["shape"]:
            count *= d
        if code is None or not 0 <= begin <= end <= len(data) or end - begin != count * size:
            raise BadCheckpoint("%s: tensor %s: dtype %s, shape %s and data_offsets %s do not fit the file" %
                                (path, name, e["dtype"], e["shape"], e["data_offsets"]))
        values = struct.unpack("<%d%s" % (count, code), data[begin:end])
        dtype = torch.float32 if code == "f" else torch.float64 if code == "d" else torch.int64
        out[name] = torch.tensor(values, dtype=dtype).reshape(e["shape"])
    return out


def load_checkpoint(path, torch, reader):
    """(index, {name: tensor}, which reader read it), every file checked against the index"""
    ckpt = find_checkpoint(path)
    index_path = os.path.join(ckpt, "index.json")
    try:
        index = json.load(open(index_path))
    except (OSError, ValueError) as e:
        raise BadCheckpoint("%s: %s" % (index_path, e))
    if index.get("format") != "dualpipe-checkpoint" or index.get("version") != 1:
        raise BadCheckpoint("%s: not a dualpipe checkpoint index of version 1" % index_path)
    use_package = False
    if reader != "builtin":
        try:
            import safetensors.torch as st  # noqa: F401
            use_package = True
        except ImportError:
            if reader == "safetensors":
                raise BadCheckpoint("--reader safetensors: the safetensors package is not importable")
    tensors = {}
    for f in index["files"]:
        fpath = os.path.join(ckpt, f["name"])
        raw = open(fpath, "rb").read()
        if len(raw) != f["bytes"]:
            raise BadCheckpoint("%s: %d bytes, the index says %d (truncated?)" % (fpath, len(raw), f["bytes"]))
        crc = "%08x" % (zlib.crc32(raw) & 0xFFFFFFFF)
        if crc != f["crc32"]:
            raise BadCheckpoint("%s: checksum mismatch: CRC-32 %s, the index says %s" % (fpath, crc, f["crc32"]))
        if use_package:
            import safetensors.torch as st
            part = st.load(raw)
        else:
            part = read_safetensors_builtin(fpath, raw, torch)
        for name in part:
            if name in tensors:
                raise BadCheckpoint("%s: tensor %s is in two files" % (fpath, name))
        tensors.update(part)
    return ckpt, index, tensors, "the safetensors package" if use_package else "the script's own reader"


# ----------------------------------------------------------------------------
# the model


def build_model(torch, index):
    nn, F = torch.nn, torch.nn.functional
    m = index["model"]
    hidden, ffn, eps = m["hidden"], m["ffn"], m["norm_eps"]

    class Block(nn.Module):
        def __init__(self, kind):
            super().__init__()
            if kind not in ("mlp", "residual"):
                raise BadCheckpoint("layer kind %s: this script knows mlp and residual" % kind)
            self.kind = kind
            self.linear1 = nn.Linear(hidden, ffn, bias=False)
            self.linear2 = nn.Linear(ffn, hidden, bias=False)
            if kind == "residual":
                self.norm = nn.Module()
                self.norm.weight = nn.Parameter(torch.ones(hidden))

        def forward(self, x):
            if self.kind == "mlp":
                return self.linear2(F.gelu(self.linear1(x)))
            xn = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.norm.weight
            return x + self.linear2(F.gelu(self.linear1(xn)))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Block(k) for k in m["layer_kinds"]])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    return Model()


def load_optimizer(torch, index, model, tensors):
    """torch.optim's optimizer for model with the checkpoint's state in it"""
    o = index["optimizer"]
    params = dict(model.named_parameters())
    if o["kind"] == "adamw":
        opt = torch.optim.AdamW(params.values(), lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
                                weight_decay=o["weight_decay"])
        keys = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}
    else:
        opt = torch.optim.SGD(params.values(), lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])
        keys = {"momentum_buffer": "momentum_buffer"} if o["momentum"] else {}
    for name, p in params.items():
        state = {"step": torch.tensor(float(index["step"]))} if o["kind"] == "adamw" else {}
        for ours, theirs in keys.items():
            state[theirs] = tensors["optimizer.%s.%s" % (name, ours)].to(p.dtype).clone()
        opt.state[p] = state
    return opt


# ----------------------------------------------------------------------------
# dualpipe's forward


def dualpipe_outputs(a, ckpt, index, workdir):
    m, o, r = index["model"], index["optimizer"], index["run"]
    kinds = set(m["layer_kinds"])
    if len(kinds) != 1:
        raise BadCheckpoint("layers of several kinds: give dualpipe's outputs with --outputs")
    out = os.path.join(workdir, "outputs.safetensors")
    # one rank holding every layer: the forward is the same on any schedule
    cmd = [a.dualpipe, "train", "--resume", ckpt, "--steps", str(index["step"]), "--save-outputs", out, "--quiet",
           "--schedule", "1f1b", "--pp", "1", "--layers-per-stage", str(m["layers"]), "--threads", "1",
           "--chunks", str(r["chunks"] * r["dp"]), "--hidden", str(m["hidden"]), "--tokens", str(m["tokens"]),
           "--block", kinds.pop(), "--loss", m["loss"], "--dtype", m["dtype"], "--seed", str(m["seed"]),
           "--optimizer", o["kind"]]
    if o["kind"] == "sgd":
        cmd += ["--momentum", repr(o["momentum"])]
    print("$ " + " ".join(cmd), flush=True)
    run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    if run.returncode != 0:
        sys.stdout.write(run.stdout)
        raise BadCheckpoint("dualpipe failed (exit %d)" % run.returncode)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a checkpoint directory, or the directory --save wrote")
    p.add_argument("--dualpipe", default="./tools/dualpipe", help="the dualpipe program (default ./tools/dualpipe)")
    p.add_argument("--outputs", metavar="FILE", help="dualpipe's --save-outputs file, instead of running dualpipe")
    p.add_argument("--reader", choices=["auto", "safetensors", "builtin"], default="auto",
                   help="auto (default): the safetensors package when importable, else the script's own reader")
    p.add_argument("--atol", type=float, help="default 1e-5 (fp32 checkpoints), 3e-2 (bf16)")
    p.add_argument("--rtol", type=float, help="default 1e-4 (fp32 checkpoints), 3e-2 (bf16)")
    a = p.parse_args()
    try:
        import torch
    except ImportError:
        print("SKIP: torch not installed")
        return 0
    try:
        ckpt, index, tensors, how = load_checkpoint(a.checkpoint, torch, a.reader)
        model = build_model(torch, index)
        state = {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}
        missing = model.load_state_dict(state, strict=False)
        if missing.missing_keys or missing.unexpected_keys:
            raise BadCheckpoint("the checkpoint does not fit the model: missing %s, unexpected %s" %
                                (missing.missing_keys, missing.unexpected_keys))
        opt = load_optimizer(torch, index, model, tensors)
        print("loaded %s (step %d, %d layers, %d tensors, read with %s) into %s with %s's state" %
              (ckpt, index["step"], index["model"]["layers"], len(tensors), how, type(model).__name__,
               type(opt).__name__))
        with tempfile.TemporaryDirectory() as workdir:
            path = a.outputs or dualpipe_outputs(a, ckpt, index, workdir)
            raw = open(path, "rb").read()
            io = read_safetensors_builtin(path, raw, torch)
    except (BadCheckpoint, OSError, KeyError, ValueError) as e:
        print("checkpoint_to_torch: %s" % e, file=sys.stderr)
        return 2
    bf16 = index["model"]["dtype"] == "bf16"
    atol = a.atol if a.atol is not None else 3e-2 if bf16 else 1e-5
    rtol = a.rtol if a.rtol is not None else 3e-2 if bf16 else 1e-4
    with torch.no_grad():
        theirs = model(io["inputs"].float())
    ours = io["outputs"].float()
    diff = (ours - theirs).abs()
    bad = ~(diff <= atol + rtol * theirs.abs())
    print("forward of %s inputs: max |dualpipe - torch| %.3g, max relative %.3g" %
          ("x".join(str(d) for d in ours.shape), diff.max().item(), (diff / theirs.abs().clamp_min(1e-30)).max().item()))
    print("tolerance per element: |dualpipe - torch| <= %g + %g |torch| (%s checkpoint)" % (atol, rtol, index["model"]["dtype"]))
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        print("FAIL: %d of %d elements outside; the first, element %d: dualpipe %.9g torch %.9g" %
              (int(bad.sum()), bad.numel(), i, ours.flatten()[i].item(), theirs.flatten()[i].item()))
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
