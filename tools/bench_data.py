"""Data pipeline throughput: conversion vs plain decompression, and loader vs trainer demand.

1. Conversion. For a C4 file (`.json.gz`) and a Wikipedia dump (`.xml.bz2`), times
   `perceiver data prepare` with one worker (bytes tokenizer, seq-len 2048) against
   `gzip -dc` / `bzip2 -dc` of the same file to /dev/null, in the same run, as MB of compressed
   input per second and per CPU second (the per-core figure; the target is conversion at most 2x
   slower than decompression). Then the same input split into 4 files with 2 workers.
2. Loading. Samples/s of `StreamingDataset` + `StreamingDataLoader` + `stack_tokens` over the
   converted C4 shards (micro-batch 8 x 2048 bytes), with and without the MLM masker, against what
   one GPU consumes training the paper's 201M-parameter Perceiver IO MLM
   (`flops_per_sample` / (peak bf16 FLOP/s x MFU)). The same shards are also read from a local
   S3 endpoint (moto's server on 127.0.0.1, when `moto[server]` is installed) into an empty cache,
   in the same run, as `Stream(remote=s3://..., local=cache)` reads them in training.

Inputs are real files when given (`--c4 FILE --wiki FILE`), otherwise generated: C4-like JSON
lines (documents of log-normal length, mean ~2.2 kB as in C4, sentences from the real C4 and
Wikipedia samples in ../shared/data when present, else from the Python stdlib's docstrings) and a
dump of the real enwiki sample's pages repeated under new titles, half of their prose words
replaced in each copy so that bzip2 decompresses it at the real sample's speed (or synthetic
wikitext). The manifest's document counts are printed with the timings.

    python -m tools.bench_data --mb 100 --markdown     # from the repository root
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"

from data_pipeline.shards.prepare import prepare  # noqa: E402
from data_pipeline.sources.demo import iter_stdlib_docstrings  # noqa: E402
from data_pipeline.sources.records import Document  # noqa: E402


def _cpu() -> float:
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _sentences() -> list[str]:
    texts = []
    for path in sorted((SHARED / "c4").glob("*.json.gz")):
        texts += [json.loads(line)["text"] for line in gzip.open(path, "rt", encoding="utf-8")]
    if len(texts) < 10:
        texts = [
            d.text for d in iter_stdlib_docstrings(max_bytes=3_000_000) if isinstance(d, Document)
        ]
    return [s for t in texts for s in re.split(r"(?<=[.!?])\s+", t.replace("\n", " ")) if s]


def make_c4(path: Path, mb: float, seed: int = 0) -> Path:
    """C4-like `.json.gz`: lines `{text, timestamp, url}`, ~`mb` MB of JSON."""
    rng = random.Random(seed)
    sentences = _sentences()
    total = n = 0
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=6) as out:
        while total < mb * 1e6:
            target = int(rng.lognormvariate(7.3, 0.8))
            parts: list[str] = []
            while sum(map(len, parts)) < target:
                parts.append(rng.choice(sentences) + ("\n" if rng.random() < 0.15 else " "))
            obj = {"text": "".join(parts).strip(), "timestamp": "2019-04-21T18:54:04Z",
                   "url": f"https://example.com/{n}"}  # fmt: skip
            line = json.dumps(obj) + "\n"
            out.write(line)
            total += len(line)
            n += 1
    return path


# In a prose line of wikitext: spans that are markup (left alone), or a lower-case word.
_MARKUP_OR_WORD = re.compile(
    r"\{\{[^{}]*\}\}|\[\[[^\]|]*|&lt;.*?&gt;|&[a-z]+;|\[?(?:https?:)?//\S*|\b([a-z]{3,})\b"
)


def _reword(text: str, rng: random.Random, vocabulary: list[str], rate: float) -> str:
    """Replaces a fraction `rate` of the prose words of (XML-escaped) wikitext by other words.

    Only lines of prose (paragraphs, list items) are touched, and in them no markup span, so the
    markup density stays the real article's while the text stops being an exact repeat.
    """

    def word(match: re.Match[str]) -> str:
        if match.group(1) and rng.random() < rate:
            return rng.choice(vocabulary)
        return match.group(0)

    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line[:1].isalpha() or line.startswith(("'", "[[", "*", "#", ":")):
            lines[i] = _MARKUP_OR_WORD.sub(word, line)
    return "\n".join(lines)


def make_wiki(path: Path, mb: float, reword_rate: float = 0.5, seed: int = 0) -> Path:
    """A `.xml.bz2` dump of ~`mb` MB of XML: the real enwiki sample's pages, repeated.

    Each copy gets a new title and a fraction `reword_rate` of its prose words replaced by words
    drawn from real text (the C4 sample). Exact repeats would compress 9x and make `bzip2 -dc`
    ~30% faster per MB than on a real dump; at the default rate the generated dump compresses and
    decompresses like the real sample (`main` prints both).
    """
    rng = random.Random(seed)
    sample = SHARED / "wikipedia_xml" / "enwiki-table-markup.xml.bz2"
    if sample.is_file():
        xml = bz2.decompress(sample.read_bytes()).decode("utf-8")
        pages = re.findall(r"  <page>.*?</page>\n", xml, re.S)
    else:
        body = " ".join(_sentences()[:400])
        pages = [
            f"  <page>\n    <title>P</title>\n    <ns>0</ns>\n    <id>1</id>\n    <revision>"
            f"<text>'''P''' is a [[topic|subject]].{{{{cn}}}} {body}\n== Section ==\n{body}"
            f"</text></revision>\n  </page>\n"
        ]
    vocabulary = [w for s in _sentences() for w in re.findall(r"\b[a-z]{3,}\b", s)]
    out = ['<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">\n']
    size, i = 0, 0
    while size < mb * 1e6:
        page = re.sub(r"<title>(.*?)</title>", rf"<title>\1 {i}</title>", pages[i % len(pages)])
        head, sep, rest = page.partition("<text")
        opening, gt, rest = rest.partition(">")
        body, end, tail = rest.partition("</text>")
        body = _reword(body, rng, vocabulary, reword_rate)
        page = head + sep + opening + gt + body + end + tail
        out.append(page)
        size += len(page)
        i += 1
    out.append("</mediawiki>\n")
    path.write_bytes(bz2.compress("".join(out).encode("utf-8"), 9))
    return path


def decompression_rate(path: Path, repeats: int = 3) -> tuple[float, float]:
    """(MB of output per CPU second of libbz2 / zlib in this process, compression ratio)."""
    data = path.read_bytes()
    decompress = bz2.decompress if path.suffix == ".bz2" else gzip.decompress
    best, size = float("inf"), 0
    for _ in range(repeats):
        t0 = time.process_time()
        size = len(decompress(data))
        best = min(best, time.process_time() - t0)
    return size / 1e6 / max(best, 1e-9), size / len(data)


def time_decompress(path: Path) -> tuple[float, float]:
    tool = "bzip2" if path.suffix == ".bz2" else "gzip"
    cpu, t0 = _cpu(), time.perf_counter()
    subprocess.run([tool, "-dc", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0, _cpu() - cpu


def time_prepare(source: str, inputs: list[Path], out: Path, workers: int) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    cpu, t0 = _cpu(), time.perf_counter()
    prepare(source, inputs, out, seq_len=2048, workers=workers, val_fraction=0.01)
    return time.perf_counter() - t0, _cpu() - cpu


def bench_conversion(name: str, source: str, path: Path, work: Path, repeats: int) -> dict:
    mb = path.stat().st_size / 1e6
    dec = min((time_decompress(path) for _ in range(repeats)), key=lambda r: r[0])
    conv = min(
        (time_prepare(source, [path], work / f"{name}-1", 1) for _ in range(repeats)),
        key=lambda r: r[0],
    )
    return {
        "input": name, "mb": mb, "decompress_s": dec[0], "decompress_cpu_s": dec[1],
        "convert_s": conv[0], "convert_cpu_s": conv[1],
        "decompress_mb_s": mb / dec[0], "convert_mb_s": mb / conv[0],
        "ratio_wall": conv[0] / dec[0], "ratio_cpu": conv[1] / max(dec[1], 1e-9),
        "documents": _documents(work / f"{name}-1"),
    }  # fmt: skip


def _documents(out: Path) -> dict:
    """Documents kept and rejected (by reason) in a conversion: what the timing covered."""
    counts = json.loads((out / "manifest.json").read_text())["documents"]
    return {"kept": counts["kept"], "rejected": counts["rejected_by_reason"]}


def split_c4(path: Path, parts: int, work: Path) -> list[Path]:
    lines = gzip.open(path, "rt", encoding="utf-8").readlines()
    out = []
    for k in range(parts):
        p = work / f"c4-train.{k:05d}-of-{parts:05d}.json.gz"
        with gzip.open(p, "wt", encoding="utf-8", compresslevel=6) as f:
            f.writelines(lines[k::parts])
        out.append(p)
    return out


def bench_loader(
    data_dir: Path | str, seconds: float, mask: bool, cache_root: Path | None = None
) -> float:
    from data_pipeline.loading.collators import MLMMasker
    from data_pipeline.loading.dataset import build_dataloader, ensure_distributed_env
    from data_pipeline.tokenization.tokenizer import ByteTokenizer

    ensure_distributed_env(clean_shared_memory=False)
    loader = build_dataloader(data_dir, "train", 8, shuffle=True, seed=0, cache_root=cache_root)
    masker = MLMMasker(ByteTokenizer()) if mask else None
    samples, step, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for batch in loader:
            if masker is not None:
                masker(batch["tokens"], step)
            samples += batch["tokens"].shape[0]
            step += 1
            if time.perf_counter() - t0 > seconds:
                break
    return samples / (time.perf_counter() - t0)


def bench_s3_loader(data_dir: Path, seconds: float, work: Path) -> float | None:
    """Samples/s of the same loader with the shards in a local S3 endpoint (moto's server, in this
    process) streamed into an empty cache: the download path, not a real network."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        print("moto[server] not installed: no S3 loader case", file=sys.stderr)
        return None
    import logging
    import socket

    import boto3

    from data_pipeline.shards.remote import publish

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3", endpoint_url=env["S3_ENDPOINT_URL"]).create_bucket(Bucket="bench")
        publish(data_dir, "s3://bench/c4")
        return bench_loader("s3://bench/c4", seconds, mask=False, cache_root=work / "s3-cache")
    finally:
        server.stop()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def trainer_demand(mfu: float) -> dict[str, float]:
    from pretrain.config import CONFIG_ROOT, _load_yaml
    from pretrain.models.perceiver_io import PerceiverIOConfig

    fields = {
        k: v
        for k, v in _load_yaml(CONFIG_ROOT / "model" / "perceiver_io_mlm_paper.yaml").items()
        if k != "type"
    }  # noqa: E501
    flops = PerceiverIOConfig(**fields).flops_per_sample()
    peaks = {"A100 bf16 (312 TFLOP/s)": 312e12, "H100 SXM bf16 (989 TFLOP/s)": 989e12}
    return {"flops_per_sample": flops, **{k: p * mfu / flops for k, p in peaks.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--c4", type=Path, help="a C4 .json.gz (default: generated)")
    parser.add_argument("--wiki", type=Path, help="a pages-articles .xml.bz2 (default: generated)")
    parser.add_argument("--mb", type=float, default=100.0, help="generated JSON / XML size")
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings")
    parser.add_argument("--loader-seconds", type=float, default=10.0)
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed MFU of the trainer")
    parser.add_argument("--markdown", action="store_true", help="print a markdown section")
    parser.add_argument(
        "--reword-rate",
        type=float,
        default=0.5,
        help="prose words replaced per generated page copy",
    )
    parser.add_argument("--wiki-only", action="store_true", help="only the Wikipedia conversion")
    args = parser.parse_args()
    import streaming  # noqa: F401  (the first conversion would import it: ~5 s of its time)

    work = Path(tempfile.mkdtemp(prefix="bench_data-"))
    if args.wiki_only:
        try:
            wiki = args.wiki or make_wiki(
                work / "enwiki-bench-pages-articles.xml.bz2", args.mb, args.reword_rate
            )
            row = bench_conversion("enwiki .xml.bz2", "wikipedia", wiki, work, args.repeats)
            result = {"conversion": [row], "bz2_calibration": bz2_calibration(wiki)}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(result, indent=2))
        return
    try:
        c4 = args.c4 or make_c4(work / "c4-train.00000-of-01024.json.gz", args.mb)
        wiki = args.wiki or make_wiki(
            work / "enwiki-bench-pages-articles.xml.bz2", args.mb, args.reword_rate
        )
        rows = [
            bench_conversion("C4 .json.gz", "c4", c4, work, args.repeats),
            bench_conversion("enwiki .xml.bz2", "wikipedia", wiki, work, args.repeats),
        ]
        files = split_c4(c4, 4, work)
        wall, cpu = time_prepare("c4", files, work / "c4-4files", 2)
        parallel = {"files": 4, "workers": 2, "mb": sum(f.stat().st_size for f in files) / 1e6,
                    "wall_s": wall, "cpu_s": cpu}  # fmt: skip
        loader = bench_loader(work / "C4 .json.gz-1", args.loader_seconds, mask=False)
        masked = bench_loader(work / "C4 .json.gz-1", args.loader_seconds, mask=True)
        from_s3 = bench_s3_loader(work / "C4 .json.gz-1", args.loader_seconds, work)
        demand = trainer_demand(args.mfu)
        calibration = bz2_calibration(wiki)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"conversion": rows, "parallel": parallel, "loader_samples_s": loader,
              "loader_masked_samples_s": masked, "loader_s3_samples_s": from_s3,
              "trainer_demand": demand,
              "bz2_calibration": calibration,
              "cpus": os.cpu_count(), "python": sys.version.split()[0]}  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.markdown:
        print(markdown(result, args))


