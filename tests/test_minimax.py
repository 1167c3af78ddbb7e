"""Minimax criteria: hand-worked values and gradients, a list-based reference, memory edge cases, state."""
import io
import itertools
import math

import pytest
import torch

from models.minimax import MinimaxCriterion
from utils.errors import UserError

S2 = math.sqrt(2.0)


def _crit(K=2, D=3, cap=64, **kw):
    kw.setdefault("lambda_r", 1.0)
    kw.setdefault("lambda_d", 1.0)
    return MinimaxCriterion(K, D, memory_size=cap, **kw)


#################################################################################
#                      Slow, obviously-correct reference (lists)                #
#################################################################################

def _cos(a, b):
    return (a @ b) / (a.norm() * b.norm())


class ListReference:
    """SPEC §3 written as plainly as possible: Python lists, one pair at a time."""

    def __init__(self, K, cap, lambda_r, lambda_d, rep, div):
        self.real, self.pred = [[] for _ in range(K)], [[] for _ in range(K)]
        self.cap, self.lr, self.ld, self.rep, self.div = cap, lambda_r, lambda_d, rep, div

    def __call__(self, pred, real, labels):
        labels = labels.tolist()
        classes = sorted(set(labels))
        n = len(classes)
        loss_r, loss_d = torch.zeros(()), torch.zeros(())
        for c in classes:
            idx = [i for i, y in enumerate(labels) if y == c]
            if self.rep == "mean":
                centre = sum(real[i] for i in idx) / len(idx)
                sims = [_cos(pred[i], centre) for i in idx]
                loss_r = loss_r + self.lr * (1 - sum(sims) / len(sims)) / n
            if self.real[c]:
                if self.rep == "minimax":
                    sims = [_cos(pred[i], m) for i in idx for m in self.real[c]]
                    loss_r = loss_r + self.lr * (1 - min(sims)) / n
                if self.div != "off":
                    sims = [_cos(pred[i], d) for i in idx for d in self.pred[c]]
                    agg = max(sims) if self.div == "minimax" else sum(sims) / len(sims)
                    loss_d = loss_d + self.ld * agg / n
        for c in classes:
            for i in [i for i, y in enumerate(labels) if y == c]:
                self.real[c].append(real[i].detach().clone())
                self.pred[c].append(pred[i].detach().clone())
            while len(self.real[c]) > self.cap:
                self.real[c].pop(0)
            while len(self.pred[c]) > self.cap:
                self.pred[c].pop(0)
        return loss_r, loss_d


#################################################################################
#                                Hand-worked cases                              #
#################################################################################

def _hand_setup(crit):
    """Memory of class 0: real {e1, e2}, predicted {e3, e1+e3}; class 1 empty."""
    real = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    pred = torch.tensor([[0.0, 0, 1], [1, 0, 1]])
    crit.update(real, pred, torch.tensor([0, 0]))


def test_hand_worked_values_and_gradients():
    crit = _crit(lambda_r=0.5, lambda_d=2.0)
    _hand_setup(crit)
    x = torch.tensor([[1.0, 0, 0], [1, 1, 0]], requires_grad=True)
    loss_r, loss_d = crit(x, torch.zeros(2, 3), torch.tensor([0, 0]), update=False)
    # cos(x1, e2) = 0 is the least similar real pair; cos(x1, e1+e3) = 1/sqrt2 the most similar predicted pair
    assert loss_r.item() == pytest.approx(0.5 * (1 - 0.0))
    assert loss_d.item() == pytest.approx(2.0 / S2)
    (loss_r + loss_d).backward()
    # d cos(x, m)/dx = m/(|x||m|) - (x.m) x/(|x|^3 |m|); only x1 (the arg-min / arg-max row) gets gradient
    want = torch.tensor([[0.0, -0.5, 2.0 / S2], [0, 0, 0]])
    assert torch.allclose(x.grad, want, atol=1e-6)


