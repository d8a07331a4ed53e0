#!/usr/bin/python3
"""Golden fixtures for the flsl C++ library (FLSL_SPEC.md sections 1-4), tiny configuration, float64.

Usage:
    /usr/bin/python3 tools/make_flsl_fixtures.py --out tests/fixtures/flsl_tiny.safetensors
    /usr/bin/python3 tools/make_flsl_fixtures.py --check          # self-checks (finite differences, ...)
    /usr/bin/python3 tools/make_flsl_fixtures.py --print-header tests/fixtures/flsl_tiny.safetensors

Everything (networks, objective, schedules, AdamW, per-tensor clipping, last-layer freeze, EMA) is
written out explicitly here in float64; tests/fixtures/README.md documents every tensor and every
choice.  Needs Debian's python3-torch (1.13) and numpy; nothing else (the safetensors file is written
by hand).
"""
import argparse
import json
import math
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)  # fixed reduction order -> byte-identical output on every run

# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------
CFG = {
    # backbone (ViT without class token)
    "embed_dim": 32, "depth": 2, "num_heads": 2, "head_dim": 16, "patch_size": 8, "mlp_ratio": 4,
    "qkv_bias": True, "ln_eps": 1e-6, "gelu": "erf", "post_layernorm": True,
    "pos_embed": "sincos2d_fixed", "pos_embed_base_grid": 6, "pos_embed_resize": "bicubic_align_corners_false_size_based",
    "drop_path_rate": 0.1,
    # views
    "batch_size": 2, "n_local": 2, "teacher_size": 48, "global_size": 48, "local_size": 32,
    "global_grid": 6, "local_grid": 4,
    "local_layout": "image_major: local row r = b*n_local + l",
    "window_global": 3, "window_local": 2, "queries_global": 4, "queries_local": 4,
    # head
    "head_hidden": 64, "head_bottleneck": 32, "out_dim": 64, "norm_last_layer": True,
    # objective
    "b_sa": 0.1 / math.sqrt(384), "b_ca": 0.2 / math.sqrt(384), "student_temp": 0.1,
    "coef_ms": 0.03, "coef_km": 1.0, "coef_vmr": 5.0,
    "warmup_teacher_temp": 0.04, "teacher_temp": 0.07, "warmup_teacher_temp_epochs": 2,
    # optimisation
    "epochs": 5, "iters_per_epoch": 2, "total_iters": 10,
    "base_lr": 0.5, "lr_reference": 5e-4, "lr_batch_scale": 2 / 256, "min_lr": 1e-6, "warmup_epochs": 1,
    "weight_decay": 0.04, "weight_decay_end": 0.4,
    "momentum_teacher": 0.996, "momentum_teacher_end": 1.0,
    "adamw_beta1": 0.9, "adamw_beta2": 0.999, "adamw_eps": 1e-8,
    "clip_grad": 3.0, "clip_eps": 1e-6, "freeze_last_layer": 1,
    "schedule_semantics": "DINO utils.cosine_scheduler (np.linspace warm-up incl. endpoint, array of epochs*iters_per_ep)",
    # seeds
    "seed_inputs": 1234, "seed_init": 4321, "seed_masks": 2024,
}
CFG["peak_lr"] = CFG["base_lr"] * CFG["batch_size"] / 256

D, DEPTH, H, HD, P = CFG["embed_dim"], CFG["depth"], CFG["num_heads"], CFG["head_dim"], CFG["patch_size"]
B, LOC, K = CFG["batch_size"], CFG["n_local"], CFG["out_dim"]
EPS_LN = CFG["ln_eps"]
NIT = CFG["total_iters"]
DPR = [CFG["drop_path_rate"] * i / (DEPTH - 1) for i in range(DEPTH)]  # float64: [0.0, 0.1]


