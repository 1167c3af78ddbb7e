"""One entry point for DiT weights in any of the formats this project meets, always loaded into the original DiT
function (models.dit.DiT):

  original         facebookresearch/DiT checkpoint: plain state dict (DiT-XL-2-256x256.pt) or a training checkpoint
                   {"model", "ema", "opt", "args"} (the EMA weights are taken unless ema=False)
  minimax-authors  the Minimax authors' train.py checkpoint: the same layout plus Difffit gammas in blocks 0-13
  diffusers        a diffusers DiT folder or hub id (facebook/DiT-XL-2-256, with or without transformer/), converted
  adapter / full   this project's fine-tuned checkpoints (format "minimax-diffusion-ckpt", see CONTRACTS.md)

The architecture is read from the weight shapes; only the number of heads needs a registry name, a keyword, a
config (diffusers, our checkpoints) or a known (depth, hidden) pair. Every mismatch is a one-line UserError.
"""
import argparse
import json
import os
import pickle
import re
import sys

import torch

if __package__ in (None, ""):  # `python models/loading.py` as well as `python -m models.loading`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.dit import DIT_SIZES, DiT, DiT_models, registry_arch, sincos_pos_embed_2d  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.io import file_sha256  # noqa: E402

CKPT_FORMAT = "minimax-diffusion-ckpt"  # our fine-tuned checkpoints (CONTRACTS.md)
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
ARCH_KEYS = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio",
             "class_dropout_prob", "num_classes", "learn_sigma")
GAMMA_NAMES = ("gamma1", "gamma2", "attn.gamma1", "attn.gamma2")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _short(keys, n=4):
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


#################################################################################
#                         Locating and reading a source                          #
#################################################################################

def _diffusers_folder(folder):
    """The folder (itself or its transformer/) holding config.json and a diffusers weights file, else None."""
    for d in (folder, os.path.join(folder, "transformer")):
        if os.path.isfile(os.path.join(d, "config.json")) and any(
                os.path.isfile(os.path.join(d, w)) for w in DIFFUSERS_WEIGHTS):
            return d
    return None


def _resolve(source):
    """-> ("file", path) or ("diffusers", folder); hub ids are fetched (or found in the cache) with huggingface_hub."""
    source = os.fspath(source)
    path = os.path.expanduser(source)
    if os.path.isfile(path):
        return "file", path
    if os.path.isdir(path):
        folder = _diffusers_folder(path)
        if folder is None:
            raise UserError(f"folder {source} holds no DiT weights: expected a diffusers folder (config.json + "
                            f"{' or '.join(DIFFUSERS_WEIGHTS)}, itself or in transformer/); pass a checkpoint file "
                            f"or such a folder")
        return "diffusers", folder
    looks_like_path = source.startswith((".", "/", "~")) or os.path.splitext(source)[1] in (
        ".pt", ".pth", ".ckpt", ".bin", ".safetensors") or not _HUB_ID.match(source)
    if looks_like_path:
        raise UserError(f"no such checkpoint file or folder: {source}; check the path")
    try:
        from huggingface_hub import snapshot_download
        folder = snapshot_download(source, allow_patterns=["config.json", "diffusion_pytorch_model.*",
                                                           "transformer/config.json",
                                                           "transformer/diffusion_pytorch_model.*"])
    except Exception as e:  # offline, unknown repo, no network: all mean "not available here"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"'{source}' is not a local file or folder and could not be fetched from the hub ({first}); "
                        f"download it once (huggingface-cli download {source}) or pass a local path") from None
    found = _diffusers_folder(folder)
    if found is None:
        raise UserError(f"hub repo {source} holds no diffusers DiT transformer (config.json + weights); "
                        f"pass a DiT checkpoint file or folder")
    return "diffusers", found