def test_hand_worked_empty_class_counts_in_n():
    crit = _crit()
    _hand_setup(crit)
    x = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 0, 1]])
    loss_r, loss_d = crit(x, torch.zeros(3, 3), torch.tensor([0, 0, 1]))
    # class 1 has an empty memory: it adds nothing but still counts, n = 2
    assert loss_r.item() == pytest.approx(1.0 / 2)
    assert loss_d.item() == pytest.approx((1 / S2) / 2)
    assert crit.count.tolist() == [4, 1]


def test_hand_worked_mean_variants():
    crit = _crit(rep="mean", div="mean")
    _hand_setup(crit)
    x = torch.tensor([[1.0, 0, 0], [1, 1, 0]])
    real = torch.tensor([[1.0, 0, 0], [0, 1, 0]])  # class-0 batch mean (e1 + e2)/2
    loss_r, loss_d = crit(x, real, torch.tensor([0, 0]))
    assert loss_r.item() == pytest.approx(1 - (1 / S2 + 1) / 2)
    assert loss_d.item() == pytest.approx((0 + 1 / S2 + 0 + 0.5) / 4)


def test_hand_worked_single_pair_gradient():
    crit = _crit(K=1, D=2, div="off")
    crit.update(torch.tensor([[1.0, 0]]), torch.tensor([[0.0, 1]]), torch.tensor([0]))
    x = torch.tensor([[1.0, 1.0]], requires_grad=True)
    loss_r, loss_d = crit(x, torch.zeros(1, 2), torch.tensor([0]))
    assert loss_r.item() == pytest.approx(1 - 1 / S2)
    assert loss_d.item() == 0.0
    loss_r.backward()
    assert torch.allclose(x.grad, -torch.tensor([[1.0, -1.0]]) / (2 * S2), atol=1e-6)


#################################################################################
#                           Random steps vs the reference                       #
#################################################################################

VARIANTS = list(itertools.product(["minimax", "mean", "off"], repeat=2))


