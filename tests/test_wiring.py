"""The joins: where the trainer, the RDED loop and the accuracy code wire a correct piece in, each is checked against
an independent re-statement of what the paper says that join computes (not against another run of the same code).
scripts/mutation.py applies deliberate wiring bugs to a copy of the repository and checks that these tests fail."""
import copy
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

import engines.train.run as trainer
from models.diffusion import Diffusion
from tests.test_train import make_base, make_images
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = yaml.safe_load(open(os.path.join(ROOT, "configs", "tiny.yaml")))["train"]
WOOF = ["n02086240", "n02087394", "n02088364"]  # ImageNet labels 155, 159, 162
WOOF_LABELS = [155, 159, 162]
LAMBDA_R, LAMBDA_D = 0.5, 0.3  # large, unequal weights: each term moves the gradient far beyond rounding


#################################################################################
#                      Fine-tuning: one step, re-stated                         #
#################################################################################

@pytest.fixture(scope="module")
def ft(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("wiring")
    data = make_images(str(root / "data"), WOOF, size=(16, 16))  # 12 images: 3 steps per epoch at batch 4
    cfg = dict(TINY, data_dir=data, base=make_base(str(root / "base.pt")), subset="custom",
               cache_dir=str(root / "cache"), epochs=1, lambda_r=LAMBDA_R, lambda_d=LAMBDA_D, ema_decay=0.9999)
    # every image as the trainer must see it: the pixel "VAE" latent is the image in [-1, 1] times its scale
    from data.transforms import image_transform
    from models.vae import load_vae
    scale = load_vae("pixel").scale
    real = [(image_transform(Image.open(os.path.join(data, c, f"{i}.png")).convert("RGB"), 16, False) * scale, j)
            for j, c in enumerate(WOOF) for i in range(4)]
    return {"root": root, "cfg": cfg, "real": real}


class _Recorder:
    """Records each training step at the two places the trainer hands over to a tested piece: the diffusion loss
    (its inputs, a copy of the model and torch's RNG state, which label dropout draws from) and the optimiser step
    (the gradients it applies)."""

    def __init__(self, monkeypatch):
        self.calls, self.grads = [], []
        losses, step = Diffusion.training_losses, torch.optim.AdamW.step
        rec = self

        def training_losses(self, model, x0, t, y, noise):
            rec.calls.append({"model": copy.deepcopy(model), "rng": torch.get_rng_state(), "z": x0.detach().clone(),
                              "t": t.clone(), "y": y.clone(), "noise": noise.clone()})
            return losses(self, model, x0, t, y, noise)

        def adamw_step(self, *a, **k):
            rec.grads.append([None if p.grad is None else p.grad.detach().clone()
                              for g in self.param_groups for p in g["params"]])
            return step(self, *a, **k)

        monkeypatch.setattr(Diffusion, "training_losses", training_losses)
        monkeypatch.setattr(torch.optim.AdamW, "step", adamw_step)


def _which(z, real):
    """(image index, mirrored) of a latent: the real image it equals exactly, as stored or mirrored."""
    for k, (x, _) in enumerate(real):
        if torch.equal(z, x):
            return k, False
        if torch.equal(z, x.flip(-1)):
            return k, True
    raise AssertionError("a training latent equals no real image, mirrored or not")


def _restated_losses(pred, local, mem_real, mem_pred):
    """The paper's Eqs. 3-4 written out again: per class c of the batch with earlier entries, L_r = 1 - the least
    cosine of a prediction to the real memory, L_d = the largest cosine to the predicted memory; means over the
    batch's classes (n counts the classes with empty memories too)."""
    classes = sorted(set(local))
    l_r, l_d = pred.new_zeros(()), pred.new_zeros(())
    for c in classes:
        if not mem_real[c]:
            continue
        p = pred[[i for i, y in enumerate(local) if y == c]].flatten(1)  # (b_c, D)
        cr = F.cosine_similarity(p[:, None], torch.stack(mem_real[c]).flatten(1)[None], dim=-1)  # (b_c, k)
        cp = F.cosine_similarity(p[:, None], torch.stack(mem_pred[c]).flatten(1)[None], dim=-1)  # (b_c, k)
        l_r = l_r + (1 - cr.min()) / len(classes)
        l_d = l_d + cp.max() / len(classes)
    return l_r, l_d


@pytest.fixture(scope="module")
def restated(ft):
    """Three fine-tuning steps (flip on), each re-computed from its recorded inputs; the memories kept here."""
    mp = pytest.MonkeyPatch()
    rec = _Recorder(mp)
    try:
        out = trainer.train(dict(ft["cfg"], run_dir=str(ft["root"] / "restate"), max_steps=3))
    finally:
        mp.undo()
    ck = torch.load(out["checkpoint"], map_location="cpu", weights_only=True)
    capacity = ft["cfg"]["memory_size"]
    mem_real, mem_pred = {c: [] for c in range(3)}, {c: [] for c in range(3)}
    steps, rng = [], torch.get_rng_state()
    for call, applied in zip(rec.calls, rec.grads, strict=True):
        src = [_which(z, ft["real"]) for z in call["z"]]
        local = [ft["real"][k][1] for k, _ in src]  # each latent's class, from the folder it was read from
        model = call["model"].train()
        params = [p for p in model.parameters() if p.requires_grad]
        torch.set_rng_state(call["rng"])
        out_ = Diffusion.linear(1000).training_losses(model, call["z"], call["t"], call["y"], call["noise"])
        diff = out_["loss"].mean()
        pred = out_["pred_x0"]
        l_r, l_d = _restated_losses(pred, local, mem_real, mem_pred)
        grad = lambda loss: torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True,
                                                                                allow_unused=False)])
        steps.append({"src": src, "local": local, "y": call["y"], "applied": torch.cat([g.flatten() for g in applied]),
                      "full": grad(diff + LAMBDA_R * l_r + LAMBDA_D * l_d), "diff": grad(diff),
                      "l_r": l_r.item(), "l_d": l_d.item(),
                      "g_r": grad(l_r) if l_r.requires_grad else None, "g_d": grad(l_d) if l_d.requires_grad else None,
                      "names": [n for n, p in model.named_parameters() if p.requires_grad]})
        for i, c in enumerate(local):  # after the loss, batch order; the oldest entries leave first
            mem_real[c] = (mem_real[c] + [call["z"][i]])[-capacity:]
            mem_pred[c] = (mem_pred[c] + [pred[i].detach()])[-capacity:]
    torch.set_rng_state(rng)
    return {"steps": steps, "ckpt": ck, "mem_real": mem_real, "mem_pred": mem_pred}


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_each_step_applies_the_gradient_of_diffusion_plus_weighted_minimax_terms(restated):
    steps = restated["steps"]
    assert len(steps) == 3 and steps[0]["l_r"] == steps[0]["l_d"] == 0  # step 1: memories still empty
    for k, s in enumerate(steps):
        assert _rel(s["applied"], s["full"]) < 1e-4, f"step {k + 1}: applied gradient is not the paper's"
    for s in steps[1:]:
        # the test can tell: each term moves the gradient far beyond the tolerance, and reaches Difffit parameters
        assert s["l_r"] > 0 and s["l_d"] > 0
        assert _rel(s["diff"], s["full"]) > 1e-2
        wrong_sign = s["diff"] + LAMBDA_R * s["g_r"] - LAMBDA_D * s["g_d"]
        assert _rel(wrong_sign, s["full"]) > 1e-2
        for g in (s["g_r"], s["g_d"]):
            assert g.norm() > 0 and g.abs().max() > 1e-3 * s["diff"].abs().max()


