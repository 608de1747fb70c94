"""Device choice and the out-of-memory fallback (runtime.device), and training through it."""

from __future__ import annotations

import pytest
import torch

from napari_glimpse.runtime import device as dev_mod
from napari_glimpse.runtime.device import is_oom, resolve_device, run_in_chunks
from napari_glimpse.runtime.events import run_to_end


def _oom_above(limit, calls):
    def fn(start, stop):
        calls.append((start, stop))
        if stop - start > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(range(start, stop))
    return fn


def test_out_of_memory_halves_the_chunk_keeps_it_and_loses_nothing():
    calls = []
    results, chunk = run_in_chunks(_oom_above(3, calls), 10, 16)
    assert chunk == 2  # 16 -> 8 -> 4 -> 2, then kept for the rest
    assert [i for part in results for i in part] == list(range(10))
    assert calls[:4] == [(0, 10), (0, 8), (0, 4), (0, 2)]
    assert all(stop - start <= 2 for start, stop in calls[4:])


def test_other_errors_and_oom_at_the_smallest_chunk_are_raised():
    def broken(start, stop):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(RuntimeError, match="shapes"):
        run_in_chunks(broken, 4, 4)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_in_chunks(_oom_above(0, []), 4, 4, min_chunk=2)  # DDP: a rank may not shrink alone
    assert is_oom(RuntimeError("MPS backend out of memory"))
    assert not is_oom(ValueError("out of memory"))


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match="'cuda'.*CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="MPS is not available"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_autocast_only_on_cuda():
    assert not isinstance(dev_mod.autocast(torch.device("cpu")), torch.autocast)
    assert isinstance(dev_mod.autocast(torch.device("cuda")), torch.autocast)
    assert not isinstance(dev_mod.autocast(torch.device("cuda"), enabled=False), torch.autocast)


def test_training_retries_a_batch_that_runs_out_of_memory(tmp_path, pcam_patches, monkeypatch):
    """A forward pass over more than 2 patches "runs out of memory": the epoch still completes
    on micro-batches of 2, with every patch of every batch trained on once."""
    import shutil

    from napari_glimpse.methods.celnet import model as celnet
    from napari_glimpse.methods.celnet.config import CELNetConfig
    from napari_glimpse.methods.celnet.training import train_celnet

    for c in (0, 1):
        d = tmp_path / "train" / str(c)
        d.mkdir(parents=True)
        for f in pcam_patches[c][:4]:
            shutil.copy(f, d / f.name)
    sizes = []
    forward = celnet.CELNet.forward

    def tight_memory(self, x):
        sizes.append(len(x))
        if self.training and len(x) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(self, x)

    monkeypatch.setattr(celnet.CELNet, "forward", tight_memory)
    config = CELNetConfig(widths=(4, 8, 8), reduction=2, blocks=1, batch_size=8, lr=0.01, epochs=1)
    events = []
    out = run_to_end(train_celnet(tmp_path / "train", tmp_path / "m.safetensors", config=config, device="cpu",
                                  seed=0), events.append)
    assert (tmp_path / "m.safetensors").is_file() and str(out).endswith("m.safetensors")
    assert sizes[:3] == [8, 4, 2]  # halved twice, then kept
    assert sum(s for s in sizes if s <= 2) == 8  # the batch of 8, once, in micro-batches of 2
    epoch = [e for e in events if e.stage == "epoch"][-1]
    assert epoch.metrics["patches"] == 8 and epoch.metrics["train_loss"] > 0