@pytest.mark.parametrize("rep,div", VARIANTS)
def test_matches_list_reference(rep, div):
    g = torch.Generator().manual_seed(VARIANTS.index((rep, div)))
    K, D, cap, lr, ld = 4, 6, 5, 0.3, 0.7
    crit = MinimaxCriterion(K, D, memory_size=cap, lambda_r=lr, lambda_d=ld, rep=rep, div=div)
    ref = ListReference(K, cap, lr, ld, rep, div)
    for step in range(40):
        B = int(torch.randint(1, 9, (1,), generator=g))
        # classes 0-2 only for a while (class 3 missing), then some batches of one class larger than the memory
        hi = 3 if step < 10 else K
        labels = torch.randint(0, hi, (B,), generator=g)
        if step % 7 == 6:
            labels = torch.full((7,), int(labels[0]))
        B = labels.numel()
        real = torch.randn(B, 2, D // 2, generator=g)  # non-flat input: flattened inside
        base = torch.randn(B, 2, D // 2, generator=g)
        x1 = base.clone().requires_grad_(True)
        x2 = base.clone().requires_grad_(True)
        got_r, got_d = crit(x1, real, labels)
        want_r, want_d = ref(x2.reshape(B, D), real.reshape(B, D), labels)
        assert torch.allclose(got_r, want_r, atol=1e-6), step
        assert torch.allclose(got_d, want_d, atol=1e-6), step
        if want_r.requires_grad or want_d.requires_grad:
            (got_r + 2 * got_d).backward()
            (want_r + 2 * want_d).backward()
            assert torch.allclose(x1.grad, x2.grad, atol=1e-6), step
        for c in range(K):
            assert len(ref.real[c]) == len(ref.pred[c]) == int(crit.count[c])
            if ref.real[c]:
                assert torch.equal(crit.memory(c, "real"), torch.stack(ref.real[c]))
                assert torch.equal(crit.memory(c, "pred"), torch.stack(ref.pred[c]))


#################################################################################
#                                  Memory edges                                 #
#################################################################################

def test_first_step_zero_loss_but_memory_filled():
    crit = _crit(K=3, D=4, cap=4)
    x = torch.randn(3, 4, requires_grad=True)
    real = torch.randn(3, 4)
    loss_r, loss_d = crit(x, real, torch.tensor([2, 0, 2]))
    assert loss_r.item() == 0.0 and loss_d.item() == 0.0
    assert crit.count.tolist() == [1, 0, 2]
    assert torch.equal(crit.memory(2, "real"), real[[0, 2]])
    assert torch.equal(crit.memory(2, "pred"), x.detach()[[0, 2]])
    assert not crit.memory(2, "pred").requires_grad


def test_fifo_exactly_full_then_overflow():
    crit = _crit(K=1, D=2, cap=4)
    vals = torch.arange(1.0, 13.0).reshape(6, 2)  # six distinct rows, inserted one per step
    for i in range(4):
        crit.update(vals[i:i + 1], -vals[i:i + 1], torch.tensor([0]))
    assert crit.count.tolist() == [4] and crit.ptr.tolist() == [0]
    assert torch.equal(crit.memory(0), vals[:4])
    crit.update(vals[4:6], -vals[4:6], torch.tensor([0, 0]))
    assert torch.equal(crit.memory(0), vals[2:6])  # the two oldest dropped, order kept
    assert torch.equal(crit.memory(0, "pred"), -vals[2:6])


def test_batch_larger_than_capacity():
    crit = _crit(K=2, D=1, cap=3)
    crit.update(torch.tensor([[1.0]]), torch.tensor([[1.0]]), torch.tensor([0]))
    real = torch.arange(10.0, 15.0)[:, None]  # five entries of class 0 interleaved with class 1
    labels = torch.tensor([0, 1, 0, 0, 0])
    crit.update(real, real, labels)
    assert torch.equal(crit.memory(0), torch.tensor([[12.0], [13.0], [14.0]]))
    assert torch.equal(crit.memory(1), torch.tensor([[11.0]]))
    assert crit.count.tolist() == [3, 1]


def test_gradient_only_into_prediction():
    crit = _crit(K=2, D=5, rep="minimax")
    crit(torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 0, 1]))
    for rep in ("minimax", "mean"):
        crit.rep = rep
        x = torch.randn(4, 5, requires_grad=True)
        real = torch.randn(4, 5, requires_grad=True)
        loss_r, loss_d = crit(x, real, torch.tensor([0, 1, 1, 0]))
        (loss_r + loss_d).backward()
        assert real.grad is None and x.grad is not None and x.grad.abs().sum() > 0
    assert not crit.real.requires_grad and not crit.pred.requires_grad


def test_backward_after_later_updates():
    crit = _crit(K=1, D=4, cap=2)
    crit(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 0]))
    x = torch.randn(1, 4, requires_grad=True)
    loss_r, loss_d = crit(x, torch.randn(1, 4), torch.tensor([0]))
    crit.update(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 0, 0]))  # overwrites every slot
    (loss_r + loss_d).backward()  # the graph holds copies, not views of the ring buffer
    assert x.grad.abs().sum() > 0


def test_current_batch_not_in_memory_at_loss_time():
    crit = _crit(K=1, D=4)
    x = torch.randn(2, 4)
    _, loss_d = crit(x, x, torch.tensor([0, 0]))
    assert loss_d.item() == 0.0  # had the batch been stored first, max cos would be 1
    _, loss_d = crit(x, x, torch.tensor([0, 0]))
    assert loss_d.item() == pytest.approx(1.0)  # now it is in memory