def test_the_minimax_terms_reach_difffit_parameters(restated):
    s = restated["steps"][1]
    offsets = np.cumsum([0] + [p.numel() for p in restated["ckpt"]["params"].values()])
    assert s["names"] == list(restated["ckpt"]["params"])  # the optimiser's parameters are the adapter's
    for g in (s["g_r"], s["g_d"]):
        reached = {n for n, a, b in zip(s["names"], offsets[:-1], offsets[1:]) if g[a:b].abs().max() > 0}
        assert any("gamma" in n for n in reached) and any(n.endswith(".bias") for n in reached)
        assert "y_embedder.embedding_table.weight" in reached


def test_memories_hold_real_then_predicted_latents_in_batch_order(restated):
    crit = restated["ckpt"]["criterion"][0]
    for c in range(3):
        k = len(restated["mem_real"][c])
        assert int(crit["count"][c]) == k > 0
        order = [(int(crit["ptr"][c]) - k + i) % crit["capacity"] for i in range(k)]  # oldest first
        assert torch.equal(crit["real"][c, order], torch.stack(restated["mem_real"][c]).flatten(1))
        assert torch.allclose(crit["pred"][c, order], torch.stack(restated["mem_pred"][c]).flatten(1), atol=1e-5)


def test_labels_reach_the_model_as_the_base_models_classes(restated):
    for s in restated["steps"]:
        assert s["y"].tolist() == [WOOF_LABELS[c] for c in s["local"]]  # ImageNet indices, not folder positions
    assert any(m for s in restated["steps"] for _, m in s["src"])  # flip on: this seed mirrors some images