def _torch_load(path):
    """torch.load with weights_only=True; argparse.Namespace (the `args` of DiT / Minimax training checkpoints) is
    the only class allowed besides tensors and containers."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # legacy (non-zip) files cannot be memory-mapped: read them whole
                raise
        return torch.load(path, map_location="cpu", weights_only=True)


def _global(e):
    """The class name a weights_only unpickler refused, from its message."""
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    return m.group(1) if m else "unknown class"


def _read_file(path):
    """The object stored in a checkpoint file (.safetensors or torch.save), or a one-line UserError."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(path)
        return _torch_load(path)
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and "global" in str(e).lower():
            raise UserError(f"{path} holds Python objects other than tensors and argparse.Namespace ({_global(e)}), "
                            f"refused for safety (weights_only=True); re-save its state dict with torch.save") from None
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__} while unpickling); pass a DiT "
                        f".pt/.pth/.safetensors file or a diffusers folder") from None


def _diffusers_weights(folder):
    """The weights file of a diffusers folder (safetensors preferred)."""
    for w in DIFFUSERS_WEIGHTS:
        if os.path.isfile(os.path.join(folder, w)):
            return os.path.join(folder, w)
    raise UserError(f"{folder} has no {' or '.join(DIFFUSERS_WEIGHTS)}")


def _strip_prefix(sd):
    """Drop a wrapper prefix (DDP's module., torch.compile's _orig_mod.) present on every key."""
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _is_state_dict(obj):
    return isinstance(obj, dict) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def _key_style(sd):
    if any(k.startswith("transformer_blocks.") for k in sd):
        return "diffusers"
    if "x_embedder.proj.weight" in sd or any(k.startswith("blocks.") for k in sd):
        return "original"
    return None


def _has_gammas(sd):
    return any(re.match(r"blocks\.\d+\.(attn\.)?gamma[12]$", k) for k in sd)


#################################################################################
#                       diffusers DiT -> original DiT keys                       #
#################################################################################

# per-block embedder copy in diffusers (transformer_blocks.i.norm1.emb.*) -> the original's single embedder
_EMBEDDER = {"timestep_embedder.linear_1.weight": "t_embedder.mlp.0.weight",
             "timestep_embedder.linear_1.bias": "t_embedder.mlp.0.bias",
             "timestep_embedder.linear_2.weight": "t_embedder.mlp.2.weight",
             "timestep_embedder.linear_2.bias": "t_embedder.mlp.2.bias",
             "class_embedder.embedding_table.weight": "y_embedder.embedding_table.weight"}
# block-level renames; AdaLayerNormZero chunks its 6D output in the original's order (shift_msa, scale_msa,
# gate_msa, shift_mlp, scale_mlp, gate_mlp), so norm1.linear maps to adaLN_modulation.1 without permutation
_BLOCK = {"norm1.linear": "adaLN_modulation.1", "attn1.to_out.0": "attn.proj", "ff.net.0.proj": "mlp.fc1",
          "ff.net.2": "mlp.fc2"}
_TOP = {"pos_embed.proj": "x_embedder.proj", "proj_out_1": "final_layer.adaLN_modulation.1",
        "proj_out_2": "final_layer.linear"}


def diffusers_to_original(sd, name="checkpoint"):
    """Convert a diffusers DiTTransformer2DModel / Transformer2DModel state dict to original DiT keys (pos_embed is
    not stored by diffusers and is left to the caller). Unknown keys are passed through so the strict load names
    them; the per-block embedder copies must be identical (as in facebook/DiT-XL-2-256)."""
    sd = dict(sd)
    out, missing = {}, []

    def take(k):
        if k not in sd:
            missing.append(k)
            return None
        return sd.pop(k)

    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"transformer_blocks\.(\d+)\.", k)))
    differ = set()
    for i in range(depth):
        p, q = f"transformer_blocks.{i}.", f"blocks.{i}."
        for k, new in _EMBEDDER.items():
            v = take(p + "norm1.emb." + k)
            if v is None:
                continue
            if i == 0:
                out[new] = v
            elif new in out and not torch.equal(v, out[new]):
                differ.add(i)
        for wb in ("weight", "bias"):
            parts = [take(p + f"attn1.to_{c}.{wb}") for c in "qkv"]
            if all(t is not None for t in parts):
                out[q + f"attn.qkv.{wb}"] = torch.cat(parts, 0)  # (3D, ...): q, k, v rows, as the original's qkv
            for old, new in _BLOCK.items():
                v = take(p + f"{old}.{wb}")
                if v is not None:
                    out[q + f"{new}.{wb}"] = v
    for old, new in _TOP.items():
        for wb in ("weight", "bias"):
            v = take(f"{old}.{wb}")
            if v is not None:
                out[f"{new}.{wb}"] = v
    if missing:
        raise UserError(f"{name} is an incomplete diffusers DiT: missing {_short(missing)}")
    if differ:
        raise UserError(f"{name} has different timestep/class embedders in blocks {_short(map(str, differ))} than in "
                        f"block 0; the original DiT has one embedder, so it cannot be converted exactly")
    out.update(sd)  # leftovers: reported as unexpected by the strict load
    return out