def test_off_variants_give_zero_and_still_fill_memory():
    crit = _crit(K=1, D=3, rep="off", div="off")
    for _ in range(3):
        loss_r, loss_d = crit(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 0]))
        assert loss_r.item() == 0.0 and loss_d.item() == 0.0
    assert crit.count.tolist() == [6]


#################################################################################
#                                 State and dtype                               #
#################################################################################

def _steps(crit, g, n, K, D):
    out = []
    for _ in range(n):
        labels = torch.randint(0, K, (6,), generator=g)
        out.append(torch.stack(crit(torch.randn(6, D, generator=g), torch.randn(6, D, generator=g), labels)))
    return torch.stack(out)


def test_state_dict_round_trip_continues_identically():
    K, D = 3, 8
    a = MinimaxCriterion(K, D, memory_size=5)
    g = torch.Generator().manual_seed(0)
    _steps(a, g, 7, K, D)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = MinimaxCriterion(K, D, memory_size=5)
    b.load_state_dict(torch.load(buf, weights_only=True))
    state = g.get_state()
    la = _steps(a, g, 7, K, D)
    g.set_state(state)
    lb = _steps(b, g, 7, K, D)
    assert torch.equal(la, lb) and la.abs().sum() > 0
    assert torch.equal(a.real, b.real) and torch.equal(a.pred, b.pred)
    assert torch.equal(a.ptr, b.ptr) and torch.equal(a.count, b.count)


def test_load_state_dict_shape_mismatch_is_user_error():
    with pytest.raises(UserError, match="memory_size"):
        MinimaxCriterion(3, 8, memory_size=5).load_state_dict(MinimaxCriterion(3, 8, memory_size=6).state_dict())
    with pytest.raises(UserError):
        MinimaxCriterion(3, 8).load_state_dict({"step": 1})


def test_half_memory_close_to_float32():
    K, D = 2, 64
    a = MinimaxCriterion(K, D, memory_size=8)
    b = MinimaxCriterion(K, D, memory_size=8, memory_dtype="float16")
    la = _steps(a, torch.Generator().manual_seed(1), 10, K, D)
    lb = _steps(b, torch.Generator().manual_seed(1), 10, K, D)
    assert b.real.dtype == torch.float16
    assert torch.allclose(la, lb, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(UserError, match="representativeness"):
        MinimaxCriterion(2, 3, rep="median")
    with pytest.raises(UserError, match="diversity"):
        MinimaxCriterion(2, 3, div="min")
    with pytest.raises(UserError, match="memory_size"):
        MinimaxCriterion(2, 3, memory_size=0)
    crit = MinimaxCriterion(2, 3)
    with pytest.raises(ValueError, match="3-d"):
        crit(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="subset-local"):
        crit(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 2]))


def test_probe_reports_fill_and_the_pairs_the_losses_use():
    crit = _crit(K=2, D=3, cap=4, lambda_r=0.5, lambda_d=0.25)
    y = torch.tensor([0, 0])
    assert crit.probe(torch.randn(2, 3), y) == {"mem_fill": 0.0, "cos_real_min": None, "cos_pred_max": None}
    crit.update(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), torch.tensor([[1.0, 1.0, 0], [0, 0, 1.0]]), y)
    pred = torch.tensor([[1.0, 0, 0], [1.0, 1.0, 0]])
    got = crit.probe(pred, y)
    # least cosine to the real memory: (1,0,0) vs (0,1,0) = 0; largest to the predicted memory: (1,1,0) with itself
    assert got == pytest.approx({"mem_fill": 0.5, "cos_real_min": 0.0, "cos_pred_max": 1.0}, abs=1e-6)
    loss_r, loss_d = crit.losses(pred, torch.zeros(2, 3), y)  # one class: L_r = l_r (1 - min), L_d = l_d max
    assert float(loss_r) == pytest.approx(0.5 * (1 - got["cos_real_min"]), abs=1e-6)
    assert float(loss_d) == pytest.approx(0.25 * got["cos_pred_max"], abs=1e-6)