def test_flip_off_in_the_trainer_mirrors_nothing(ft, restated, monkeypatch):
    """The same seed as `restated` (which mirrors some images): with flip off every latent is a stored image."""
    rec = _Recorder(monkeypatch)
    trainer.train(dict(ft["cfg"], run_dir=str(ft["root"] / "noflip"), max_steps=3, flip=False))
    seen = [_which(z, ft["real"]) for call in rec.calls for z in call["z"]]
    assert len(seen) == 12 and not any(m for _, m in seen)
    assert [k for k, _ in seen] == [k for s in restated["steps"] for k, _ in s["src"]]  # same order, only unmirrored


#################################################################################
#                          Resume: log trimming, refusals                       #
#################################################################################

def test_stop_between_checkpoints_trims_the_log_lines_past_the_checkpoint(ft):
    """A run that logged step 3 but died before its next checkpoint (ckpt_every 2) resumes from step 2: the
    record of step 3 written before the stop is dropped, and written again by the resumed run."""
    run_dir = ft["root"] / "trim"
    cfg = dict(ft["cfg"], run_dir=str(run_dir), epochs=2)
    trainer.train(dict(cfg, max_steps=2))
    shutil.copy(run_dir / "checkpoint.pt", ft["root"] / "trim-step2.pt")
    trainer.train(dict(cfg, max_steps=3))  # logs step 3 and checkpoints it (the last step)
    first = [json.loads(ln) for ln in open(run_dir / "log.jsonl")]
    assert [r["step"] for r in first] == [1, 2, 3]
    shutil.copy(ft["root"] / "trim-step2.pt", run_dir / "checkpoint.pt")  # as if killed before step 3's write
    trainer.train(dict(cfg, max_steps=4))
    again = [json.loads(ln) for ln in open(run_dir / "log.jsonl")]
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    strip = lambda r: {k: v for k, v in r.items() if k != "steps_per_s"}
    assert strip(again[2]) == strip(first[2])  # step 3 replayed exactly


def test_resume_refuses_another_process_count(ft):
    run_dir = ft["root"] / "procs"
    cfg = dict(ft["cfg"], run_dir=str(run_dir))
    trainer.train(dict(cfg, max_steps=2))
    ck = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    ck["world_size"] = 2  # as written by torchrun --nproc_per_node 2
    torch.save(ck, run_dir / "checkpoint.pt")
    before = (run_dir / "checkpoint.pt").read_bytes()
    with pytest.raises(UserError, match=r"written by 2 process\(es\), this run has 1; resume with --nproc_per_node 2"):
        trainer.train(cfg)
    assert (run_dir / "checkpoint.pt").read_bytes() == before


#################################################################################
#                       Evaluation: top-1 on a known answer                     #
#################################################################################