def _diffusers_arch(cfg, name):
    """What a diffusers config says that the weights cannot: heads and sample size (and it must be a DiT)."""
    cls = cfg.get("_class_name", "DiTTransformer2DModel")
    defaults = {"DiTTransformer2DModel": ("ada_norm_zero", "gelu-approximate"),
                "Transformer2DModel": ("layer_norm", "geglu")}
    if cls not in defaults:
        raise UserError(f"{name} is a diffusers {cls}, not a DiT transformer; pass a DiT checkpoint")
    norm, act = cfg.get("norm_type", defaults[cls][0]), cfg.get("activation_fn", defaults[cls][1])
    if norm != "ada_norm_zero" or act != "gelu-approximate" or cfg.get("patch_size") is None:
        raise UserError(f"{name} is a diffusers {cls} with norm_type={norm}, activation_fn={act}, "
                        f"patch_size={cfg.get('patch_size')}; only DiT (ada_norm_zero, gelu-approximate, patched) "
                        f"converts to the original DiT")
    return {"num_heads": cfg.get("num_attention_heads"), "input_size": cfg.get("sample_size")}


#################################################################################
#                          Architecture from weight shapes                       #
#################################################################################

def infer_arch(sd, name="checkpoint"):
    """Constructor keywords the weights fix, plus the class-table rows and the blocks carrying Difffit gammas."""
    need = ("x_embedder.proj.weight", "final_layer.linear.weight", "y_embedder.embedding_table.weight",
            "blocks.0.mlp.fc1.weight")
    absent = [k for k in need if k not in sd]
    if absent:
        raise UserError(f"{name} is not a DiT state dict (missing {_short(absent)}); pass a DiT checkpoint")
    w = sd["x_embedder.proj.weight"]  # (D, C, p, p)
    hidden, in_ch, patch = w.shape[0], w.shape[1], w.shape[2]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    out_ch = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
    if out_ch not in (in_ch, 2 * in_ch):
        raise UserError(f"{name}: final layer gives {out_ch} channels for {in_ch} input channels; not a DiT")
    arch = dict(patch_size=patch, in_channels=in_ch, hidden_size=hidden, depth=depth,
                mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / hidden, learn_sigma=out_ch == 2 * in_ch)
    if "pos_embed" in sd:
        grid = round(sd["pos_embed"].shape[1] ** 0.5)
        arch["input_size"] = grid * patch
    gammas = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.(attn\.)?gamma[12]$", k))})
    return arch, sd["y_embedder.embedding_table.weight"].shape[0], gammas


