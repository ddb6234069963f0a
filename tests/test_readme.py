"""The README's "Using it" commands work as written, on tiny real inputs from ../shared/data.

The corpora the README names are replaced by small real samples under the same names, and
`--workers` is lowered; everything else runs verbatim. Training commands run with `--dry-run`,
which reads every dataset's manifest against the model, so the prepared directory names and
sample length must be the ones the config expects.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import REPO, run_perceiver

NOT_RUN = {  # first words of commands this test does not run, with the reason
    ("source",): "the test runs in this interpreter",
    ("perceiver", "data", "train-spm"): "optional; a 32k vocabulary needs more text (test_spm)",
    ("perceiver", "submit"): "Slurm (tests/slurm)",
    ("perceiver", "status"): "Slurm (tests/slurm)",
    ("tensorboard",): "a server",
    ("perceiver", "glue"): "needs a trained run (test_glue_finetune)",
    ("perceiver", "export"): "needs a trained run (test_export)",
    ("perceiver", "import-hf"): "needs an HF model (test_export)",
    ("perceiver", "generate"): "needs a trained run (test_inference)",
    ("perceiver", "fill-mask"): "needs an imported model (test_inference)",
    ("perceiver", "eval"): "needs a trained run (test_inference)",
}


def readme_commands(section: str = "## Using it") -> list[list[str]]:
    """The commands of the first ```bash block after ``section``, comments and continuations
    resolved, each split as the shell would."""
    text = (REPO / "README.md").read_text()
    block = text.split(section, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [words for line in lines if (words := shlex.split(line, comments=True))]


def _tiny_inputs(root: Path, shared: Path) -> None:
    """The corpora the README reads, as links to small real samples under the same names."""
    (root / "configs").symlink_to(REPO / "configs")
    c4 = root / "c4" / "en"
    c4.mkdir(parents=True)
    for i, sample in enumerate(sorted((shared / "c4").glob("*.json.gz"))):
        (c4 / f"c4-train.{i:05d}-of-01024.json.gz").symlink_to(sample)
    wiki = shared / "wikipedia_xml" / "enwiki-table-markup.xml.bz2"
    (root / "enwiki-latest-pages-articles.xml.bz2").symlink_to(wiki)


def _as_run(words: list[str]) -> list[str] | None:
    """``perceiver`` arguments that run ``words`` here at tiny scale, or None if not run."""
    for prefix in NOT_RUN:
        if tuple(words[: len(prefix)]) == prefix:
            return None
    if words[:2] == ["torchrun", "--nproc-per-node"] and words[3:5] == ["-m", "pretrain.cli"]:
        words = ["perceiver", *words[5:]]  # one process is enough to look before leaping
    assert words[0] == "perceiver", f"README command not covered by this test: {words}"
    args = words[1:]
    if args[:2] == ["data", "prepare"] and "--workers" in args:
        args[args.index("--workers") + 1] = "2"
    if args[0] == "train" and "--dry-run" not in args:
        args.append("--dry-run")
    return args


@pytest.mark.slow
@pytest.mark.shared_data
def test_readme_commands_run_as_written(shared_data, tmp_path):
    commands = readme_commands()
    ran = []
    _tiny_inputs(tmp_path, shared_data)
    for words in commands:
        args = _as_run(words)
        if args is None:
            continue
        out = run_perceiver(args, cwd=tmp_path).stdout
        ran.append(args[:2])
        if args[0] == "train":
            assert "# resolved config" in out and "parameters" in out, out
    assert ran.count(["data", "prepare"]) == 2 and ["data", "inspect"] in ran
    assert ran.count(["train", "configs/paper_mlm_c4_wiki.yaml"]) == 3  # dry-run, local, torchrun


def test_readme_train_commands_name_the_prepared_directories():
    """Every documented training command (local, torchrun, Slurm) reads the directories the
    prepare commands write, as its config names them (fast: nothing runs)."""
    from pretrain.config import load_config

    commands = readme_commands()
    outputs = [Path(w[w.index("--output") + 1]) for w in commands if w[1:3] == ["data", "prepare"]]
    assert len({o.parent for o in outputs}) == 1, outputs  # one data root
    trains = [w for w in commands if any(a.startswith("data.dir=") for a in w)]
    assert len(trains) == 4, trains  # dry-run, local, torchrun, submit
    for words in trains:
        config = next(a for a in words if a.endswith(".yaml"))
        overrides = [a for a in words if re.fullmatch(r"[\w.]+=\S*", a)]
        cfg = load_config(REPO / config, overrides)
        root = Path(cfg.data.dir)
        read = {Path(d).relative_to(root) for _, d, _ in cfg.data.dataset_dirs()}
        assert read == {o.relative_to(outputs[0].parent) for o in outputs}, words
        if words[1] != "submit":  # Slurm reads a shared copy of data/
            assert root == outputs[0].parent, words