def bz2_calibration(wiki: Path) -> dict[str, float]:
    """libbz2's speed on the benchmark dump and on the real enwiki sample, same process."""
    result = dict(zip(("dump_mb_s", "dump_ratio"), decompression_rate(wiki)))
    sample = SHARED / "wikipedia_xml" / "enwiki-table-markup.xml.bz2"
    if sample.is_file():
        result.update(
            zip(("real_sample_mb_s", "real_sample_ratio"), decompression_rate(sample, 50))
        )
    return result


def markdown(r: dict, args: argparse.Namespace) -> str:
    lines = [
        "| input | MB (compressed) | decompress (gzip/bzip2 -dc) | `prepare`, 1 worker | "
        "conversion / decompression (wall, CPU) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in r["conversion"]:
        lines.append(
            f"| {row['input']} | {row['mb']:.1f} | {row['decompress_s']:.2f} s "
            f"({row['decompress_mb_s']:.1f} MB/s) | {row['convert_s']:.2f} s "
            f"({row['convert_mb_s']:.1f} MB/s) | {row['ratio_wall']:.2f}x, "
            f"{row['ratio_cpu']:.2f}x |"
        )
    for row in r["conversion"]:
        rejected = ", ".join(f"{n} {k}" for k, n in row["documents"]["rejected"].items())
        lines.append(f"\n{row['input']}: {row['documents']['kept']:,} documents kept"
                     + (f"; rejected: {rejected}" if rejected else ""))  # fmt: skip
    c = r["bz2_calibration"]
    if "real_sample_mb_s" in c:
        lines += [
            "",
            f"libbz2 decompresses the enwiki dump at {c['dump_mb_s']:.1f} MB of XML per CPU second "
            f"(compression ratio {c['dump_ratio']:.1f}x), the real enwiki sample at "
            f"{c['real_sample_mb_s']:.1f} MB/s ({c['real_sample_ratio']:.1f}x).",
        ]
    p = r["parallel"]
    lines += [
        "",
        f"C4 split into {p['files']} files, {p['workers']} workers: {p['mb']:.1f} MB in "
        f"{p['wall_s']:.2f} s wall ({p['mb'] / p['wall_s']:.1f} MB/s), {p['cpu_s']:.2f} CPU s.",
        "",
        "| loader (micro-batch 8 x 2048 bytes, 1 process) | samples/s |",
        "| --- | ---: |",
        f"| StreamingDataset + stack_tokens | {r['loader_samples_s']:,.0f} |",
        f"| ... + MLM whole-word masking | {r['loader_masked_samples_s']:,.0f} |",
    ]
    if r.get("loader_s3_samples_s"):
        lines.append(f"| StreamingDataset from a local S3 endpoint (moto), empty cache | "
                     f"{r['loader_s3_samples_s']:,.0f} |")  # fmt: skip
    d = r["trainer_demand"]
    for name, value in d.items():
        if name != "flops_per_sample":
            lines.append(f"| trainer demand, paper MLM on one {name} at {args.mfu:.0%} MFU | "
                         f"{value:,.0f} |")  # fmt: skip
    lines.append(f"\n(paper MLM: {d['flops_per_sample'] / 1e9:.0f} GFLOP per training sample)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