class _FixedLogits(torch.nn.Module):
    """Logits looked up by image id (pixel [0, 0, 0]); in train mode a Dropout(p=1) zeroes them all."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.as_tensor(table, dtype=torch.float32))
        self.drop = torch.nn.Dropout(1.0)

    def forward(self, x):
        return self.drop(self.table[x[:, 0, 0, 0].long()])


class _Batches:
    def __init__(self, x, y, batch):
        self.x, self.y, self.batch = x, y, batch

    def batches(self):
        for i in range(0, len(self.y), self.batch):
            yield self.x[i:i + self.batch], self.y[i:i + self.batch]


def test_top1_is_argmax_over_the_whole_test_set_in_eval_mode():
    from engines.evaluate.common import test_accuracy
    table = [[0.1, 2.0, -1.0],   # label 1: right (argmin would say 2)
             [3.0, 0.0, 1.0],    # label 0: right
             [0.0, 1.0, 5.0],    # label 2: right
             [1.0, 0.5, -2.0],   # label 2: wrong (argmin: right)
             [0.2, 0.1, 0.3]]    # label 1: wrong (argmin: right)
    y = torch.tensor([1, 0, 2, 2, 1])
    x = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 2, 2).contiguous()
    model = _FixedLogits(table).train()
    acc = test_accuracy(model, _Batches(x, y, 2), torch.device("cpu"), "none")  # batches of 2, 2, 1
    assert acc == pytest.approx(60.0, abs=1e-12)  # 3 of 5; argmin: 2 of 5; train mode (all logits 0): 1 of 5
    assert model.training  # handed back in train mode for the next epoch


#################################################################################
#                     RDED: one student step, re-stated                         #
#################################################################################

class _Teacher(torch.nn.Module):
    """1000 outputs after a BatchNorm whose running statistics differ from any batch's: eval mode matters."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16), torch.nn.BatchNorm1d(16),
                                        torch.nn.ReLU(), torch.nn.Linear(16, 1000))
        with torch.no_grad():
            self.body[2].running_mean.normal_(0, 2)
            self.body[2].running_var.uniform_(0.2, 3)
            self.body[4].weight.mul_(8)  # sharp logits: the temperature matters

    def forward(self, x):
        return self.body(x)


def _student():
    torch.manual_seed(6)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))


def test_rded_step_is_cutmix_then_frozen_teacher_subset_logits_then_kl_at_T(monkeypatch):
    from data.eval_augment import cutmix
    from engines.evaluate import rded
    from engines.evaluate.common import DeviceTrain
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (6, 3, 8, 8), generator=g, dtype=torch.uint8)
    labels = [0, 0, 1, 1, 2, 2]
    index, T, seed = [7, 2, 999], 4.0, 3
    augment = lambda im, size, gen: im.float() / 255  # no random draws: the step's draws are the batch and CutMix
    teacher = _Teacher().eval().requires_grad_(False)
    frozen = copy.deepcopy(teacher.state_dict())
    applied = []
    step = torch.optim.AdamW.step

    def adamw_step(self, *a, **k):
        applied.append([p.grad.detach().clone() for grp in self.param_groups for p in grp["params"]])
        return step(self, *a, **k)
    monkeypatch.setattr(torch.optim.AdamW, "step", adamw_step)
    student = _student()
    start = copy.deepcopy(student)
    train = DeviceTrain(u8, labels, 8, 6, torch.device("cpu"), augment=augment)  # one batch per epoch
    test = _Batches(augment(u8, 8, None), torch.tensor(labels), 6)
    rded.train_student(student, teacher, train, test, epochs=1, lr=1e-3, weight_decay=0.01, temperature=T,
                       eval_every=1, best_after=0, seed=seed, device=torch.device("cpu"), teacher_index=index,
                       log=lambda *a: None)
    # the paper's step, again: this seed's batch order, CutMix on it, the frozen teacher's logits of the subset's
    # classes on the mixed images, KL(teacher || student) at T (batch mean)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(6, generator=gen)
    x = augment(u8[perm], 8, gen)
    mixed = cutmix(x, torch.tensor(labels)[perm], gen)[0]
    assert not torch.equal(mixed, x)  # this seed pastes a box
    with torch.no_grad():
        target = F.softmax(teacher(mixed)[:, index] / T, dim=1)  # (B, 3)
    params = [p for grp in rded.param_groups(start, 0.01) for p in grp["params"]]
    log_p = F.log_softmax(start(mixed) / T, dim=1)
    loss = (target * (target.log() - log_p)).sum(1).mean()
    want = torch.autograd.grad(loss, params)
    assert len(applied) == 1
    for a, w in zip(applied[0], want, strict=True):
        assert torch.allclose(a, w, rtol=1e-4, atol=1e-9)
    assert not teacher.training and all(torch.equal(v, frozen[k]) for k, v in teacher.state_dict().items())
    # the test can tell each family apart: labels of the unmixed batch, another T, ImageNet order, teacher in train
    with torch.no_grad():
        wrong = {"before CutMix": F.softmax(teacher(x)[:, index] / T, 1), "T = 1": F.softmax(teacher(mixed)[:, index], 1),
                 "first columns": F.softmax(teacher(mixed)[:, :3] / T, 1),
                 "train mode": F.softmax(copy.deepcopy(teacher).train()(mixed)[:, index] / T, 1)}
    for name, t in wrong.items():
        assert (t - target).abs().max() > 1e-2, name


