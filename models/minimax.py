"""Minimax criteria (SPEC §3, paper Eqs. 2-5): per-class memories of real and predicted latents."""
import torch

from utils.errors import UserError

REP_MODES = ("minimax", "mean", "off")  # minimax: Eq. 3; mean: Eq. 2 (cos to the real batch mean)
DIV_MODES = ("minimax", "mean", "off")  # minimax: Eq. 4; mean: mean over pairs instead of the max
MEMORY_DTYPES = {"float32": torch.float32, "float16": torch.float16, "half": torch.float16,
                 "bfloat16": torch.bfloat16}
STATE_FORMAT = "minimax-memory"


def _unit(x, eps=1e-8):
    """Rows scaled to unit L2 norm (float32), so a matmul gives cosine similarities."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def _cos_to(p, mem, eps=1e-8):
    """Cosine similarities (b, k) of unit rows p (b, D) to the rows of mem (k, D), without normalising mem."""
    # a copy: autograd keeps mem for the backward, and update() overwrites the ring buffer before that
    mem = mem.to(torch.float32, copy=True)
    return (p @ mem.T) / mem.norm(dim=-1).clamp_min(eps)


#################################################################################
#                                Minimax criterion                              #
#################################################################################

class MinimaxCriterion:
    """Representativeness and diversity losses against per-class FIFO memories (never reset).

    Memories are preallocated ring buffers on the training device: `real`/`pred` (K, N_M, D), with a per-class
    write pointer and fill count kept on the CPU (no device syncs to read them). Both memories of a class are
    appended together, so they always hold the same number of entries. Slots 0..count-1 are the valid ones
    (a ring that has never wrapped is filled from slot 0; once it wraps, count == N_M and every slot is valid).

    memory_dtype "float16" halves the memory (K * N_M * D * 2 bytes per memory; ImageNet-1K at N_M 64 and
    D 4096: 1 GiB instead of 2); the stored latents are then rounded to ~3 significant digits, which moves a
    cosine by ~1e-3 at most. The losses themselves are always computed in float32.

    Ablations (paper Table 5): rep="mean" is Eq. 2, lambda_r * (1 - mean_i cos(x0_hat_i, mean of class c's
    REAL latents in this batch)) / n: it needs no memory, so it also acts on a class's first step; the mean
    over i because Eq. 2 pulls every prediction to the centre (a min over i would be a minimax again).
    div="mean" averages cos over all (i, d) pairs instead of taking the max. "off" contributes 0; the memories
    are filled in every mode, so switching modes on resume keeps a consistent state.
    """

    def __init__(self, num_classes, feature_dim, memory_size=64, lambda_r=0.002, lambda_d=0.008,
                 rep="minimax", div="minimax", device="cpu", memory_dtype="float32"):
        if rep not in REP_MODES:
            raise UserError(f"unknown representativeness mode '{rep}'; use one of {', '.join(REP_MODES)}")
        if div not in DIV_MODES:
            raise UserError(f"unknown diversity mode '{div}'; use one of {', '.join(DIV_MODES)}")
        if int(memory_size) < 1:
            raise UserError(f"memory_size must be >= 1 (got {memory_size}); the paper uses 64")
        if isinstance(memory_dtype, str):
            if memory_dtype not in MEMORY_DTYPES:
                raise UserError(f"unknown memory dtype '{memory_dtype}'; use float32 or float16")
            memory_dtype = MEMORY_DTYPES[memory_dtype]
        self.num_classes, self.feature_dim, self.capacity = int(num_classes), int(feature_dim), int(memory_size)
        self.lambda_r, self.lambda_d = float(lambda_r), float(lambda_d)
        self.rep, self.div = rep, div
        self.device, self.dtype = torch.device(device), memory_dtype
        shape = (self.num_classes, self.capacity, self.feature_dim)
        self.real = torch.zeros(shape, dtype=memory_dtype, device=self.device)  # (K, N_M, D) real latents
        self.pred = torch.zeros(shape, dtype=memory_dtype, device=self.device)  # (K, N_M, D) detached x0_hat
        self.ptr = torch.zeros(self.num_classes, dtype=torch.long)    # next slot to write, per class (CPU)
        self.count = torch.zeros(self.num_classes, dtype=torch.long)  # valid entries, per class (CPU)

    def _check(self, x, labels):
        x = x.reshape(x.shape[0], -1)  # (B, D)
        if x.shape[1] != self.feature_dim:
            raise ValueError(f"minimax criterion built for {self.feature_dim}-d latents, got {x.shape[1]}-d")
        lab = labels.detach().to("cpu", torch.long).reshape(-1)  # (B,) one sync; all bookkeeping on the CPU
        if lab.numel() != x.shape[0]:
            raise ValueError(f"{lab.numel()} labels for a batch of {x.shape[0]}")
        if lab.numel() and (lab.min() < 0 or lab.max() >= self.num_classes):
            raise ValueError(f"labels must be subset-local in 0..{self.num_classes - 1}, got {lab.tolist()}")
        return x, lab

    def memory(self, c, which="real"):
        """Class c's stored entries, oldest first: (count, D) in the memory dtype."""
        bank = {"real": self.real, "pred": self.pred}[which]
        k, p = int(self.count[c]), int(self.ptr[c])
        order = (p - k + torch.arange(k)) % self.capacity  # the oldest entry sits k slots behind the pointer
        return bank[c, order.to(bank.device)]

    #### losses ####
    def losses(self, pred_x0, real_x0, labels):
        """Weighted (L_r, L_d) for this batch against the memories as they are now (no update)."""
        pred, lab = self._check(pred_x0, labels)
        real = real_x0.detach().reshape(real_x0.shape[0], -1)  # (B, D) the real side never gets gradient
        if real.shape != pred.shape:
            raise ValueError(f"real latents {tuple(real.shape)} do not match predictions {tuple(pred.shape)}")
        loss_r = pred.new_zeros((), dtype=torch.float32)
        loss_d = pred.new_zeros((), dtype=torch.float32)
        classes = torch.unique(lab).tolist()
        n = len(classes)  # distinct classes in the batch, those with empty memories included
        pred_u = _unit(pred)  # (B, D)
        for c in classes:
            sel = (lab == c).nonzero().squeeze(1).to(pred.device)
            p = pred_u[sel]  # (b_c, D)
            k = int(self.count[c])
            if self.rep == "mean":
                # Eq. 2: every prediction of class c towards the centre of the class's real latents in this batch
                centre = _unit(real[sel].float().mean(0, keepdim=True))  # (1, D)
                loss_r = loss_r + self.lambda_r * (1 - (p @ centre.T).mean()) / n
            elif self.rep == "minimax" and k > 0:
                # Eq. 3: pull in the least similar (prediction, real memory) pair
                sim = _cos_to(p, self.real[c, :k])  # (b_c, k)
                loss_r = loss_r + self.lambda_r * (1 - sim.min()) / n
            if self.div != "off" and k > 0:
                # Eq. 4: push away from the most similar earlier prediction ("mean": from all of them)
                sim = _cos_to(p, self.pred[c, :k])  # (b_c, k)
                agg = sim.max() if self.div == "minimax" else sim.mean()
                loss_d = loss_d + self.lambda_d * agg / n
        return loss_r, loss_d

    @torch.no_grad()
    def probe(self, pred_x0, labels):
        """What the losses see, unweighted, whatever the modes: {"mem_fill": mean fill of the batch's classes
        (0..1), "cos_real_min": mean over those classes with entries of the least cosine between a prediction and
        the real memory (Eq. 3's pair), "cos_pred_max": same, the largest cosine to the predicted memory (Eq. 4's
        pair)}. For logs: how full the memories are and whether the losses move the cosines they aim at."""
        pred, lab = self._check(pred_x0, labels)
        pred_u = _unit(pred)
        fill, lo, hi = [], [], []
        for c in torch.unique(lab).tolist():
            k = int(self.count[c])
            fill.append(k / self.capacity)
            if k:
                p = pred_u[(lab == c).nonzero().squeeze(1).to(pred.device)]
                lo.append(float(_cos_to(p, self.real[c, :k]).min()))
                hi.append(float(_cos_to(p, self.pred[c, :k]).max()))
        mean = (lambda v: sum(v) / len(v) if v else None)  # None: no class of the batch has entries yet
        return {"mem_fill": mean(fill), "cos_real_min": mean(lo), "cos_pred_max": mean(hi)}

    #### memory update ####
    @torch.no_grad()
    def update(self, real_x0, pred_x0, labels):
        """Append each class's real latents and detached predictions in batch order; drop the oldest beyond N_M.

        Under DDP with a global memory, pass the all-gathered (real, pred, labels) of every rank (rank order,
        then batch order) so that every rank's memory stays identical.
        """
        real, lab = self._check(real_x0, labels)
        pred = pred_x0.detach().reshape(pred_x0.shape[0], -1)  # (B, D)
        if not lab.numel():
            return
        # O(batch), not O(classes): only the classes present are touched (ImageNet-1K: K = 1000 >> B = 8)
        classes, inverse, counts = torch.unique(lab, return_inverse=True, return_counts=True)  # (U,), (B,), (U,)
        order = torch.sort(inverse, stable=True).indices  # (B,) grouped by class, batch order inside a group
        starts = counts.cumsum(0) - counts  # (U,) first sorted position of each class
        rank = torch.empty_like(lab)
        rank[order] = torch.arange(lab.numel()) - starts[inverse[order]]  # (B,) position within its class
        added = counts[inverse]  # (B,) entries its class adds in this batch
        # a class with more than N_M new entries keeps only its last N_M: their slots are then all distinct
        keep = rank >= added - self.capacity  # (B,)
        slot = (self.ptr[lab] + rank) % self.capacity  # (B,)
        rows, cols = lab[keep].to(self.device), slot[keep].to(self.device)
        idx = keep.nonzero().squeeze(1).to(real.device)
        self.real[rows, cols] = real[idx].to(self.device, self.dtype)
        self.pred[rows, cols] = pred[idx].to(self.device, self.dtype)
        self.ptr[classes] = (self.ptr[classes] + counts) % self.capacity
        self.count[classes] = torch.clamp(self.count[classes] + counts, max=self.capacity)

    def __call__(self, pred_x0, real_x0, labels, update=True):
        """Weighted (L_r, L_d), then (by default) the memory update, so the batch never sees itself."""
        loss_r, loss_d = self.losses(pred_x0, real_x0, labels)
        if update:
            self.update(real_x0, pred_x0, labels)
        return loss_r, loss_d

    #### state ####
    def state_dict(self):
        """Memories and pointers as plain CPU tensors and ints (torch.load(weights_only=True) safe)."""
        return {"format": STATE_FORMAT, "version": 1, "num_classes": self.num_classes,
                "capacity": self.capacity, "feature_dim": self.feature_dim, "rep": self.rep, "div": self.div,
                "real": self.real.cpu().clone(), "pred": self.pred.cpu().clone(),
                "ptr": self.ptr.clone(), "count": self.count.clone()}

    def load_state_dict(self, state):
        """Restore memories saved by state_dict(); the shape must match this criterion's."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UserError("checkpoint holds no minimax memory state; resume from a checkpoint of this trainer")
        got = (state["num_classes"], state["capacity"], state["feature_dim"])
        want = (self.num_classes, self.capacity, self.feature_dim)
        if tuple(got) != want:
            raise UserError(f"checkpoint minimax memory is (classes, memory_size, dim) = {tuple(got)} but this run "
                            f"uses {want}; resume with the same subset, memory_size and image size")
        self.real.copy_(state["real"].to(self.device, self.dtype))
        self.pred.copy_(state["pred"].to(self.device, self.dtype))
        self.ptr = state["ptr"].to("cpu", torch.long).clone()
        self.count = state["count"].to("cpu", torch.long).clone()

    def to(self, device):
        """Move the memories to another device (pointers stay on the CPU)."""
        self.device = torch.device(device)
        self.real, self.pred = self.real.to(self.device), self.pred.to(self.device)
        return self