def _pick_heads(shape_arch, model, num_heads, declared, name):
    """num_heads from (in order of trust) a registry name, a keyword, the checkpoint's own config, DIT_SIZES."""
    depth, hidden, patch = shape_arch["depth"], shape_arch["hidden_size"], shape_arch["patch_size"]
    heads = None
    if model is not None:
        if model not in DiT_models:
            raise UserError(f"unknown model '{model}'; choose one of {', '.join(DiT_models)}")
        reg = registry_arch(model)
        if (reg["depth"], reg["hidden_size"], reg["patch_size"]) != (depth, hidden, patch):
            raise UserError(f"{name} holds a DiT with depth {depth}, hidden {hidden}, patch {patch}, but {model} has "
                            f"depth {reg['depth']}, hidden {reg['hidden_size']}, patch {reg['patch_size']}; "
                            f"pass the matching model name or omit it")
        heads = reg["num_heads"]
    for value, what in ((num_heads, "num_heads"), (declared, "the checkpoint's config")):
        if value is None:
            continue
        if heads is not None and value != heads:
            raise UserError(f"{name}: {what} says {value} heads but {model or 'num_heads'} says {heads}; "
                            f"pass one consistent value")
        heads = value if heads is None else heads
    if heads is None:
        known = {(d, h): n for d, h, n in DIT_SIZES.values()}
        heads = known.get((depth, hidden))
    if heads is None:
        raise UserError(f"{name}: cannot infer the number of heads of a DiT with depth {depth} and hidden {hidden}; "
                        f"pass num_heads (CLI: --num_heads N) or a model name")
    if hidden % heads:
        raise UserError(f"{name}: hidden size {hidden} is not divisible by {heads} heads; pass the right num_heads")
    return heads


def _final_arch(shape_arch, rows, declared, overrides, heads, name):
    """Merge shape-derived, checkpoint-declared and user-given keywords; any disagreement is an error."""
    unknown = set(overrides) - set(ARCH_KEYS)
    if unknown:
        raise UserError(f"unknown DiT argument(s) {_short(unknown)}; choose from {', '.join(ARCH_KEYS)}")
    arch = dict(shape_arch, num_heads=heads)
    for source, given in (("the checkpoint", declared), ("the arguments", overrides)):
        for k, v in given.items():
            if v is None or k not in ARCH_KEYS:
                continue
            if k in arch and arch[k] != v:
                raise UserError(f"{name}: {source} say(s) {k}={v} but the weights say {arch[k]}; "
                                f"the checkpoint belongs to another architecture")
            arch[k] = v
    arch.setdefault("class_dropout_prob", 0.1)  # the weights cannot tell; DiT's value
    if "input_size" not in arch:
        raise UserError(f"{name} stores no pos_embed and no sample size; pass input_size (latent side)")
    null = int(arch["class_dropout_prob"] > 0)
    arch.setdefault("num_classes", rows - null)
    extra = rows - arch["num_classes"] - null
    if extra < 0:
        raise UserError(f"{name}: class table has {rows} rows, fewer than num_classes {arch['num_classes']} "
                        f"+ {null} null row; pass the right num_classes")
    return {k: arch[k] for k in ARCH_KEYS}, extra