#################################################################################
#                   Evaluation data: folders read back to labels                #
#################################################################################

NETTE = ["n01440764", "n02102040", "n02979186"]  # ImageNet classes 0, 217, 482 (tench, springer, cassette player)
NUMBERED = {"n01440764": "00000", "n02102040": "00217", "n02979186": "00482"}  # RDED's folder names, written out
COLOUR = {"n01440764": (200, 0, 0), "n02102040": (0, 200, 0), "n02979186": (0, 0, 200)}


def _class_folders(root, numbered, n=2):
    """One folder per class; every image of a class is one flat colour that names its class, and the file names
    are the same in every class (0.png, 1.png), so only the content tells the classes apart."""
    for w in NETTE:
        d = os.path.join(root, NUMBERED[w] if numbered else w)
        os.makedirs(d, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), COLOUR[w]).save(os.path.join(d, f"{i}.png"))
    return str(root)


@pytest.mark.parametrize("numbered", [True, False])
def test_class_folders_read_back_to_their_own_labels(tmp_path, numbered):
    from data.eval_data import class_files, decode_all, flatten
    from engines.evaluate.run import _subset
    root = _class_folders(tmp_path / "train", numbered)
    sub = _subset("custom", root)
    assert sub.wnids == NETTE and sub.imagenet_idx == [0, 217, 482]  # folder 00217 is ImageNet class 217
    paths, labels = flatten(class_files(root, sub.wnids, "train"), sub.wnids)
    images = decode_all(paths, 8, workers=1)  # (N, 3, 8, 8) uint8
    assert len(labels) == 6
    for img, j in zip(images, labels):
        assert img[:, 0, 0].tolist() == list(COLOUR[sub.wnids[j]]), sub.wnids[j]


def test_rded_run_wires_subset_logits_temperature_and_an_eval_teacher(tmp_path, monkeypatch):
    """run_evaluation hands train_student the teacher as load_teacher froze it (still in eval mode after the input
    check), the subset's ImageNet columns in subset order, and the configured temperature."""
    import torchvision
    from engines.evaluate import rded
    from engines.evaluate.run import run_evaluation
    train, val = _class_folders(tmp_path / "train", True), _class_folders(tmp_path / "val", False)
    weights = str(tmp_path / "teacher.pt")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # 1000 classes
    got = {}

    class Stop(Exception):
        pass

    def capture(model, teacher, train_data, test, **kw):
        got.update(kw, teacher=teacher, training=teacher.training,
                   grads=any(p.requires_grad for p in teacher.parameters()))
        raise Stop
    monkeypatch.setattr(rded, "train_student", capture)
    with pytest.raises(Stop):
        run_evaluation(train, val, protocol="rded", teacher_weights=weights, teacher_subset=True, arch="convnet6",
                       width=8, depth=2, image_size=16, ipc=2, epochs=2, batch_size=6, repeat=1, device="cpu",
                       workers=0, temperature=7.0, val_cache="none", results=str(tmp_path / "r"), log=lambda *a: None)
    assert got["teacher_index"] == [0, 217, 482]  # the teacher's columns of 00000, 00217, 00482, in that order
    assert got["temperature"] == 7.0 and not got["training"] and not got["grads"]


def test_every_deliberate_bug_of_the_mutation_list_still_applies():
    """scripts/mutations.yaml stays runnable: each bug's text occurs exactly once in its file (a refactor that
    moves a line must re-state the bug there), and each names tests that exist."""
    from scripts.mutation import load
    bugs = load()
    assert len(bugs) >= 25 and all(b["find"] != b["replace"] for b in bugs)
    for b in bugs:
        assert os.path.isfile(os.path.join(ROOT, b["tests"][0])), b["name"]