def param_names():
    names = ["patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(DEPTH):
        for s in ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                  "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                  "mlp.fc2.weight", "mlp.fc2.bias"]:
            names.append(f"blocks.{i}.{s}")
    names += ["norm.weight", "norm.bias", "head.mlp.0.weight", "head.mlp.0.bias", "head.mlp.2.weight",
              "head.mlp.2.bias", "head.mlp.4.weight", "head.mlp.4.bias", "head.last_layer.weight_v"]
    return names


PARAMS = param_names()


def param_shapes():
    hid, bot = CFG["head_hidden"], CFG["head_bottleneck"]
    s = {"patch_embed.proj.weight": (D, 3, P, P), "patch_embed.proj.bias": (D,)}
    for i in range(DEPTH):
        p = f"blocks.{i}."
        s.update({p + "norm1.weight": (D,), p + "norm1.bias": (D,), p + "attn.qkv.weight": (3 * D, D),
                  p + "attn.qkv.bias": (3 * D,), p + "attn.proj.weight": (D, D), p + "attn.proj.bias": (D,),
                  p + "norm2.weight": (D,), p + "norm2.bias": (D,), p + "mlp.fc1.weight": (4 * D, D),
                  p + "mlp.fc1.bias": (4 * D,), p + "mlp.fc2.weight": (D, 4 * D), p + "mlp.fc2.bias": (D,)})
    s.update({"norm.weight": (D,), "norm.bias": (D,), "head.mlp.0.weight": (hid, D), "head.mlp.0.bias": (hid,),
              "head.mlp.2.weight": (hid, hid), "head.mlp.2.bias": (hid,), "head.mlp.4.weight": (bot, hid),
              "head.mlp.4.bias": (bot,), "head.last_layer.weight_v": (K, bot)})
    return s


# Initialisation scales (NOT the spec's std 0.02 / zero bias / LN (1,0): deliberately larger and
# non-trivial so that every parameter influences the step-1 forward and gradients are not tiny).
def init_spec(name):
    """returns (kind, std): kind 'tn' = truncated normal cut at absolute +-2, 'ln_w' = 1 + std*N, 'n' = std*N"""
    if name == "patch_embed.proj.weight":
        return "tn", 0.05
    if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
        return "ln_w", 0.1
    if name.endswith("norm1.bias") or name.endswith("norm2.bias") or name == "norm.bias":
        return "n", 0.05
    if name.endswith(".bias"):
        return "n", 0.02
    if name.endswith("mlp.fc2.weight"):
        return "tn", 0.1
    if name in ("head.mlp.2.weight", "head.mlp.4.weight"):
        return "tn", 0.15
    return "tn", 0.2  # qkv, proj, fc1, head.mlp.0, last_layer.weight_v


def trunc_normal(shape, std, gen, a=-2.0, b=2.0):
    # same construction as torch.nn.init.trunc_normal_ (inverse CDF), but with an explicit generator
    lo = 0.5 * (1.0 + math.erf(a / std / math.sqrt(2.0)))
    hi = 0.5 * (1.0 + math.erf(b / std / math.sqrt(2.0)))
    u = torch.rand(shape, generator=gen, dtype=torch.float64) * (2 * hi - 2 * lo) + (2 * lo - 1)
    return (torch.erfinv(u) * (std * math.sqrt(2.0))).clamp_(a, b)


def make_init():
    gen = torch.Generator().manual_seed(CFG["seed_init"])
    shapes = param_shapes()
    out = {}
    for n in PARAMS:
        kind, std = init_spec(n)
        if kind == "tn":
            out[n] = trunc_normal(shapes[n], std, gen)
        elif kind == "ln_w":
            out[n] = 1.0 + std * torch.randn(shapes[n], generator=gen, dtype=torch.float64)
        else:
            out[n] = std * torch.randn(shapes[n], generator=gen, dtype=torch.float64)
    return out


# --------------------------------------------------------------------------------------------------
# Position embedding
# --------------------------------------------------------------------------------------------------
def sincos_table(dim, n):
    """[n*n, dim]; row = y*n + x; channels [sin(x w), cos(x w), sin(y w), cos(y w)], w_k = 1/10000^(k/(dim/4))."""
    q = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(q, dtype=torch.float64) / q))
    ys, xs = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    ox = xs.reshape(-1, 1) * omega[None]
    oy = ys.reshape(-1, 1) * omega[None]
    return torch.cat([ox.sin(), ox.cos(), oy.sin(), oy.cos()], 1)


def resize_table(tab, n_new):
    n = int(round(math.sqrt(tab.shape[0])))
    if n == n_new:
        return tab.clone()
    t = tab.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    t = F.interpolate(t, size=(n_new, n_new), mode="bicubic", align_corners=False)
    return t.permute(0, 2, 3, 1).reshape(n_new * n_new, -1).contiguous()


def resize_table_rect(tab, rows, cols):
    """the square table resized to a rows x cols grid (F.interpolate, bicubic, align_corners=False)"""
    n = int(round(math.sqrt(tab.shape[0])))
    t = tab.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    t = F.interpolate(t, size=(rows, cols), mode="bicubic", align_corners=False)
    return t.permute(0, 2, 3, 1).reshape(rows * cols, -1).contiguous()


# rectangular resizes of sin-cos tables for tests/nn/test_vit.cpp: (dim, base grid, rows, cols);
# 14 -> 30 x 52 is a 480 x 832 frame at patch 16 (the DAVIS evaluation)
POS_TABLE_CASES = [(32, 6, 4, 5), (32, 6, 5, 3), (32, 6, 6, 9), (8, 14, 30, 52)]


def generate_pos_tables(out_path):
    T = []
    for dim, grid, rows, cols in POS_TABLE_CASES:
        base = sincos_table(dim, grid)
        T.append((f"d{dim}.g{grid}.{rows}x{cols}", resize_table_rect(base, rows, cols)))
    write_safetensors(out_path, T, {"torch": torch.__version__,
                                    "what": "sincos tables resized by F.interpolate(bicubic, align_corners=False)"})


