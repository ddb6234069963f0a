"""build_dataloader: coverage, shuffling, epochs, exact mid-epoch resume, 2-rank disjointness."""

import json
import os

import pytest
import torch

from data_pipeline.loading.dataset import build_dataloader, ensure_distributed_env
from tests.conftest import run_distributed


def numbers(corpus, batches):
    return [[corpus.number(row) for row in batch["tokens"]] for batch in batches]


def flat(nested):
    return [x for row in nested for x in row]


def test_env_defaults_and_validation(monkeypatch):
    assert ensure_distributed_env() == {
        "WORLD_SIZE": 1,
        "RANK": 0,
        "LOCAL_WORLD_SIZE": 1,
        "LOCAL_RANK": 0,
    }
    monkeypatch.delenv("LOCAL_RANK")
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        ensure_distributed_env()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="inconsistent"):
        ensure_distributed_env()


def test_sequential_epoch_covers_split_in_order(numbered):
    loader = build_dataloader(numbered.root, "train", 8, shuffle=False)
    batches = list(loader)
    assert len(batches) == len(loader) == 8
    tokens = batches[0]["tokens"]
    assert tokens.dtype == torch.long and tokens.shape == (8, numbered.sample_len)
    assert flat(numbers(numbered, batches)) == numbered.expected["train"]
    val = build_dataloader(numbered.root, "val", 2, shuffle=False, drop_last=False)
    assert flat(numbers(numbered, val)) == numbered.expected["val"]


def test_shuffled_epochs(numbered):
    loader = build_dataloader(numbered.root, "train", 8, shuffle=True, seed=1)
    epoch0 = flat(numbers(numbered, loader))
    epoch1 = flat(numbers(numbered, loader))  # re-iterating starts the next epoch
    expected = sorted(numbered.expected["train"])
    assert sorted(epoch0) == sorted(epoch1) == expected
    assert epoch0 != expected and epoch0 != epoch1
    same_seed = build_dataloader(numbered.root, "train", 8, shuffle=True, seed=1)
    assert flat(numbers(numbered, same_seed)) == epoch0
    other_seed = build_dataloader(numbered.root, "train", 8, shuffle=True, seed=2)
    assert flat(numbers(numbered, other_seed)) != epoch0


@pytest.mark.parametrize("num_workers", [0, 1])
def test_mid_epoch_resume_is_exact(numbered, num_workers):
    def make():
        return build_dataloader(
            numbered.root, "train", 4, shuffle=True, seed=7, num_workers=num_workers
        )

    loader = make()
    iterator = iter(loader)
    seen = [next(iterator) for _ in range(5)]  # workers may have prefetched more than this
    state = loader.state_dict()
    assert state["epoch"] == 0 and state["sample_in_epoch"] == 20
    rest = numbers(numbered, iterator)
    next_epoch = numbers(numbered, loader)
    assert len(rest) == 11 and sorted(flat(numbers(numbered, seen) + rest)) == sorted(
        numbered.expected["train"]
    )

    resumed = make()
    resumed.load_state_dict(state)
    resumed_iter = iter(resumed)
    first_two = numbers(numbered, [next(resumed_iter) for _ in range(2)])
    assert first_two == rest[:2]
    state2 = resumed.state_dict()  # a checkpoint taken after resuming counts from the epoch start
    assert state2["sample_in_epoch"] == 28
    assert first_two + numbers(numbered, resumed_iter) == rest
    assert numbers(numbered, resumed) == next_epoch

    again = make()
    again.load_state_dict(state2)
    assert numbers(numbered, again) == rest[2:]


def test_resume_at_epoch_boundary(numbered):
    loader = build_dataloader(numbered.root, "train", 8, shuffle=True, seed=3)
    list(loader)
    state = loader.state_dict()
    assert (state["epoch"], state["sample_in_epoch"]) == (0, 64)
    epoch1 = numbers(numbered, loader)

    resumed = build_dataloader(numbered.root, "train", 8, shuffle=True, seed=3)
    resumed.load_state_dict(state)
    assert list(resumed) == []  # the rest of epoch 0 is empty
    assert numbers(numbered, resumed) == epoch1


def test_cache_root_copies_shards(numbered, tmp_path):
    loader = build_dataloader(numbered.root, "val", 2, shuffle=False, cache_root=tmp_path)
    assert flat(numbers(numbered, loader))[:4] == numbered.expected["val"][:4]
    assert list(tmp_path.rglob("index.json"))


def test_errors(numbered, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a complete shard directory"):
        build_dataloader(tmp_path, "train", 4)
    with pytest.raises(ValueError, match="unknown split"):
        build_dataloader(numbered.root, "test", 4)
    with pytest.raises(ValueError, match="less than one batch"):
        build_dataloader(numbered.root, "train", 65)


def _rank_main(rank, world, data_dir, out_dir):
    ensure_distributed_env(clean_shared_memory=False)

    def make():
        return build_dataloader(data_dir, "train", 4, shuffle=True, seed=11)

    loader = make()
    iterator = iter(loader)
    head = [next(iterator)["tokens"].tolist() for _ in range(3)]
    state = loader.state_dict()
    rest = [b["tokens"].tolist() for b in iterator]
    resumed = make()
    resumed.load_state_dict(state)
    resumed_rest = [b["tokens"].tolist() for b in resumed]
    result = {"head": head, "rest": rest, "resumed_rest": resumed_rest, "state": state}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


@pytest.mark.distributed
def test_two_ranks_disjoint_and_resumable(numbered, tmp_path):
    run_distributed(_rank_main, 2, (str(numbered.root), str(tmp_path)))
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    seen = []
    for result in results:
        assert len(result["head"]) == 3 and len(result["rest"]) == 5  # 64 / 2 ranks / 4
        assert result["resumed_rest"] == result["rest"]
        assert result["state"] == results[0]["state"]
        assert result["state"]["sample_in_epoch"] == 3 * 4 * 2
        seen += [numbered.number(row) for batch in result["head"] + result["rest"] for row in batch]
    assert sorted(seen) == sorted(numbered.expected["train"])  # disjoint and complete


def test_loader_workers_ignore_stop_signals(tmp_path):
    """Slurm signals every process of a step; DataLoader workers must leave them to the trainer."""
    import signal

    from data_pipeline.loading.dataset import ignore_stop_signals

    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    before = {s: signal.getsignal(s) for s in stops}
    try:
        ignore_stop_signals(0)
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in before)
    finally:
        for s, h in before.items():
            signal.signal(s, h)
