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
and weight copies to bf16, so for one the default is atol 3e-2, rtol 3e-2. The PyTorch model
runs in float64.

With --step it then takes one SGD step from the checkpoint in both (the checkpoint must be of
`train --optimizer sgd`, any momentum): on a batch of its own (random inputs and targets, the
tokens redrawn until none is routed within --margin of a tie), written for `dualpipe train
--resume CHECKPOINT --data FILE --steps STEP+1 --lr LR --save-params OUT`, and in torch with
autograd in float64 on the same parameters and batch, the loss as dualpipe takes it (each
micro-batch's mean loss, summed). It compares the step's loss, the gradient each parameter's
update implies, (before - after) / lr - momentum x buffer (lr 1 by default, so the fp32
rounding of the update hides little of it), against autograd's, per tensor relative to its
largest element (at least a thousandth of the largest gradient of any tensor; default 1e-4
fp32, 5e-2 bf16), the parameters after the step (1e-6, 2e-2),
and each MoE layer's balancing bias after the step, which must be bit-equal to torch's
prediction b + speed x sign(mean load - load) from its own routing. dualpipe runs one
pipeline rank holding every layer; --train-options adds options to its runs, such as
'--ep 2 --eplb-plan plan.json' to check experts spread and replicated by a plan against the
same PyTorch model.

Exits 0 on PASS, 1 on FAIL, 2 on a bad checkpoint or a failed run, and 0 with
"SKIP: torch not installed" when PyTorch is missing.

The model: layer L (0 .. layers-1, in pipeline order) of kind
    mlp:      y = linear2(gelu(linear1(x)))                       (Linear without bias)
    residual: y = x + linear2(gelu(linear1(rmsnorm(x))))          rmsnorm(x) = x / sqrt(mean(x^2) + eps) * norm.weight
    moe:      y = x + sum_k w_k experts[e_k](xn) [+ shared_experts(xn)],  xn = rmsnorm(x)
with state_dict keys layers.L.linear1.weight [ffn, hidden], layers.L.linear2.weight [hidden, ffn],
layers.L.norm.weight [hidden]; an MoE layer (DeepSeek-V3's, configured by the index's "moe"
object) has layers.L.norm.weight, layers.L.gate.weight [experts, hidden], the buffer
layers.L.gate.bias [experts] (the balancing bias: no gradient, moved by dualpipe after each
step), layers.L.experts.E.w1.weight and .w3.weight [expert_hidden, hidden], .w2.weight
[hidden, expert_hidden], and with shared experts layers.L.shared_experts.w1/w2/w3.weight of
inner width shared_experts x expert_hidden. Each expert is SwiGLU, w2(silu(w1 x) * w3 x). The
gate: scores s = sigmoid(xn gate.weight^T) in fp32 or wider; the selection on s + bias: the
experts in `groups` groups, each scored by the sum of its two best, the best `topk_groups`
groups kept, the best `topk` experts of those; ties to the higher score, then the lower index
(group or expert); weights w_k = route_scale s_k / sum of the chosen s. The router's gradient
flows through the chosen weights only, as in DeepSeek-V3's reference. Every layer works on each
token alone, so a token whose routing is decided by less than the rounding of the two sides
(--margin) is set apart from the forward comparison and counted; an exact tie is decided by
the rule on both sides and compared. The optimizer's state is optimizer.<key>.exp_avg,
.exp_avg_sq (AdamW) or .momentum_buffer (SGD with momentum), and the index's "step" is the
optimizer's step count; the gate's bias has such slots too, which must be zero.
"""
import argparse
import json
import os
import re
import shlex
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


def route(torch, scores, bias, groups, topk_groups, topk):
    """DeepSeek-V3's group-limited selection, for scores [N, E] and the balancing bias [E]: the
    experts [N, topk] and each token's margin [N], the smallest gap between a chosen group or
    expert and the best one left out (0: a tie, decided by the rule; inf: nothing left out).
    Ties go to the higher score, then the lower index: a stable descending sort."""
    n, e = scores.shape
    v = scores + bias
    size = e // groups
    margin = torch.full((n,), float("inf"), dtype=v.dtype)
    if groups > 1:
        # each group scored by the sum of its two best biased scores
        best = torch.sort(v.view(n, groups, size), dim=-1, descending=True, stable=True)[0]
        gscore = best[..., :min(2, size)].sum(-1)
        gsorted, gorder = torch.sort(gscore, dim=-1, descending=True, stable=True)
        if topk_groups < groups:
            margin = torch.minimum(margin, gsorted[:, topk_groups - 1] - gsorted[:, topk_groups])
        kept = torch.zeros(n, groups, dtype=torch.bool)
        kept.scatter_(1, gorder[:, :topk_groups], True)
        v = v.masked_fill(~kept.repeat_interleave(size, dim=1), float("-inf"))
    vsorted, order = torch.sort(v, dim=-1, descending=True, stable=True)
    if topk < topk_groups * size:
        margin = torch.minimum(margin, vsorted[:, topk - 1] - vsorted[:, topk])
    return order[:, :topk], margin


def build_model(torch, index):
    nn, F = torch.nn, torch.nn.functional
    m = index["model"]
    hidden, ffn, eps = m["hidden"], m["ffn"], m["norm_eps"]
    moe = m.get("moe", {})

    def rmsnorm(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    class Norm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(hidden))

    class SwiGLU(nn.Module):
        """w2(silu(w1 x) * w3 x)"""
        def __init__(self, inner):
            super().__init__()
            self.w1 = nn.Linear(hidden, inner, bias=False)
            self.w2 = nn.Linear(inner, hidden, bias=False)
            self.w3 = nn.Linear(hidden, inner, bias=False)

        def forward(self, x):
            return self.w2(F.silu(self.w1(x)) * self.w3(x))

    class Gate(nn.Module):
        """sigmoid scores in fp32 (or wider); the bias steers the selection only"""
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(moe["experts"], hidden))
            self.register_buffer("bias", torch.zeros(moe["experts"]))

        def forward(self, x):
            scores = torch.sigmoid(F.linear(x.to(torch.promote_types(x.dtype, torch.float32)), self.weight))
            with torch.no_grad():
                chosen, margin = route(torch, scores, self.bias.to(scores.dtype), moe["groups"], moe["topk_groups"],
                                       moe["topk"])
            # the router's gradient flows through the chosen weights only
            weights = scores.gather(1, chosen)
            weights = weights / weights.sum(-1, keepdim=True) * moe["route_scale"]
            return chosen, weights.to(x.dtype), margin

    class MoE(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = Norm()
            self.gate = Gate()
            self.experts = nn.ModuleList([SwiGLU(moe["expert_hidden"]) for _ in range(moe["experts"])])
            if moe["shared_experts"]:
                self.shared_experts = SwiGLU(moe["shared_experts"] * moe["expert_hidden"])
            self.chosen = self.margin = None

        def forward(self, x):
            xn = rmsnorm(x, self.norm.weight)
            chosen, weights, margin = self.gate(xn)
            self.chosen, self.margin = chosen, margin
            y = self.shared_experts(xn) if moe["shared_experts"] else torch.zeros_like(xn)
            for e, expert in enumerate(self.experts):
                token, k = (chosen == e).nonzero(as_tuple=True)
                if token.numel():
                    y = y.index_add(0, token, weights[token, k].unsqueeze(-1) * expert(xn[token]))
            return x + y

    class Block(nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.kind = kind
            self.linear1 = nn.Linear(hidden, ffn, bias=False)
            self.linear2 = nn.Linear(ffn, hidden, bias=False)
            if kind == "residual":
                self.norm = Norm()

        def forward(self, x):
            if self.kind == "mlp":
                return self.linear2(F.gelu(self.linear1(x)))
            return x + self.linear2(F.gelu(self.linear1(rmsnorm(x, self.norm.weight))))

    def block(kind):
        if kind == "moe":
            if not moe:
                raise BadCheckpoint("layer kind moe, but the index has no \"moe\" object (experts, topk, ...)")
            return MoE()
        if kind not in ("mlp", "residual"):
            raise BadCheckpoint("layer kind %s: this script knows mlp, residual and moe" % kind)
        return Block(kind)

    class Model(nn.Module):
        """rows [N, hidden] -> [N, hidden]; every layer works on each row (token) alone"""
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([block(k) for k in m["layer_kinds"]])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

        def routing_margin(self):
            """each row's smallest routing margin over the MoE layers of the last forward"""
            margins = [layer.margin for layer in self.layers if isinstance(layer, MoE)]
            return torch.stack(margins).min(0)[0] if margins else None

        def loads(self):
            """{layer: tokens each expert received} of the last forward"""
            return {i: torch.bincount(layer.chosen.flatten(), minlength=moe["experts"])
                    for i, layer in enumerate(self.layers) if isinstance(layer, MoE)}

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
    # a buffer (the gate's bias) has optimizer slots in the file, which the optimizer must leave at 0
    for name, _ in model.named_buffers():
        for ours in keys:
            t = tensors.get("optimizer.%s.%s" % (name, ours))
            if t is not None and t.abs().max().item() != 0:
                raise BadCheckpoint("optimizer.%s.%s is not zero: the optimizer has moved a buffer, which has no "
                                    "gradient" % (name, ours))
    return opt


# ----------------------------------------------------------------------------
# running dualpipe


def replicas_in(extra):
    """the pipelines --train-options asks for (--dp x --ep), each running its own micro-batches"""
    words, n = shlex.split(extra or ""), 1
    for i, w in enumerate(words):
        for opt in ("--dp", "--ep"):
            if w == opt and i + 1 < len(words):
                n *= int(words[i + 1])
            elif w.startswith(opt + "="):
                n *= int(w[len(opt) + 1:])
    return n


def model_args(index, extra=None):
    """dualpipe train's options for the checkpoint's model on one pipeline rank holding every
    layer (with --train-options' --dp or --ep, as many pipelines sharing the global batch)"""
    m, o, r = index["model"], index["optimizer"], index["run"]
    chunks, pipes = r["chunks"] * r["dp"] * r.get("ep", 1), replicas_in(extra)
    if chunks % pipes:
        raise BadCheckpoint("the checkpoint's %d micro-batches per step do not divide over %d pipelines (--train-options)"
                            % (chunks, pipes))
    dense = set(k for k in m["layer_kinds"] if k != "moe")
    if len(dense) > 1:
        raise BadCheckpoint("dense layers of several kinds (%s): dualpipe's --block names one" % ", ".join(sorted(dense)))
    args = ["--schedule", "1f1b", "--pp", "1", "--layers-per-stage", str(m["layers"]), "--threads", "1",
            "--chunks", str(chunks // pipes), "--hidden", str(m["hidden"]), "--tokens", str(m["tokens"]),
            "--block", dense.pop() if dense else "residual", "--loss", m["loss"], "--dtype", m["dtype"],
            "--seed", str(m["seed"]), "--optimizer", o["kind"]]
    moe = m.get("moe")
    if moe and "moe" in m["layer_kinds"]:
        args += ["--experts", str(moe["experts"]), "--topk", str(moe["topk"]), "--groups", str(moe["groups"]),
                 "--topk-groups", str(moe["topk_groups"]), "--expert-hidden", str(moe["expert_hidden"]),
                 "--shared-experts", str(moe["shared_experts"]), "--route-scale", repr(moe["route_scale"]),
                 "--moe-layers", ",".join(str(i) for i, k in enumerate(m["layer_kinds"]) if k == "moe")]
    return args


def run_dualpipe(cmd, extra):
    cmd = cmd + shlex.split(extra or "")
    print("$ " + " ".join(cmd), flush=True)
    run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    if run.returncode != 0:
        sys.stdout.write(run.stdout)
        raise BadCheckpoint("dualpipe failed (exit %d)" % run.returncode)
    return run.stdout


def dualpipe_outputs(a, ckpt, index, workdir):
    o = index["optimizer"]
    out = os.path.join(workdir, "outputs.safetensors")
    # one rank holding every layer: the forward is the same on any schedule
    cmd = [a.dualpipe, "train", "--resume", ckpt, "--steps", str(index["step"]), "--save-outputs", out,
           "--quiet"] + model_args(index, a.train_options)
    if o["kind"] == "sgd":
        cmd += ["--momentum", repr(o["momentum"])]
    run_dualpipe(cmd, a.train_options)
    return out


def write_safetensors(path, tensors):
    """{name: tensor (float32 or int32)} to a safetensors file"""
    header, blobs, at = {}, [], 0
    for name, t in tensors.items():
        code = {"torch.float32": "F32", "torch.int32": "I32"}[str(t.dtype)]
        data = t.contiguous().numpy().tobytes() if hasattr(t, "numpy") else bytes(t)
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [at, at + len(data)]}
        blobs.append(data)
        at += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


# ----------------------------------------------------------------------------
# the checks


def compare(torch, ours, theirs, atol, rtol):
    """(elements outside |ours - theirs| <= atol + rtol |theirs| as a bool tensor, max abs, max relative)"""
    diff = (ours - theirs).abs()
    bad = ~(diff <= atol + rtol * theirs.abs())
    return bad, diff.max().item() if diff.numel() else 0.0, \
        (diff / theirs.abs().clamp_min(1e-30)).max().item() if diff.numel() else 0.0


def check_forward(torch, a, model, index, io):
    """dualpipe's outputs against the model's on the same inputs: 0 PASS, 1 FAIL"""
    bf16 = index["model"]["dtype"] == "bf16"
    atol = a.atol if a.atol is not None else 3e-2 if bf16 else 1e-5
    rtol = a.rtol if a.rtol is not None else 3e-2 if bf16 else 1e-4
    hidden = index["model"]["hidden"]
    with torch.no_grad():
        theirs = model(io["inputs"].double().reshape(-1, hidden)).reshape(io["inputs"].shape)
    ours = io["outputs"].double()
    rows = ours.reshape(-1, hidden).shape[0]
    judged = torch.ones(rows, dtype=torch.bool)
    margin = model.routing_margin()
    near = a.margin if a.margin is not None else 5e-3 if bf16 else 1e-4
    if margin is not None:
        # a token whose routing is decided by less than the rounding of the two sides may go to
        # other experts in dualpipe: set apart, and counted (an exact tie is decided by the rule)
        judged = ~((margin > 0) & (margin < near))
        print("routing: %d of %d tokens have a margin under %g between a chosen and a left-out group or expert "
              "(not compared); smallest margin %.3g, exact ties %d" %
              (rows - int(judged.sum()), rows, near, margin.min().item(), int((margin == 0).sum())))
        if judged.sum() < rows // 2:
            print("FAIL: most tokens are near a routing tie; too few to compare")
            return 1
    bad, dmax, rmax = compare(torch, ours.reshape(rows, -1)[judged], theirs.reshape(rows, -1)[judged], atol, rtol)
    print("forward of %s inputs: max |dualpipe - torch| %.3g, max relative %.3g" %
          ("x".join(str(d) for d in ours.shape), dmax, rmax))
    print("tolerance per element: |dualpipe - torch| <= %g + %g |torch| (%s checkpoint)" %
          (atol, rtol, index["model"]["dtype"]))
    if bad.any():
        o, t = ours.reshape(rows, -1)[judged].flatten(), theirs.reshape(rows, -1)[judged].flatten()
        i = int(bad.flatten().nonzero()[0])
        print("FAIL: %d of %d elements outside; the first, element %d: dualpipe %.9g torch %.9g" %
              (int(bad.sum()), bad.numel(), i, o[i].item(), t[i].item()))
        return 1
    return 0


def step_data(torch, model, index, near, seed):
    """inputs [chunks, tokens, hidden] and targets for one step, drawn so that no token's routing
    is within `near` of a tie (rows redrawn until none is): then both sides route alike"""
    m, r = index["model"], index["run"]
    shape = (r["chunks"] * r["dp"] * r.get("ep", 1), m["tokens"], m["hidden"])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    for _ in range(100):
        with torch.no_grad():
            model(x.double().reshape(-1, m["hidden"]))
        margin = model.routing_margin()
        fragile = (margin > 0) & (margin < near) if margin is not None else torch.zeros(1, dtype=torch.bool)
        if not fragile.any():
            break
        rows = x.reshape(-1, m["hidden"])
        rows[fragile] = torch.randn((int(fragile.sum()), m["hidden"]), generator=g)
    else:
        raise BadCheckpoint("could not draw inputs away from routing ties in 100 tries")
    if m["loss"] == "xent":
        y = torch.randint(0, m["hidden"], shape[:2], generator=g, dtype=torch.int32)
    else:
        y = torch.randn(shape, generator=g)
    return x, y


def torch_loss(torch, model, index, x, y):
    """the step's loss as dualpipe differentiates it: each micro-batch's mean loss, summed over
    the micro-batches (loss.backward() per micro-batch); and their mean, as dualpipe prints it"""
    F, hidden = torch.nn.functional, index["model"]["hidden"]
    out = model(x.double().reshape(-1, hidden)).reshape(x.shape)
    if index["model"]["loss"] == "xent":
        per = torch.stack([F.cross_entropy(out[c], y[c].long()) for c in range(x.shape[0])])
    else:
        per = ((out - y.double()) ** 2).mean(dim=(1, 2))
    return per.sum(), per.mean().item()


def check_step(torch, a, model, opt, index, ckpt, workdir):
    """one optimizer step in dualpipe and in torch (float64) from the checkpoint, on a batch of
    our own: the parameters after it, the gradients they imply (SGD), and the balancing bias.
    0 PASS, 1 FAIL."""
    o, m = index["optimizer"], index["model"]
    if o["kind"] != "sgd":
        raise BadCheckpoint("--step needs an SGD checkpoint (train --optimizer sgd), whose update shows the "
                            "gradient; this one is %s" % o["kind"])
    bf16 = m["dtype"] == "bf16"
    lr = a.step_lr
    speed = m.get("moe", {}).get("bias_update_speed", 0.0) if a.bias_update_speed is None else a.bias_update_speed
    near = a.margin if a.margin is not None else 5e-3 if bf16 else 1e-4
    step = index["step"] + 1
    x, y = step_data(torch, model, index, near, a.seed)
    data = os.path.join(workdir, "data.safetensors")
    # --data needs every step of the run: the earlier ones are never read after --resume
    write_safetensors(data, {"step%d.%s" % (k, w): t for k in range(1, step + 1) for w, t in (("inputs", x), ("targets", y))})
    after = os.path.join(workdir, "params.safetensors")
    cmd = [a.dualpipe, "train", "--resume", ckpt, "--steps", str(step), "--data", data, "--save-params", after,
           "--lr", repr(lr), "--momentum", repr(o["momentum"]), "--weight-decay", repr(o["weight_decay"])] + \
        model_args(index, a.train_options)
    if "moe" in m["layer_kinds"]:
        cmd += ["--bias-update-speed", repr(speed)]
    text = run_dualpipe(cmd, a.train_options)
    theirs_after = read_safetensors_builtin(after, open(after, "rb").read(), torch)
    # torch's step, in float64
    model.double()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bufs = {k: opt.state[p]["momentum_buffer"].double() for k, p in model.named_parameters()} if o["momentum"] else {}
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=o["momentum"], weight_decay=o["weight_decay"])
    for k, p in model.named_parameters():
        if o["momentum"]:
            opt.state[p] = {"momentum_buffer": bufs[k].clone()}
    opt.zero_grad()
    total, mean = torch_loss(torch, model, index, x, y)
    total.backward()
    grads = {k: (p.grad if p.grad is not None else torch.zeros_like(p)).detach() + o["weight_decay"] * p.detach()
             for k, p in model.named_parameters()}
    loads = model.loads()
    opt.step()
    fails = 0
    found = re.search(r"step +%d/%d +loss ([0-9.eE+-]+)" % (step, step), text)
    if found:
        d = abs(float(found.group(1)) - mean)
        ok = d <= 2e-6 + (3e-2 if bf16 else 1e-5) * abs(mean)
        fails += not ok
        print("loss of step %d: dualpipe %s, torch %.9g: %s" % (step, found.group(1), mean, "ok" if ok else "FAIL"))
    # the gradient each parameter's update implies: (before - after) / lr - momentum x buffer
    gtol = a.grad_rtol if a.grad_rtol is not None else 5e-2 if bf16 else 1e-4
    ptol = a.param_rtol if a.param_rtol is not None else 2e-2 if bf16 else 1e-6
    worst_g = worst_p = (0.0, "")
    bad_tensors = 0
    # a tensor whose gradient is 0 but for roundings (a gate with top-1: w = s / s) is judged
    # against a thousandth of the largest gradient of any tensor
    floor = 1e-3 * max(g.abs().max().item() for g in grads.values())
    for name, p in model.named_parameters():
        t = theirs_after[name].double()
        g = (before[name] - t) / lr - (o["momentum"] * bufs[name] if o["momentum"] else 0)
        want = grads[name]
        scale = max(want.abs().max().item(), floor, 1e-30)
        # judged by the tensor's scale: fp32 sums of different order differ by roundings of the
        # largest terms, not of each element
        eg = (g - want).abs().max().item() / scale
        ep = (t - p.detach()).abs().max().item() / max(p.detach().abs().max().item(), 1e-30)
        worst_g = max(worst_g, (eg, name))
        worst_p = max(worst_p, (ep, name))
        if not (eg <= gtol) or not (ep <= ptol):
            bad_tensors += 1
            i = int((g - want).abs().flatten().argmax())
            if bad_tensors <= 5:
                print("FAIL: %s: gradient off by %.3g of its largest (%.3g; element %d: dualpipe %.9g torch %.9g), "
                      "parameters by %.3g of their largest" %
                      (name, eg, scale, i, g.flatten()[i].item(), want.flatten()[i].item(), ep))
    if bad_tensors > 5:
        print("FAIL: %d tensors in all" % bad_tensors)
    fails += bad_tensors
    print("gradients (from the SGD update, lr %g) of %d tensors: largest |dualpipe - torch| / the tensor's largest "
          "|gradient| %.3g (%s); tolerance %g (the scale at least %.3g)" % (lr, len(grads), worst_g[0], worst_g[1], gtol,
                                                                             floor))
    print("parameters after the step: largest |dualpipe - torch| / the tensor's largest |value| %.3g (%s); "
          "tolerance %g" % (worst_p[0], worst_p[1], ptol))
    # auxiliary-loss-free balancing: b += speed x sign(mean load - load), in fp32
    for layer, load in loads.items():
        name = "layers.%d.gate.bias" % layer
        want = (before[name].float() + speed * torch.sign(load.double().mean() - load.double()).float())
        got = theirs_after[name]
        same = torch.equal(got, want)
        fails += not same
        print("layer %d: loads %s, bias %s -> %s: %s" % (layer, load.tolist(), ["%.4g" % v for v in before[name].tolist()],
              ["%.4g" % v for v in got.tolist()], "as torch predicts" if same else
              "FAIL: torch predicts %s" % ["%.4g" % v for v in want.tolist()]))
    return 1 if fails else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint directory, or the directory --save wrote")
    p.add_argument("--dualpipe", default="./tools/dualpipe", help="the dualpipe program (default ./tools/dualpipe)")
    p.add_argument("--outputs", metavar="FILE", help="dualpipe's --save-outputs file, instead of running dualpipe")
    p.add_argument("--train-options", metavar="OPTIONS", help="more options for dualpipe train's runs, as one "
                   "string: '--ep 2 --eplb-plan plan.json' runs the same maths on experts placed by a plan")
    p.add_argument("--reader", choices=["auto", "safetensors", "builtin"], default="auto",
                   help="auto (default): the safetensors package when importable, else the script's own reader")
    p.add_argument("--atol", type=float, help="forward: default 1e-5 (fp32 checkpoints), 3e-2 (bf16)")
    p.add_argument("--rtol", type=float, help="forward: default 1e-4 (fp32 checkpoints), 3e-2 (bf16)")
    p.add_argument("--margin", type=float, help="MoE: tokens routed by less than this (the gap between a chosen and "
                   "a left-out biased score or group score) are not compared (forward) or redrawn (--step); "
                   "default 1e-4 (fp32), 5e-3 (bf16)")
    p.add_argument("--step", action="store_true", help="also take one SGD step from the checkpoint in dualpipe and in "
                   "torch (float64, autograd) on a batch of the script's own, and compare the gradients the update "
                   "implies, the parameters after it and the MoE balancing bias")
    p.add_argument("--step-lr", type=float, default=1.0, help="--step: the step's learning rate (default 1: the "
                   "update shows the gradient best)")
    p.add_argument("--bias-update-speed", type=float, help="--step: default the checkpoint's")
    p.add_argument("--seed", type=int, default=1, help="--step: the seed of the batch (default 1)")
    p.add_argument("--grad-rtol", type=float, help="--step: largest gradient error per tensor, relative to its "
                   "largest element (default 1e-4 fp32, 5e-2 bf16)")
    p.add_argument("--param-rtol", type=float, help="--step: largest parameter error per tensor, relative to its "
                   "largest element (default 1e-6 fp32, 2e-2 bf16)")
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
        kinds, moe = index["model"]["layer_kinds"], index["model"].get("moe")
        if "moe" in kinds:
            bias = torch.cat([b for n, b in model.named_buffers() if n.endswith("gate.bias")])
            print("moe: layers %s; %d experts in %d group(s), %d kept, top %d, expert hidden %d, %d shared, route "
                  "scale %g; balancing bias from %.6g to %.6g" %
                  (",".join(str(i) for i, k in enumerate(kinds) if k == "moe"), moe["experts"], moe["groups"],
                   moe["topk_groups"], moe["topk"], moe["expert_hidden"], moe["shared_experts"], moe["route_scale"],
                   bias.min().item(), bias.max().item()))
        model.double()
        with tempfile.TemporaryDirectory() as workdir:
            path = a.outputs or dualpipe_outputs(a, ckpt, index, workdir)
            raw = open(path, "rb").read()
            io = read_safetensors_builtin(path, raw, torch)
            rc = check_forward(torch, a, model, index, io)
            if a.step:
                rc |= check_step(torch, a, model, opt, index, ckpt, workdir)
    except (BadCheckpoint, OSError, KeyError, ValueError) as e:
        print("checkpoint_to_torch: %s" % e, file=sys.stderr)
        return 2
    print("FAIL" if rc else "PASS")
    return rc


if __name__ == "__main__":
    sys.exit(main())