def bicubic_manual(tab, n_new):
    """explicit reference of torch's bicubic (A=-0.75, align_corners=False, size-based scale, clamped taps)"""
    n = int(round(math.sqrt(tab.shape[0])))
    src = tab.reshape(n, n, -1)
    A = -0.75

    def w(t):
        def c1(x):
            return ((A + 2) * x - (A + 3)) * x * x + 1

        def c2(x):
            return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A
        return [c2(t + 1), c1(t), c1(1 - t), c2(2 - t)]
    scale = n / n_new
    out = torch.zeros(n_new, n_new, tab.shape[1])
    for oy in range(n_new):
        ry = scale * (oy + 0.5) - 0.5
        iy = math.floor(ry)
        wy = w(ry - iy)
        for ox in range(n_new):
            rx = scale * (ox + 0.5) - 0.5
            ix = math.floor(rx)
            wx = w(rx - ix)
            acc = 0
            for a in range(4):
                row = 0
                for b in range(4):
                    yy = min(max(iy - 1 + a, 0), n - 1)
                    xx = min(max(ix - 1 + b, 0), n - 1)
                    row = row + wx[b] * src[yy, xx]
                acc = acc + wy[a] * row
            out[oy, ox] = acc
    return out.reshape(n_new * n_new, -1)


# --------------------------------------------------------------------------------------------------
# Networks (functional, parameters in a dict name -> tensor)
# --------------------------------------------------------------------------------------------------
def layer_norm(x, P_, pre):
    return F.layer_norm(x, (x.shape[-1],), P_[pre + ".weight"], P_[pre + ".bias"], EPS_LN)


def drop_path(branch, keep, rate):
    if keep is None:  # teacher, or rate == 0 (identity)
        return branch
    factor = keep / (1.0 - rate)  # per-sample scalar: 0 or 1/(1-rate)
    return branch * factor.view(-1, 1, 1)


def backbone(P_, x, pos, keeps=None):
    """x: [n,3,S,S] -> tokens [n, (S/p)^2, D] after the final LayerNorm.
    keeps: None, or dict {(block, 'attn'|'mlp'): keep vector [n]} for blocks with rate > 0."""
    x = F.conv2d(x, P_["patch_embed.proj.weight"], P_["patch_embed.proj.bias"], stride=P)
    x = x.flatten(2).transpose(1, 2) + pos[None]
    n, N, C = x.shape
    for i in range(DEPTH):
        pre = f"blocks.{i}."
        h = layer_norm(x, P_, pre + "norm1")
        qkv = F.linear(h, P_[pre + "attn.qkv.weight"], P_[pre + "attn.qkv.bias"])
        q, k, v = qkv.reshape(n, N, 3, H, HD).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (HD ** -0.5)).softmax(-1) @ v
        a = F.linear(a.transpose(1, 2).reshape(n, N, C), P_[pre + "attn.proj.weight"], P_[pre + "attn.proj.bias"])
        ka = None if (keeps is None or DPR[i] == 0) else keeps[(i, "attn")]
        x = x + drop_path(a, ka, DPR[i])
        h = layer_norm(x, P_, pre + "norm2")
        m = F.linear(F.gelu(F.linear(h, P_[pre + "mlp.fc1.weight"], P_[pre + "mlp.fc1.bias"])),
                     P_[pre + "mlp.fc2.weight"], P_[pre + "mlp.fc2.bias"])
        km = None if (keeps is None or DPR[i] == 0) else keeps[(i, "mlp")]
        x = x + drop_path(m, km, DPR[i])
    return layer_norm(x, P_, "norm")


def head(P_, x):
    h = F.gelu(F.linear(x, P_["head.mlp.0.weight"], P_["head.mlp.0.bias"]))
    h = F.gelu(F.linear(h, P_["head.mlp.2.weight"], P_["head.mlp.2.bias"]))
    h = F.linear(h, P_["head.mlp.4.weight"], P_["head.mlp.4.bias"])
    h = F.normalize(h, p=2.0, dim=-1, eps=1e-12)
    V = P_["head.last_layer.weight_v"]
    W = V / V.norm(p=2, dim=1, keepdim=True)  # weight norm, g == 1
    return F.linear(h, W)


def meanshift(zq, tgt, beta):
    """zq [n,Q,D], tgt [n,M,D] -> sum_j softmax_j(beta*<zq_i,t_j>) t_j, [n,Q,D]"""
    return ((zq @ tgt.transpose(-2, -1)) * beta).softmax(-1) @ tgt


