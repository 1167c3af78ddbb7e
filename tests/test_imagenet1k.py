"""ImageNet-1K at scale on CPU: phases partition the classes, their merged folder is the union, the pipeline's dry run,
per-step work that does not grow with the number of classes, and a 1,000-class rehearsal (generated tree, fine-tune,
sample IPC 1, labels into the evaluation)."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from data.eval_data import class_files, flatten
from data.subsets import get_subset, imagenet_wnids, num_phases, resolve_subset
from models.minimax import MinimaxCriterion
from scripts.reproduce import merge
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#################################################################################
#                               Phases and merge                                #
#################################################################################

@pytest.mark.parametrize("size", [100, 128, 333, 1000])
def test_phases_partition_the_classes_exactly(size):
    full = get_subset("imagenet1k").wnids
    n = num_phases(len(full), size)
    parts = [get_subset("imagenet1k", p, size).wnids for p in range(n)]
    assert sum(parts, []) == full  # in order, disjoint, nothing missing
    assert all(len(p) == size for p in parts[:-1]) and 0 < len(parts[-1]) <= size
    assert get_subset("imagenet1k", n - 1, size).name == f"imagenet1k-p{n - 1}"
    with pytest.raises(UserError, match="out of range"):
        get_subset("imagenet1k", n, size)


def test_imagenet100_phases_unchanged_and_custom_phases():
    blocks = [get_subset("imagenet100", p).wnids for p in range(5)]
    assert all(len(b) == 20 for b in blocks) and sum(blocks, []) == get_subset("imagenet100").wnids
    with pytest.raises(UserError, match="no phases"):
        get_subset("imagewoof", 0)
    assert get_subset("imagewoof", 1, 4).wnids == get_subset("imagewoof").wnids[4:8]
    with pytest.raises(UserError, match="phase_size"):
        resolve_subset("custom", class_file=os.path.join(ROOT, "data", "classes", "imagewoof.txt"), phase=0)


def test_merged_phase_folders_equal_the_union(tmp_path):
    size, wnids = 300, get_subset("imagenet1k").wnids
    expect = {}
    for p in range(num_phases(1000, size)):
        for w in get_subset("imagenet1k", p, size).wnids:
            os.makedirs(tmp_path / f"minimax-p{p}" / w)
            for i in range(2):
                (tmp_path / f"minimax-p{p}" / w / f"{i}.png").write_bytes(f"{w}/{i}".encode())
            expect[w] = {f"{i}.png": f"{w}/{i}".encode() for i in range(2)}
    merge(str(tmp_path / "minimax"), [str(tmp_path / f"minimax-p{p}") for p in range(4)])
    got = {w: {n: (tmp_path / "minimax" / w / n).read_bytes() for n in os.listdir(tmp_path / "minimax" / w)}
           for w in os.listdir(tmp_path / "minimax")}
    assert sorted(got) == wnids and got == expect


#################################################################################
#                                    Dry run                                    #
#################################################################################

def test_dry_run_lists_every_step(tmp_path):
    for d in ("train", "val"):
        os.makedirs(tmp_path / "imagenet" / d)
    res = subprocess.run(["bash", os.path.join(ROOT, "scripts", "imagenet1k.sh"), str(tmp_path / "imagenet"),
                          str(tmp_path / "out"), "--dry-run"], capture_output=True, text=True,
                         env=dict(os.environ, NGPU="8"))
    assert res.returncode == 0, res.stderr
    steps = [ln for ln in res.stdout.splitlines() if ln[:4].strip().rstrip(".").isdigit()]
    names = [ln.split("] ", 1)[1].split(":", 1)[0] for ln in steps]
    evals = [f"eval-{m}-ipc{i}" for i in (10, 50) for m in ("minimax", "dit", "random")]
    assert names == ([f"finetune-minimax-p{p}" for p in range(10)] + [f"sample-minimax-p{p}" for p in range(10)]
                     + ["merge-minimax", "sample-dit", "select-random"] + evals + ["tables", "figures"])
    assert all("[todo]" in ln for ln in steps) and not (tmp_path / "out").exists()
    cmd = {n: ln.split(": ", 1)[1] for n, ln in zip(names, steps)}
    train, val, out = tmp_path / "imagenet" / "train", tmp_path / "imagenet" / "val", tmp_path / "out"
    # phases side by side, one GPU each (plain python, not torchrun), with their phase size
    assert cmd["finetune-minimax-p3"].startswith("python train_minimax.py --config ")
    assert f"--subset imagenet1k --phase 3 --phase_size 100 --data_dir {train} " in cmd["finetune-minimax-p3"]
    assert f"--ckpt {out}/finetune-minimax-p3/checkpoint.pt --ipc 50 --out {out}/samples/minimax-p3" in \
        cmd["sample-minimax-p3"]
    assert cmd["sample-dit"].startswith("python -m torch.distributed.run --standalone --nproc_per_node=8 sample.py")
    assert "--ckpt none --ipc 50" in cmd["sample-dit"]
    assert cmd["select-random"].endswith(f"--select-real {out}/samples/random {train} imagenet1k 50 0")
    assert cmd["eval-minimax-ipc10"].startswith(
        f"python evaluate.py --protocol rded --train {out}/samples/minimax --val {val} --subset imagenet1k --ipc 10 "
        f"--arch resnet18 --repeat 3 --results {out}/eval/results.jsonl --method minimax")
    assert f"--train {out}/samples/random --val {val} --subset imagenet1k --ipc 50 " in cmd["eval-random-ipc50"]
    assert cmd["tables"].endswith(f"--out {out}/tables --tables 4")


#################################################################################
#                        Per-step work independent of K                         #
#################################################################################

class CountElements(TorchDispatchMode):
    """Elements of every new tensor the ops produce (in-place results and views of inputs are not new)."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
               if isinstance(a, torch.Tensor)}
        for o in torch.utils._pytree.tree_leaves(out):
            if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() not in ins:
                self.elements += o.numel()
        return out