def _build(arch, extra, gamma_blocks, sd, device, name):
    """Build on the meta device (no init cost) and assign the checkpoint tensors, strictly."""
    with torch.device("meta"):
        model = DiT(**arch, extra_classes=extra, gamma_blocks=gamma_blocks)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shaped = [f"{k} {tuple(sd[k].shape)} vs {want[k]}" for k in want if k in sd and tuple(sd[k].shape) != want[k]]
    if missing or unexpected or shaped:
        parts = [f"{len(v)} {what} ({_short(v, 3)})" for v, what in
                 ((missing, "missing"), (unexpected, "unexpected"), (shaped, "mis-shaped")) if v]
        raise UserError(f"{name} does not match DiT({_describe(arch)}): {'; '.join(parts)}")
    sd = {k: v.to(device=device, dtype=torch.float32) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def _describe(arch):
    return ", ".join(f"{k}={arch[k]}" for k in ("depth", "hidden_size", "num_heads", "patch_size", "input_size",
                                                "in_channels", "num_classes") if k in arch)


#################################################################################
#                                  Public API                                    #
#################################################################################

def _open(source, ema, convert=True):
    """-> (format, state dict in original keys, declared arch dict, checkpoint dict or None, path hashed).
    convert=False: a diffusers folder's weights are neither read nor converted (format and path only)."""
    kind, path = _resolve(source)
    if kind == "diffusers":
        wpath = _diffusers_weights(path)
        with open(os.path.join(path, "config.json")) as f:
            declared = _diffusers_arch(json.load(f), source)
        sd = diffusers_to_original(_strip_prefix(_read_file(wpath)), source) if convert else None
        return "diffusers", sd, declared, None, wpath
    obj = _read_file(path)
    if isinstance(obj, dict) and obj.get("format") == CKPT_FORMAT:
        if obj.get("kind") not in ("adapter", "full"):
            raise UserError(f"{source}: unknown checkpoint kind {obj.get('kind')!r}; expected adapter or full")
        return obj["kind"], None, dict(obj.get("arch") or {}), obj, path
    declared = {}
    if isinstance(obj, dict) and not _is_state_dict(obj) and ("ema" in obj or "model" in obj):
        key = "ema" if (ema and obj.get("ema") is not None) or obj.get("model") is None else "model"
        obj = obj[key]
    if not _is_state_dict(obj):
        raise UserError(f"{source} is a checkpoint but not a DiT state dict or training checkpoint "
                        f"({{'model', 'ema', ...}}); pass DiT weights")
    sd = _strip_prefix(obj)
    style = _key_style(sd)
    if style is None:
        raise UserError(f"{source} holds a state dict that is not DiT's (keys such as {_short(sd, 3)}); "
                        f"pass DiT weights")
    if style == "diffusers":
        return "diffusers", diffusers_to_original(sd, source) if convert else None, declared, None, path
    return ("minimax-authors" if _has_gammas(sd) else "original"), sd, declared, None, path


def identify_source(source):
    """{"source", "sha256", "format"} of a weights source; sha256 of the file (a diffusers folder: its weights file),
    what a fine-tuned checkpoint records as its base and load_dit checks."""
    fmt, _, _, _, path = _open(source, ema=True, convert=False)
    return {"source": os.fspath(source), "sha256": file_sha256(path), "format": fmt}


def load_dit(source, model=None, num_heads=None, ema=True, device="cpu", base_source=None, **arch):
    """Load DiT weights from any supported source into the original DiT, in eval mode, float32, on `device`.

    source: original/Minimax-authors checkpoint (.pt, training checkpoints give their EMA unless ema=False),
    a diffusers folder or hub id (converted), or this project's adapter/full checkpoint (EMA unless ema=False).
    model: registry name (e.g. "DiT-XL/2") checked against the weights; num_heads: if no name is given (default:
    known from (depth, hidden)); base_source: where an adapter's base weights are now (default: as recorded);
    arch: other DiT keywords the weights cannot tell (class_dropout_prob, input_size for config-less diffusers).
    """
    name = os.fspath(source)
    if model is not None and model not in DiT_models:  # before reading a multi-GB file
        raise UserError(f"unknown model '{model}'; choose one of {', '.join(DiT_models)}")
    fmt, sd, declared, ckpt, path = _open(source, ema)
    if fmt == "adapter":
        return _load_adapter(ckpt, name, model, num_heads, ema, device, base_source, arch)
    if fmt == "full":
        sd = ckpt.get("ema") if ema else ckpt.get("params")
        if sd is None:
            raise UserError(f"{name} has no {'ema' if ema else 'params'} weights; pass ema={not ema}")
    shape_arch, rows, gammas = infer_arch(sd, name)
    heads = _pick_heads(shape_arch, model, num_heads, declared.pop("num_heads", None), name)
    full_arch, extra = _final_arch(shape_arch, rows, declared, arch, heads, name)
    if "pos_embed" not in sd:  # diffusers recomputes it and never stores it
        grid = full_arch["input_size"] // full_arch["patch_size"]
        sd = dict(sd, pos_embed=torch.from_numpy(sincos_pos_embed_2d(full_arch["hidden_size"], grid)).float()[None])
    return _build(full_arch, extra, gammas, sd, device, name)


def _load_adapter(ckpt, name, model, num_heads, ema, device, base_source, arch):
    """Base weights (sha-checked) + the adapter's EMA or trained parameters; gammas and extra class rows added."""
    base = ckpt.get("base") or {}
    src = base_source or base.get("source")
    if not src:
        raise UserError(f"adapter {name} records no base weights; pass base_source")
    fmt, base_sd, base_decl, base_ckpt, base_path = _open(src, ema=True)
    want_sha = base.get("sha256")
    if want_sha:  # the hash identify_source recorded at training time
        got = file_sha256(base_path)
        if got != want_sha:
            raise UserError(f"base weights {src} have sha256 {got} but adapter {name} was trained on sha256 "
                            f"{want_sha}; pass the base it was trained from (base_source)")
    if fmt == "adapter":
        raise UserError(f"adapter {name} has base {src}, itself an adapter checkpoint; "
                        f"the base must be DiT weights or a base-mode (full) checkpoint")
    if fmt == "full":  # a model this project trained from scratch (base mode): fine-tuned from its EMA
        base_sd = base_ckpt.get("ema")
        if base_sd is None:
            raise UserError(f"base {src} of adapter {name} holds no ema weights")
    overlay = ckpt.get("ema") if ema else ckpt.get("params")
    if overlay is None:
        raise UserError(f"adapter {name} has no {'ema' if ema else 'params'} weights; pass ema={not ema}")
    shape_arch, rows, _ = infer_arch(base_sd, src)
    declared = dict(base_decl, **{k: v for k, v in (ckpt.get("arch") or {}).items() if k in ARCH_KEYS})
    heads = _pick_heads(shape_arch, model, num_heads, declared.pop("num_heads", None), name)
    full_arch, _ = _final_arch(shape_arch, rows, declared, arch, heads, name)
    table = "y_embedder.embedding_table.weight"
    rows = overlay[table].shape[0] if table in overlay else rows
    extra = rows - full_arch["num_classes"] - int(full_arch["class_dropout_prob"] > 0)
    gamma_blocks = list((ckpt.get("difffit") or {}).get("gamma_blocks") or [])
    sd = dict(base_sd)
    if "pos_embed" not in sd:
        grid = full_arch["input_size"] // full_arch["patch_size"]
        sd["pos_embed"] = torch.from_numpy(sincos_pos_embed_2d(full_arch["hidden_size"], grid)).float()[None]
    hidden = full_arch["hidden_size"]
    for i in gamma_blocks:  # init 1 (identity); the adapter normally overwrites them
        for g in GAMMA_NAMES:
            sd.setdefault(f"blocks.{i}.{g}", torch.ones(3 * hidden if g == "attn.gamma1" else hidden))
    sd.update(overlay)
    return _build(full_arch, extra, gamma_blocks, sd, device, name)


#################################################################################
#                                      CLI                                       #
#################################################################################

def main(argv=None):
    p = argparse.ArgumentParser(description="Load DiT weights (original, Minimax authors', diffusers, or this "
                                            "project's checkpoints) and print the inferred architecture.")
    p.add_argument("source", help="checkpoint file, diffusers folder, or hub id (facebook/DiT-XL-2-256)")
    p.add_argument("--model", default=None, help="registry name to check against, e.g. DiT-XL/2")
    p.add_argument("--num_heads", type=int, default=None, help="heads, if neither --model nor a known size says")
    p.add_argument("--raw", action="store_true", help="load the raw weights of training checkpoints, not the EMA")
    args = p.parse_args(argv)
    m = load_dit(args.source, model=args.model, num_heads=args.num_heads, ema=not args.raw)
    info = identify_source(args.source)
    n = sum(t.numel() for t in m.parameters())
    print(f"format: {info['format']}  sha256: {info['sha256']}")
    print(f"arch: {json.dumps(m.arch)}")
    print(f"extra classes: {m.extra_classes}  gamma blocks: {m.gamma_blocks or 'none'}")
    print(f"parameters: {n:,}")


if __name__ == "__main__":
    run_cli(main)