# --------------------------------------------------------------------------------------------------
# Inputs: views, queries, drop-path keep masks
# --------------------------------------------------------------------------------------------------
def sample_queries(rs, G, w, corner, random_sampling):
    """corner: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right; one token per w x w window,
    windows in row-major order."""
    n = (G // w) * w
    off = G - n
    oy = off if corner in (2, 3) else 0
    ox = off if corner in (1, 3) else 0
    idx = []
    for wy in range(G // w):
        for wx in range(G // w):
            if random_sampling:
                dy, dx = int(rs.randint(w)), int(rs.randint(w))
            else:
                dy, dx = 0, 0
            idx.append((oy + wy * w + dy) * G + (ox + wx * w + dx))
    return idx


def make_inputs():
    gen = torch.Generator().manual_seed(CFG["seed_inputs"])
    ts, gs, ls = CFG["teacher_size"], CFG["global_size"], CFG["local_size"]
    inp = {
        "teacher": torch.randn(B, 3, ts, ts, generator=gen, dtype=torch.float64),
        "global": torch.randn(B, 3, gs, gs, generator=gen, dtype=torch.float64),
        "local": torch.randn(B * LOC, 3, ls, ls, generator=gen, dtype=torch.float64),
    }
    rs = np.random.RandomState(CFG["seed_masks"])
    Gg, Gl = CFG["global_grid"], CFG["local_grid"]
    # (G div w)*w == G for both grids here, so the corner choice cannot move the block; the sampler still
    # takes a corner.  Random-in-window sampling on: global image 1, local rows 1,2,3.
    qg = [sample_queries(rs, Gg, CFG["window_global"], 0, b == 1) for b in range(B)]
    ql = [sample_queries(rs, Gl, CFG["window_local"], 0, r >= 1) for r in range(B * LOC)]
    inp["query.global"] = torch.tensor(qg, dtype=torch.int64)
    inp["query.local"] = torch.tensor(ql, dtype=torch.int64)
    keep_prob = 1.0 - CFG["drop_path_rate"]
    keeps = {}
    for view, nb in (("global", B), ("local", B * LOC)):
        for i in range(DEPTH):
            if DPR[i] == 0:
                continue
            for br in ("attn", "mlp"):
                kk = (rs.random_sample((NIT, nb)) < keep_prob).astype(np.float64)
                keeps[(view, i, br)] = kk
    # make sure step 1 (iteration 0) drops something in both student forwards
    keeps[("global", DEPTH - 1, "attn")][0, 1] = 0.0
    keeps[("local", DEPTH - 1, "mlp")][0, 2] = 0.0
    inp["keeps"] = {k: torch.from_numpy(v) for k, v in keeps.items()}
    return inp


# --------------------------------------------------------------------------------------------------
# Schedules (DINO utils.cosine_scheduler semantics)
# --------------------------------------------------------------------------------------------------
def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0):
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def make_schedules():
    E, I = CFG["epochs"], CFG["iters_per_epoch"]
    lr = cosine_scheduler(CFG["peak_lr"], CFG["min_lr"], E, I, warmup_epochs=CFG["warmup_epochs"])
    wd = cosine_scheduler(CFG["weight_decay"], CFG["weight_decay_end"], E, I)
    mom = cosine_scheduler(CFG["momentum_teacher"], CFG["momentum_teacher_end"], E, I)
    we = CFG["warmup_teacher_temp_epochs"]
    tt_ep = np.concatenate((np.linspace(CFG["warmup_teacher_temp"], CFG["teacher_temp"], we),
                            np.ones(E - we) * CFG["teacher_temp"]))
    epoch = np.arange(E * I) // I
    tt = tt_ep[epoch]
    frozen = (epoch < CFG["freeze_last_layer"]).astype(np.int64)
    return {"lr": lr, "wd": wd, "momentum": mom, "teacher_temp": tt, "epoch": epoch.astype(np.int64),
            "last_layer_frozen": frozen}


# --------------------------------------------------------------------------------------------------
# Objective
# --------------------------------------------------------------------------------------------------
def flsl_forward(Ps, Pt, inp, pos, it, tau_t, q_fixed=None, want=False):
    """One FLSL forward at iteration `it` (keep-mask row it). Returns (loss, parts, extras).
    Query order everywhere: global views (image b, query order of input.query.global[b]) then local
    views (row r, query order of input.query.local[r])."""
    with torch.no_grad():
        t_tok = backbone(Pt, inp["teacher"], pos["global"])  # teacher: no grad, no drop path
    views = [("global", inp["global"], pos["global"], inp["query.global"], torch.arange(B)),
             ("local", inp["local"], pos["local"], inp["query.local"], torch.arange(B * LOC) // LOC)]
    zq_all, zhat_all, slog_all, tlog_all = [], [], [], []
    ex = {"teacher_tokens": t_tok}
    for name, x, ps, qidx, trow in views:
        keeps = {(i, br): inp["keeps"][(name, i, br)][it] for i in range(DEPTH) if DPR[i] > 0 for br in ("attn", "mlp")}
        z = backbone(Ps, x, ps, keeps)  # [n, N, D]
        zq = torch.gather(z, 1, qidx[:, :, None].expand(-1, -1, D))  # [n, Q, D]
        zhat = meanshift(zq, z, CFG["b_sa"])
        with torch.no_grad():
            zplus = meanshift(zq.detach(), t_tok[trow], CFG["b_ca"])
            tlog = head(Pt, zplus)
        slog = head(Ps, zhat)
        zq_all.append(zq.reshape(-1, D))
        zhat_all.append(zhat.reshape(-1, D))
        slog_all.append(slog.reshape(-1, K))
        tlog_all.append(tlog.reshape(-1, K))
        if want:
            ex[f"student_tokens.{name}"] = z.detach()
            ex[f"zhat.{name}"] = zhat.detach()
            ex[f"zplus.{name}"] = zplus
            ex[f"student_logits.{name}"] = slog.detach()
            ex[f"teacher_logits.{name}"] = tlog
    zq, zhat, slog, tlog = (torch.cat(a) for a in (zq_all, zhat_all, slog_all, tlog_all))
    loss_ms = 2 - 2 * (F.normalize(zq, dim=-1) * F.normalize(zhat, dim=-1)).sum(-1).mean()
    s = slog / CFG["student_temp"]
    logp = F.log_softmax(s, dim=-1)
    p = F.softmax(s, dim=-1)
    q = F.softmax(tlog / tau_t, dim=-1) if q_fixed is None else q_fixed
    loss_km = -(q * logp).sum(-1).mean()
    pbar = p.mean(0)
    loss_vmr = (pbar * pbar.log()).sum() + math.log(K)
    loss = CFG["coef_ms"] * loss_ms + CFG["coef_km"] * loss_km + CFG["coef_vmr"] * loss_vmr
    ex["q"] = q
    return loss, (loss_ms, loss_km, loss_vmr), ex


# --------------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------------
def clip_per_tensor(Ps):
    norms = []
    for n in PARAMS:
        g = Ps[n].grad
        if g is None:
            norms.append(float("nan"))
            continue
        nrm = g.norm(2)
        norms.append(nrm.item())
        if nrm.item() > CFG["clip_grad"]:
            g.mul_(CFG["clip_grad"] / (nrm + CFG["clip_eps"]))
    return norms


def make_optimizer(Ps):
    decay = [Ps[n] for n in PARAMS if Ps[n].ndim >= 2]
    nodecay = [Ps[n] for n in PARAMS if Ps[n].ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.0}, {"params": nodecay, "weight_decay": 0.0}],
                             lr=0.0, betas=(CFG["adamw_beta1"], CFG["adamw_beta2"]), eps=CFG["adamw_eps"],
                             amsgrad=False, foreach=False, maximize=False)


def train(init, inp, pos, sch, n_steps, record):
    Ps = {n: init[n].clone().requires_grad_(True) for n in PARAMS}
    Pt = {n: init[n].clone() for n in PARAMS}
    opt = make_optimizer(Ps)
    losses, gnorms = [], []
    for it in range(n_steps):
        opt.param_groups[0]["lr"] = float(sch["lr"][it])
        opt.param_groups[1]["lr"] = float(sch["lr"][it])
        opt.param_groups[0]["weight_decay"] = float(sch["wd"][it])
        opt.param_groups[1]["weight_decay"] = 0.0
        loss, parts, ex = flsl_forward(Ps, Pt, inp, pos, it, float(sch["teacher_temp"][it]), want=(it == 0))
        losses.append([loss.item()] + [t.item() for t in parts])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if it == 0:
            record["step1.loss"] = loss.detach().reshape(1)
            record["step1.loss_ms"] = parts[0].detach().reshape(1)
            record["step1.loss_km"] = parts[1].detach().reshape(1)
            record["step1.loss_vmr"] = parts[2].detach().reshape(1)
            for k in ("student_tokens.global", "student_tokens.local", "teacher_tokens", "zhat.global",
                      "zhat.local", "zplus.global", "zplus.local", "student_logits.global",
                      "student_logits.local", "teacher_logits.global", "teacher_logits.local"):
                record["step1." + k] = ex[k]
            for n in PARAMS:
                record["step1.grad." + n] = Ps[n].grad.detach().clone()
        gnorms.append(clip_per_tensor(Ps))
        if sch["last_layer_frozen"][it]:
            Ps["head.last_layer.weight_v"].grad = None  # AdamW skips it: no moments, no step count, no decay
        opt.step()
        m = float(sch["momentum"][it])
        with torch.no_grad():
            for n in PARAMS:
                Pt[n].mul_(m).add_((1 - m) * Ps[n].detach())
        if it == 1:
            for n in PARAMS:
                record["step2.param." + n] = Ps[n].detach().clone()
            record["step2.teacher_stats"] = teacher_stats(Pt, init)
    return Ps, Pt, np.array(losses), np.array(gnorms)


def teacher_stats(Pt, init):
    rows = []
    for n in PARAMS:
        d = Pt[n] - init[n]
        rows.append([d.sum().item(), d.norm(2).item(), d.abs().max().item(), Pt[n].sum().item()])
    return torch.tensor(rows, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# safetensors (by hand)
# --------------------------------------------------------------------------------------------------
def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs, off = [], 0
    for name, t in tensors:
        a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        if a.dtype == np.float64:
            dt, a = "F64", a.astype("<f8")
        elif a.dtype == np.int64:
            dt, a = "I64", a.astype("<i8")
        else:
            raise TypeError(f"{name}: {a.dtype}")
        b = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (hl,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hl].decode("utf-8"))
    data = raw[8 + hl:]
    meta = header.pop("__metadata__", {})
    out = {}
    for name, h in header.items():
        dt = {"F64": "<f8", "I64": "<i8"}[h["dtype"]]
        s, e = h["data_offsets"]
        out[name] = np.frombuffer(data[s:e], dtype=dt).reshape(h["shape"])
    return out, meta, header


def print_header(path):
    _, meta, header = read_safetensors(path)
    for k, v in meta.items():
        print(f"__metadata__.{k} = {v}")
    for name, h in header.items():
        print(f"{name:52s} {h['dtype']} {h['shape']}")


# --------------------------------------------------------------------------------------------------
# Build everything
# --------------------------------------------------------------------------------------------------
def build():
    init = make_init()
    inp = make_inputs()
    pos_g = sincos_table(D, CFG["global_grid"])
    pos = {"global": pos_g, "local": resize_table(pos_g, CFG["local_grid"])}
    sch = make_schedules()
    return init, inp, pos, sch


def generate(out_path):
    init, inp, pos, sch = build()
    record = {}
    Ps, Pt, losses, gnorms = train(init, inp, pos, sch, NIT, record)
    assert np.all(np.isfinite(losses))
    for v in gnorms.flat:
        if np.isfinite(v):
            assert abs(v - CFG["clip_grad"]) > 1e-4, "gradient norm too close to the clip threshold"
    T = []
    T.append(("const.pos_embed.global", pos["global"]))
    T.append(("const.pos_embed.local", pos["local"]))
    T.append(("input.teacher", inp["teacher"]))
    T.append(("input.global", inp["global"]))
    T.append(("input.local", inp["local"]))
    T.append(("input.query.global", inp["query.global"]))
    T.append(("input.query.local", inp["query.local"]))
    for (view, i, br), kk in inp["keeps"].items():
        T.append((f"input.keep.{view}.blocks.{i}.{br}", kk))
    for k in ("lr", "wd", "momentum", "teacher_temp", "epoch", "last_layer_frozen"):
        T.append(("schedule." + k, torch.from_numpy(np.ascontiguousarray(sch[k]))))
    for n in PARAMS:
        T.append(("init." + n, init[n]))
    for k in ("step1.loss", "step1.loss_ms", "step1.loss_km", "step1.loss_vmr", "step1.student_tokens.global",
              "step1.student_tokens.local", "step1.teacher_tokens", "step1.zhat.global", "step1.zhat.local",
              "step1.zplus.global", "step1.zplus.local", "step1.student_logits.global",
              "step1.student_logits.local", "step1.teacher_logits.global", "step1.teacher_logits.local"):
        T.append((k, record[k]))
    for n in PARAMS:
        T.append(("step1.grad." + n, record["step1.grad." + n]))
    T.append(("step1.grad_norm", torch.tensor(gnorms[0])))
    for n in PARAMS:
        T.append(("step2.param." + n, record["step2.param." + n]))
    T.append(("step2.teacher_stats", record["step2.teacher_stats"]))
    T.append(("steps10.loss", torch.tensor(losses)))
    T.append(("steps10.grad_norm", torch.tensor(gnorms)))
    for n in PARAMS:
        T.append(("steps10.param." + n, Ps[n].detach()))
    T.append(("steps10.teacher_stats", teacher_stats(Pt, init)))
    meta = {
        "format": "flsl-fixture-v1",
        "generator": "tools/make_flsl_fixtures.py",
        "torch_version": torch.__version__,
        "config": json.dumps(CFG, sort_keys=True),
        "param_order": json.dumps(PARAMS),
        "drop_path_rates": json.dumps(DPR),
        "teacher_stats_columns": json.dumps(["sum(teacher-init)", "l2(teacher-init)", "max|teacher-init|", "sum(teacher)"]),
        "steps10_loss_columns": json.dumps(["total", "ms", "km", "vmr"]),
    }
    write_safetensors(out_path, T, meta)
    # read back and verify
    back, meta2, _ = read_safetensors(out_path)
    assert meta2 == meta
    for name, t in T:
        a = t.detach().numpy() if isinstance(t, torch.Tensor) else t
        assert back[name].shape == a.shape and np.array_equal(back[name], a), name
    print(f"wrote {out_path}: {len(T)} tensors")
    print("steps10.loss [total, ms, km, vmr]:")
    for k, r in enumerate(losses):
        print(f"  it {k}: " + " ".join(f"{v:.12f}" for v in r))
    clipped = [(PARAMS[j], gnorms[0][j]) for j in range(len(PARAMS)) if gnorms[0][j] > CFG["clip_grad"]]
    print("step1 clipped tensors:", ", ".join(f"{n} ({v:.4f})" for n, v in clipped) or "none")
    print("step1 grad-norm range: %.3e .. %.3e" % (np.nanmin(gnorms[0]), np.nanmax(gnorms[0])))
    nclip = [(int(np.sum(gnorms[k][np.isfinite(gnorms[k])] > CFG["clip_grad"]))) for k in range(NIT)]
    print("clipped tensors per iteration:", nclip)


# --------------------------------------------------------------------------------------------------
# Self checks
# --------------------------------------------------------------------------------------------------
def run_checks():
    init, inp, pos, sch = build()
    ok = True

    def report(name, err, tol):
        nonlocal ok
        good = err <= tol
        ok &= good
        print(f"[{'ok' if good else 'FAIL'}] {name}: {err:.3e} (tol {tol:.0e})")

    # 1. position table vs the spec formula written independently (10000^(-k/(D/4)))
    n = CFG["global_grid"]
    ref = torch.zeros(n * n, D)
    q4 = D // 4
    for y in range(n):
        for x in range(n):
            for k in range(q4):
                wk = 10000.0 ** (-k / q4)
                ref[y * n + x, k] = math.sin(x * wk)
                ref[y * n + x, q4 + k] = math.cos(x * wk)
                ref[y * n + x, 2 * q4 + k] = math.sin(y * wk)
                ref[y * n + x, 3 * q4 + k] = math.cos(y * wk)
    report("sincos table vs spec formula", (ref - pos["global"]).abs().max().item(), 1e-14)
    report("bicubic resize vs explicit kernel", (bicubic_manual(pos["global"], CFG["local_grid"]) - pos["local"]).abs().max().item(), 1e-14)

    # 2. weight norm vs torch's weight_norm hook
    lin = torch.nn.Linear(CFG["head_bottleneck"], K, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(init["head.last_layer.weight_v"])
    wn = torch.nn.utils.weight_norm(lin)
    with torch.no_grad():
        wn.weight_g.fill_(1.0)
    xx = torch.randn(5, CFG["head_bottleneck"], generator=torch.Generator().manual_seed(7))
    V = init["head.last_layer.weight_v"]
    report("weight-norm vs torch.nn.utils.weight_norm", (wn(xx) - F.linear(xx, V / V.norm(dim=1, keepdim=True))).abs().max().item(), 1e-14)

    # 3. attention block vs torch.nn.MultiheadAttention (same q/k/v/out weights, no dropout)
    mha = torch.nn.MultiheadAttention(D, H, bias=True, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(init["blocks.0.attn.qkv.weight"])
        mha.in_proj_bias.copy_(init["blocks.0.attn.qkv.bias"])
        mha.out_proj.weight.copy_(init["blocks.0.attn.proj.weight"])
        mha.out_proj.bias.copy_(init["blocks.0.attn.proj.bias"])
    xa = torch.randn(3, 7, D, generator=torch.Generator().manual_seed(8))
    qkv = F.linear(xa, init["blocks.0.attn.qkv.weight"], init["blocks.0.attn.qkv.bias"])
    q, k, v = qkv.reshape(3, 7, 3, H, HD).permute(2, 0, 3, 1, 4)
    a = ((q @ k.transpose(-2, -1)) * HD ** -0.5).softmax(-1) @ v
    a = F.linear(a.transpose(1, 2).reshape(3, 7, D), init["blocks.0.attn.proj.weight"], init["blocks.0.attn.proj.bias"])
    report("attention vs nn.MultiheadAttention", (mha(xa, xa, xa, need_weights=False)[0] - a).abs().max().item(), 1e-13)

    # 4. finite differences of the loss (q and teacher fixed, as autograd treats them) at iteration 0
    Ps = {n: init[n].clone().requires_grad_(True) for n in PARAMS}
    Pt = {n: init[n].clone() for n in PARAMS}
    tau_t = float(sch["teacher_temp"][0])
    loss, _, ex = flsl_forward(Ps, Pt, inp, pos, 0, tau_t)
    qfix = ex["q"].detach()
    loss.backward()
    probes = [("patch_embed.proj.weight", (3, 1, 2, 5)), ("patch_embed.proj.bias", (7,)),
              ("blocks.0.norm1.weight", (4,)), ("blocks.0.attn.qkv.weight", (5, 3)),
              ("blocks.0.attn.qkv.bias", (40,)), ("blocks.1.attn.qkv.bias", (70,)),
              ("blocks.1.attn.proj.weight", (11, 30)), ("blocks.1.norm2.bias", (9,)),
              ("blocks.1.mlp.fc1.weight", (100, 2)), ("blocks.1.mlp.fc2.weight", (3, 77)),
              ("norm.weight", (13,)), ("norm.bias", (0,)), ("head.mlp.0.weight", (17, 9)),
              ("head.mlp.2.bias", (33,)), ("head.mlp.4.weight", (31, 63)),
              ("head.last_layer.weight_v", (3, 7)), ("head.last_layer.weight_v", (60, 31))]
    hstep = 1e-5
    worst = 0.0
    with torch.no_grad():
        for name, idx in probes:
            P2 = {n: init[n].clone() for n in PARAMS}
            P2[name][idx] += hstep
            lp = flsl_forward(P2, Pt, inp, pos, 0, tau_t, q_fixed=qfix)[0].item()
            P2[name][idx] -= 2 * hstep
            lm = flsl_forward(P2, Pt, inp, pos, 0, tau_t, q_fixed=qfix)[0].item()
            fd = (lp - lm) / (2 * hstep)
            ad = Ps[name].grad[idx].item()
            err = abs(fd - ad) / max(abs(ad), 1e-3)
            worst = max(worst, err)
            print(f"    d loss / d {name}{list(idx)}: autograd {ad:+.10e} fd {fd:+.10e} rel {err:.2e}")
    report("finite differences vs autograd (worst rel, floor 1e-3)", worst, 1e-6)
    kb = torch.cat([Ps[f"blocks.{i}.attn.qkv.bias"].grad[D:2 * D] for i in range(DEPTH)]).abs().max().item()
    print(f"    key-bias gradient (analytically 0): max |g| = {kb:.2e}")

    # 5. AdamW: torch.optim.AdamW vs the formula written in the README (3 steps, lr/wd varying, grad None skip)
    gen = torch.Generator().manual_seed(9)
    p0 = torch.randn(4, 3, generator=gen)
    pt = p0.clone().requires_grad_(True)
    opt = torch.optim.AdamW([{"params": [pt], "weight_decay": 0.0}], lr=0.0, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    pm, m1, m2, stepc = p0.clone(), torch.zeros(4, 3), torch.zeros(4, 3), 0
    for s, (lr, wd, skip) in enumerate([(0.0, 0.04, False), (0.1, 0.1, True), (0.05, 0.3, False), (0.02, 0.4, False)]):
        g = torch.randn(4, 3, generator=gen)
        opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"] = lr, wd
        pt.grad = None if skip else g.clone()
        opt.step()
        if not skip:
            stepc += 1
            pm = pm * (1 - lr * wd)
            m1 = m1 * 0.9 + (1 - 0.9) * g
            m2 = m2 * 0.999 + (1 - 0.999) * g * g
            bc1, bc2 = 1 - 0.9 ** stepc, 1 - 0.999 ** stepc
            pm = pm + ((-(lr / bc1)) * m1) / ((m2.sqrt() / math.sqrt(bc2)) + 1e-8)
    # torch's vectorised CPU kernels may fuse multiply-adds, so agreement is to rounding, not bitwise
    report("AdamW formula vs torch.optim.AdamW", (pm - pt.detach()).abs().max().item(), 2e-15)

    # 6. schedules: spot values
    lr = sch["lr"]
    T = NIT - CFG["warmup_epochs"] * CFG["iters_per_epoch"]
    exp = [0.0, CFG["peak_lr"]] + [CFG["min_lr"] + 0.5 * (CFG["peak_lr"] - CFG["min_lr"]) * (1 + math.cos(math.pi * i / T)) for i in range(T)]
    report("lr schedule vs closed form", float(np.max(np.abs(np.array(exp) - lr))), 1e-18)

    # 7. tolerance guidance: perturb the initial weights by a relative 1e-14 (rounding-level noise, as a
    #    different float64 implementation would introduce) and see how far the recorded values move.
    r0, r1 = {}, {}
    Ps0, _, L0, _ = train(init, inp, pos, sch, NIT, r0)
    g = torch.Generator().manual_seed(1)
    init2 = {n: v * (1 + 1e-14 * torch.randn(v.shape, generator=g)) for n, v in init.items()}
    Ps1, _, L1, _ = train(init2, inp, pos, sch, NIT, r1)

    def maxdiff(a, b, keybias):
        out = 0.0
        for n in PARAMS:
            d = (a[n] - b[n]).abs()
            if n.endswith("attn.qkv.bias"):
                d = d[D:2 * D] if keybias else torch.cat([d[:D], d[2 * D:]])
            elif keybias:
                continue
            out = max(out, d.max().item())
        return out
    g0 = {n: r0["step1.grad." + n] for n in PARAMS}
    g1 = {n: r1["step1.grad." + n] for n in PARAMS}
    s0 = {n: r0["step2.param." + n] for n in PARAMS}
    s1 = {n: r1["step2.param." + n] for n in PARAMS}
    print("    sensitivity to 1e-14 relative init noise (max abs change):")
    print(f"      steps10.loss {np.abs(L0 - L1).max():.1e}; step1.grad {maxdiff(g0, g1, False):.1e}"
          f" (key bias {maxdiff(g0, g1, True):.1e}); step2.param {maxdiff(s0, s1, False):.1e}"
          f" (key bias {maxdiff(s0, s1, True):.1e}); steps10.param {maxdiff(Ps0, Ps1, False):.1e}"
          f" (key bias {maxdiff(Ps0, Ps1, True):.1e})")
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the fixture here")
    ap.add_argument("--check", action="store_true", help="run self-checks (finite differences etc.)")
    ap.add_argument("--print-header", metavar="FILE", help="list the tensors of a fixture file")
    ap.add_argument("--pos-tables-out", metavar="FILE",
                    help="write the rectangular position-table resizes (tests/fixtures/pos_tables.safetensors)")
    a = ap.parse_args()
    if not (a.out or a.check or a.print_header or a.pos_tables_out):
        ap.error("nothing to do: give --out, --check, --print-header or --pos-tables-out")
    if a.pos_tables_out:
        generate_pos_tables(a.pos_tables_out)
    rc = 0
    if a.check:
        rc |= 0 if run_checks() else 1
    if a.out:
        generate(a.out)
    if a.print_header:
        print_header(a.print_header)
    return rc


if __name__ == "__main__":
    sys.exit(main())