def _step_elements(num_classes, steps=6):
    """Elements produced by `steps` of losses + backward + memory update, classes drawn from a 10-class window."""
    torch.manual_seed(0)
    crit = MinimaxCriterion(num_classes, 48, memory_size=4, memory_dtype="float16")
    g = torch.Generator().manual_seed(1)
    counts = []
    for _ in range(steps):
        y = torch.randint(0, 10, (8,), generator=g) * (num_classes // 10)  # the same pattern at any K
        real = torch.randn(8, 48, generator=g)
        pred = torch.randn(8, 48, generator=g).requires_grad_()
        with CountElements() as c:
            lr, ld = crit.losses(pred, real, y)
            if (lr + ld).requires_grad:  # the first step has empty memories: no loss yet
                (lr + ld).backward()
            crit.update(real, pred.detach(), y)
        counts.append(c.elements)
    return counts


def test_criterion_and_memory_update_work_does_not_grow_with_classes():
    small, large = _step_elements(10), _step_elements(100_000)
    assert small == large and min(small) > 0  # O(batch): 10,000x the classes, the same elements per step


#################################################################################
#                            1,000-class rehearsal                              #
#################################################################################

def _tree(root):
    """imagenet/{train,val}/<wnid>/ for all 1,000 classes: 2 train and 1 val 8x8 PNG each."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 1)):
        for k, w in enumerate(imagenet_wnids()):
            os.makedirs(root / split / w)
            for i in range(n):
                img = (rng.random((8, 8, 3)) * 40 + (k % 200)).astype(np.uint8)
                Image.fromarray(img).save(root / split / w / f"{w}_{i}.png", compress_level=0)


def test_rehearsal_1000_classes(tmp_path, monkeypatch):
    import engines.sample as sample
    from models.dit import DiT, DiT_models
    from engines.train.run import train
    from tests.test_train import make_base

    _tree(tmp_path / "imagenet")
    torch.manual_seed(0)
    base = DiT_models["DiT-T/2"](input_size=8, in_channels=3, num_classes=1000)
    torch.save(base.state_dict(), tmp_path / "base.pt")
    del make_base  # (the 16 px fixture of test_train is not used: 8 px keeps 1,000 classes fast)

    #### fine-tune all 1,000 classes: lazy cache, remembered scan, float16 memories
    cfg = dict(mode="finetune", base=str(tmp_path / "base.pt"), vae="pixel", image_size=8, subset="imagenet1k",
               data_dir=str(tmp_path / "imagenet" / "train"), run_dir=str(tmp_path / "run"),
               cache_dir=str(tmp_path / "cache"), cache_fill="lazy", cache_dtype="float32", scan_cache=True,
               memory_dtype="float16", memory_size=4, batch_size=8, max_steps=3, num_workers=0, device="cpu",
               progress=False, log_every=1, ckpt_every=3)
    out = train(cfg)
    assert out["step"] == 3
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ck["class_labels"] == list(range(1000)) and ck["subset"]["wnids"] == imagenet_wnids()
    mem = ck["criterion"][0]
    assert mem["real"].shape == (1000, 4, 3 * 8 * 8) and mem["real"].dtype == torch.float16
    assert int(mem["count"].sum()) == 3 * 8  # every drawn image entered its class's memory, no other class
    scans = os.listdir(tmp_path / "cache" / "scans")
    lazy = [d for d in os.listdir(tmp_path / "cache") if d.endswith("-lazy")]
    assert len(scans) == 1 and len(lazy) == 1
    filled = np.load(tmp_path / "cache" / lazy[0] / "filled.npy")
    assert filled.shape == (2000, 2) and 1 <= filled.sum() <= 3 * 8  # only what was drawn was encoded

    #### sample IPC 1 of every class: every model call full, whatever the classes
    shapes = []
    real_fwd = DiT.forward_with_cfg
    monkeypatch.setattr(DiT, "forward_with_cfg", lambda self, x, *a, **k: shapes.append(len(x)) or
                        real_fwd(self, x, *a, **k))
    samples = tmp_path / "samples"
    sample.main(["--subset", "imagenet1k", "--ckpt", str(tmp_path / "run" / "checkpoint.pt"),
                 "--base", str(tmp_path / "base.pt"), "--model", "DiT-T/2", "--vae", "pixel", "--image_size", "8",
                 "--ipc", "1", "--num_steps", "2", "--batch_size", "64", "--micro_batch", "64", "--device", "cpu",
                 "--grid", "0", "--progress", "false", "--out", str(samples)])
    assert shapes == [2 * 64] * (2 * 16)  # 1000 images = 16 calls of 64 (last padded) per step, guidance doubled
    assert sorted(os.listdir(samples)) == sorted(imagenet_wnids() + ["manifest.json"])
    manifest = json.load(open(samples / "manifest.json"))
    assert manifest["complete"] and manifest["classes"] == {w: i for i, w in enumerate(imagenet_wnids())}

    #### labels into the evaluation: wnid folders -> canonical ImageNet index, train and val alike
    wnids = get_subset("imagenet1k").wnids
    for folder in (samples, tmp_path / "imagenet" / "val"):
        paths, labels = flatten(class_files(str(folder), wnids, "train"), wnids)
        assert len(paths) == 1000
        assert all(imagenet_wnids().index(os.path.basename(os.path.dirname(p))) == y for p, y in zip(paths, labels))


def test_table4_reads_rded_runs_beside_the_published_rows(tmp_path):
    from scripts.tables import make_tables
    recs = [{"kind": "run", "subset": "imagenet1k", "method": "minimax", "arch": "resnet18", "ipc": 10, "seed": s,
             "best": b, "last": b - 1, "protocol": "rded"} for s, b in ((0, 44.0), (1, 45.0))]
    recs[1]["protocol"] = {"name": "rded", "epochs": 300}  # the name inside a protocol dict counts too
    recs.append({"kind": "run", "subset": "imagenet1k", "method": "minimax", "arch": "resnet18", "ipc": 10,
                 "seed": 2, "best": 10.0, "last": 9.0, "protocol": {"epochs": 1000}})  # IDC: not a Table 4 number
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    md, _ = make_tables([str(tmp_path)], tables=("4",))
    row = next(ln for ln in md.splitlines() if ln.startswith("| imagenet1k | 10 | ResNet-18 |"))
    cells = [c.strip() for c in row.split("|")[4:-1]]
    # Random, SRe2L, RDED, DiT, Minimax, authors' images
    assert cells == ["–", "– (21.3)", "– (42.0)", "– (39.6)", "44.5 ± 0.5 (44.3 ± 0.5, +0.2)", "–"]
    assert "| imagenet1k | 50 | ResNet-18 |" in md and "ResNet-50" not in md
