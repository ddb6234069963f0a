"""Complete-or-invisible checkpoints and the resume policy (DeepSpeed engine faked here; the real
engine is exercised by tests/pretrain/test_train_e2e.py)."""

from __future__ import annotations

import random

import pytest
import torch

from pretrain.train import checkpoint as ckpt


class FakeEngine:
    def __init__(self, fail: bool = False):
        self.fail = fail
        self.loaded = None

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        path = __import__("pathlib").Path(save_dir) / tag
        path.mkdir(parents=True, exist_ok=True)
        (path / "mp_rank_00_model_states.pt").write_bytes(b"partial")
        if self.fail:
            raise OSError("disk full")
        torch.save(client_state, path / "client.pt")

    def load_checkpoint(self, load_dir, tag, **kw):
        path = __import__("pathlib").Path(load_dir) / tag
        return str(path), torch.load(path / "client.pt")


def test_save_then_find_latest_and_keep(tmp_path):
    eng = FakeEngine()
    for step in (10, 20, 30):
        ckpt.save(eng, tmp_path, step, {"step": step}, "cfg: 1\n", keep=2)
    assert [s for s, _ in ckpt.list_complete(tmp_path)] == [20, 30]
    latest = ckpt.find_latest(tmp_path)
    assert latest.name == "step_00000030" and (latest / "config.yaml").read_text() == "cfg: 1\n"
    assert ckpt.load(eng, latest)["step"] == 30


def test_crash_during_save_leaves_nothing_that_looks_valid(tmp_path):
    ckpt.save(FakeEngine(), tmp_path, 10, {"step": 10}, "", keep=0)
    with pytest.raises(OSError):
        ckpt.save(FakeEngine(fail=True), tmp_path, 20, {"step": 20}, "", keep=0)
    assert (tmp_path / "step_00000020").is_dir()  # the partial files exist...
    assert ckpt.find_latest(tmp_path).name == "step_00000010"  # ...but are invisible
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        ckpt.resolve_resume(str(tmp_path / "step_00000020"), tmp_path)
    # saving the same step again replaces the partial directory
    ckpt.save(FakeEngine(), tmp_path, 20, {"step": 20}, "", keep=0)
    assert ckpt.find_latest(tmp_path).name == "step_00000020"


def test_resume_policies(tmp_path):
    assert ckpt.resolve_resume("auto", tmp_path / "missing") is None
    assert ckpt.resolve_resume("none", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="checkpoint.resume"):
        ckpt.resolve_resume(str(tmp_path / "nope"), tmp_path)


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    a = (random.random(), torch.rand(3))
    ckpt.set_rng_state(state)
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_files_are_recorded_and_damage_is_named(tmp_path):
    path = ckpt.save(FakeEngine(), tmp_path, 10, {"step": 10}, "cfg: 1\n", keep=0)
    assert ckpt.verify(path) == []
    client = path / "client.pt"
    data = bytearray(client.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: only the checksum sees it
    client.write_bytes(bytes(data))
    assert ckpt.verify(path, checksums=False) == []
    assert ckpt.verify(path) == [f"{client}: CRC-32 differs from the one COMPLETE recorded"]
    client.write_bytes(bytes(data[:-5]))
    assert ckpt.verify(path, checksums=False) == [
        f"{client}: {len(data) - 5} bytes, COMPLETE recorded {len(data)}"
    ]


def test_resume_skips_a_damaged_checkpoint_and_a_named_one_is_an_error(tmp_path):
    for step in (10, 20):
        ckpt.save(FakeEngine(), tmp_path, step, {"step": step}, "", keep=0)
    newest = tmp_path / "step_00000020"
    (newest / "client.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"checkpoint.resume: .*client.pt: 0 bytes"):
        ckpt.select_resume(str(newest), tmp_path)
    with pytest.warns(UserWarning, match="client.pt: 0 bytes"):
        assert ckpt.select_resume("auto", tmp_path) == tmp_path / "step_00000010"
    assert [p for p, _ in ckpt.rejected(tmp_path)] == [newest] and not ckpt.is_complete(newest)
    (tmp_path / "step_00000010" / "client.pt").unlink()
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="every complete checkpoint"):
        ckpt.select_resume("auto", tmp_path)


def test_save_prunes_universal_conversions_and_older_partial_directories(tmp_path):
    for step in (10, 20):
        ckpt.save(FakeEngine(), tmp_path, step, {"step": step}, "", keep=0)
    (tmp_path / "step_00000010.universal").mkdir()
    (tmp_path / "latest_universal").write_text("step_00000010.universal.tmp")
    (tmp_path / "step_00000015").mkdir()  # killed before COMPLETE
    (tmp_path / "step_00000040").mkdir()  # newer than any complete one: may be being written
    ckpt.save(FakeEngine(), tmp_path, 30, {"step": 30}, "", keep=2)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["step_00000020", "step_00000030", "step_00000040"]
