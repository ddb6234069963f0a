"""Mixtures: proportions, deterministic shuffling, exact mid-epoch resume, elastic world sizes."""

import json
from collections import Counter

import pytest

from data_pipeline.loading.dataset import EmptySplitError, ensure_distributed_env
from data_pipeline.loading.mixtures import (
    InterleavedLoader,
    MixtureSource,
    build_mixture_dataloader,
    build_val_loader,
)
from data_pipeline.shards.manifest import check_shards
from data_pipeline.sources.records import Document
from data_pipeline.tokenization.tokenizer import ByteTokenizer
from tests.conftest import run_distributed
from tests.data_pipeline.conftest import write_documents

TOK = ByteTokenizer()


def labelled(root, prefix, n, val_every=0):
    """Shards whose samples decode to `prefix` + a number (one 15-byte document per sample)."""
    docs = [Document(f"{prefix}{i:014d}", "mem", str(i)) for i in range(n)]
    write_documents(docs, root, 16, 0.0, size_limit=700)
    return root


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    a = labelled(root / "c4", "a", 300)
    b = labelled(root / "wiki", "b", 100)
    return [MixtureSource("c4", str(a), 0.7), MixtureSource("wikipedia", str(b), 0.3)]


def names(batches):
    return [TOK.decode(row) for batch in batches for row in batch["tokens"]]


def test_proportions_over_thousands_of_samples(two_datasets):
    loader = build_mixture_dataloader(two_datasets, "train", 16, seed=3)
    seen = []
    for _ in range(8):  # 8 epochs of 400 samples
        epoch = names(loader)
        assert len(epoch) == 400
        seen += epoch
    share = Counter(s[0] for s in seen)
    assert abs(share["b"] / len(seen) - 0.3) < 0.02  # per epoch: 120 of 400, B repeated 1.2x
    first = Counter(s[0] for s in seen[:100])  # mixed throughout, not one dataset then the other
    assert 15 <= first["b"] <= 45
    assert len({s for s in seen if s[0] == "a"}) == 300  # all of A is seen over the epochs
    again = build_mixture_dataloader(two_datasets, "train", 16, seed=3)
    assert names(again) == seen[:400]  # deterministic
    other = build_mixture_dataloader(two_datasets, "train", 16, seed=4)
    assert names(other) != seen[:400]


def test_resume_mid_epoch_yields_the_rest_exactly_once(two_datasets):
    full = names(build_mixture_dataloader(two_datasets, "train", 8, seed=9))
    loader = build_mixture_dataloader(two_datasets, "train", 8, seed=9)
    iterator = iter(loader)
    head = names(next(iterator) for _ in range(13))
    state = loader.state_dict()
    assert state["sample_in_epoch"] == 13 * 8
    resumed = build_mixture_dataloader(two_datasets, "train", 8, seed=9)
    resumed.load_state_dict(state)
    rest = names(resumed)
    assert head + rest == full  # every remaining sample once, in the same order
    assert Counter(head + rest) == Counter(full)


def test_validation_streams_stay_separate(tmp_path):
    a = labelled(tmp_path / "a", "a", 30)
    b = labelled(tmp_path / "b", "b", 30)
    # labelled() puts everything in train; validation reads each dataset's own split
    sources = [MixtureSource("c4", str(a), 0.7), MixtureSource("wikipedia", str(b), 0.3)]
    loader = build_val_loader(sources, 2, split="train")
    order = []
    for batch in loader:
        order.append(loader.last_source)
        assert len({TOK.decode(r)[0] for r in batch["tokens"]}) == 1  # one dataset per batch
    assert len(order) == len(loader) == 30
    # Smooth weighted round robin: 7 of every 10 batches from c4, spread out.
    assert "".join("a" if s == "c4" else "b" for s in order[:10]) == "abaabaaaba"
    assert Counter(order) == {"c4": 15, "wikipedia": 15}  # all of both, then the rest of B
    pattern = InterleavedLoader({"x": [1, 2, 3], "y": [4]}, {"x": 0.5, "y": 0.5})
    assert list(pattern) == [1, 4, 2, 3]


def test_validation_without_val_samples_is_an_empty_split(two_datasets):
    # labelled() puts everything in train: the trainer skips validation on EmptySplitError
    with pytest.raises(
        EmptySplitError, match=r"no dataset .* validation samples: c4: .*no samples"
    ):
        build_val_loader(two_datasets, 2)


def test_check_shards_of_a_mixture(two_datasets, tmp_path):
    dirs = [s.data_dir for s in two_datasets]
    assert check_shards(dirs, max_seq_len=16, objective="mlm", vocab_size=262)["sample_len"] == 16
    with pytest.raises(ValueError, match=r"model.vocab_size=100 is smaller .* 262 ids"):
        check_shards(dirs, vocab_size=100)
    with pytest.raises(ValueError, match=r"more than model.max_seq_len=8"):
        check_shards(dirs, max_seq_len=8)
    check_shards(dirs, max_seq_len=15, objective="ar")  # AR samples carry one more token
    other = tmp_path / "long"
    write_documents([Document("x" * 100, "m", "1")], other, 32, 0.0)
    with pytest.raises(ValueError, match="one sample length"):
        check_shards([*dirs, other])
    with pytest.raises(ValueError, match="unique"):
        build_mixture_dataloader([two_datasets[0], two_datasets[0]], "train", 4)


def _elastic_rank(rank, world, sources, batch, out, state_path, head):
    ensure_distributed_env(clean_shared_memory=False)
    sources = [MixtureSource(*s) for s in sources]
    loader = build_mixture_dataloader(sources, "train", batch, seed=21)
    if state_path:
        with open(state_path) as f:
            loader.load_state_dict(json.load(f))
    batches = []
    for i, b in enumerate(loader):
        batches.append([TOK.decode(r) for r in b["tokens"]])
        if head and i + 1 == head and rank == 0:
            with open(f"{out}.state", "w") as f:
                json.dump(loader.state_dict(), f)
    with open(f"{out}.rank{rank}", "w") as f:
        json.dump(batches, f)


def _global_batches(out, world):
    ranks = [json.loads(open(f"{out}.rank{r}").read()) for r in range(world)]
    return [sorted(x for r in range(world) for x in ranks[r][i]) for i in range(len(ranks[0]))]


@pytest.mark.distributed
@pytest.mark.slow
def test_elastic_resume_with_another_world_size(two_datasets, tmp_path):
    """Checkpointed on 2 ranks x 4, resumed on 1 rank x 8 and on 4 ranks x 2 (global batch 8)."""
    sources = [(s.name, s.data_dir, s.proportion) for s in two_datasets]
    out2 = str(tmp_path / "w2")
    run_distributed(_elastic_rank, 2, (sources, 4, out2, None, 5))
    two = _global_batches(out2, 2)
    state = f"{out2}.state"
    assert json.loads(open(state).read())["sample_in_epoch"] == 5 * 8
    for world, batch in ((1, 8), (4, 2)):
        out = str(tmp_path / f"w{world}")
        run_distributed(_elastic_rank, world, (sources, batch, out, state, 0))
        assert _global_batches(out, world) == two[5:]  # the same global batches, in order
