"""Shared pieces of both evaluation protocols: device and precision, data sources on the device or in DataLoaders,
test accuracy, model construction."""
import torch

from data.eval_augment import PilTestSet, PilTrainSet, gpu_test_batch, gpu_train_batch
from models.classifiers import build_classifier
from utils.errors import UserError


#### Device and precision ####################################################################################

def resolve_device(device):
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device} requested but CUDA is not available; use --device cpu or auto")
    return torch.device(device)


def resolve_amp(amp, device):
    """'auto' -> bf16 autocast on CUDA, full fp32 on CPU (CPU bf16 is slower and less exact). `amp` is one of
    evaluate.CONFIG's choices (validated there)."""
    return "bf16" if (amp == "bf16" or (amp == "auto" and device.type == "cuda")) else "none"


def memory_format_for(device):
    """channels_last feeds tensor cores on CUDA; on CPU (oneDNN) it is slower for these nets, so keep NCHW there."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def to_device_format(x):
    return x.contiguous(memory_format=memory_format_for(x.device))


def autocast_for(device, amp):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")


#### Data sources ############################################################################################

class DeviceTrain:
    """Train images as uint8 on the device; each batch is augmented there by `augment(uint8, size, gen)` (IDC's
    crop, flip, jitter and lighting by default)."""

    def __init__(self, images, labels, size, batch_size, device, augment=gpu_train_batch):
        self.images, self.labels = images.to(device), torch.as_tensor(labels, device=device)
        self.size, self.batch_size, self.augment = size, batch_size, augment

    def batches(self, gen):
        n = self.images.shape[0]
        perm = torch.randperm(n, generator=gen, device=gen.device).to(self.images.device)
        for i in range(0, n, self.batch_size):
            idx = perm[i:i + self.batch_size]
            yield self.augment(self.images[idx], self.size, gen), self.labels[idx]


class DeviceTest:
    def __init__(self, images, labels, batch_size, device):
        self.images, self.labels = images.to(device), torch.as_tensor(labels, device=device)
        self.batch_size = batch_size

    def batches(self):
        for i in range(0, self.images.shape[0], self.batch_size):
            yield gpu_test_batch(self.images[i:i + self.batch_size]), self.labels[i:i + self.batch_size]


class PilTrain:
    """The authors' CPU path: PIL decode + augmentation per sample in DataLoader workers."""

    def __init__(self, paths, labels, size, batch_size, device, workers, seed, dataset=None):
        self.device = device
        self.loader = torch.utils.data.DataLoader(
            dataset or PilTrainSet(paths, labels, size), batch_size=batch_size, shuffle=True, num_workers=workers,
            generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0,
            pin_memory=device.type == "cuda")

    def batches(self, gen):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def get_state(self):  # the shuffling order resumes exactly; the workers' augmentation streams do not
        return self.loader.generator.get_state()

    def set_state(self, state):
        self.loader.generator.set_state(state)


class PilTest:
    def __init__(self, paths, labels, size, batch_size, device, workers, resize=None):
        self.device = device
        self.loader = torch.utils.data.DataLoader(PilTestSet(paths, labels, size, resize), batch_size=batch_size,
                                                  num_workers=workers)

    def batches(self):
        for x, y in self.loader:
            yield x.to(self.device), y.to(self.device)


#### Test and models #########################################################################################

@torch.no_grad()
def test_accuracy(model, test, device, amp):
    """Top-1 (%) over the whole test set."""
    model.eval()
    correct, total = torch.zeros((), device=device), 0
    for x, y in test.batches():
        with autocast_for(device, amp):
            logits = model(to_device_format(x))  # (B, classes)
        correct += (logits.argmax(1) == y).sum()
        total += y.numel()
    model.train()
    return 100.0 * float(correct) / max(total, 1)


@torch.no_grad()
def confusion_matrix(model, test, device, amp, num_classes):
    """Counts [true][predicted] over the whole test set (the same forward as test_accuracy); a list of lists."""
    model.eval()
    counts = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    for x, y in test.batches():
        with autocast_for(device, amp):
            pred = model(to_device_format(x)).argmax(1)
        counts += torch.bincount(y.to(device) * num_classes + pred, minlength=num_classes * num_classes)
    model.train()
    return counts.view(num_classes, num_classes).cpu().tolist()


def make_model(arch, num_classes, image_size, depth, device, compile_model, seed, width=None):
    torch.manual_seed(seed)
    model = build_classifier(arch, num_classes, image_size, depth=depth, width=width)
    model = model.to(device, memory_format=memory_format_for(device))
    return torch.compile(model) if compile_model else model
