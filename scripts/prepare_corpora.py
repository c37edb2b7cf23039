#!/usr/bin/env python3
"""Split the rendered man pages and the State of the Union addresses into
train/validation/test JSON Lines files, and write or verify MANIFEST.json.

Standard library only. Called by scripts/fetch-assets; usable on its own:

  prepare_corpora.py build  --manpages-dir DIR --sotu-dir DIR --out DIR
                            --source NAME=VERSION ... [--render-failures FILE]
                            [--render-warnings FILE] [--so-redirects FILE]
  prepare_corpora.py verify --out DIR --source NAME=VERSION ...

Split rule (stable when documents are added or removed, no RNG state):
  bucket = int(sha256(f"distill-split-v1:{doc_id}")) mod 100
  bucket < 90 -> train, bucket < 95 -> validation, else test.

Document ids:
  man pages: "<section dir>/<file name without .gz>", e.g. "man2/open.2"
  SOTU:      "<file name without .txt>", e.g. "1790_george_washington_n"

Text normalisation (deterministic): strict UTF-8 decoding, CRLF/CR -> LF,
trailing whitespace removed from every line, leading and trailing blank lines
removed. Documents that are empty afterwards are dropped.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile

SPLIT_SALT = "distill-split-v1"
SPLITS = ("train", "validation", "test")
CORPORA = ("manpages", "sotu")
MANIFEST_FORMAT = 1


def split_of(doc_id):
    digest = hashlib.sha256(f"{SPLIT_SALT}:{doc_id}".encode("utf-8")).digest()
    bucket = int.from_bytes(digest, "big") % 100
    if bucket < 90:
        return "train"
    if bucket < 95:
        return "validation"
    return "test"


def normalise(text):
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def read_text(path):
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SystemExit(f"prepare_corpora: {path} is not valid UTF-8: {e}")


def load_manpages(root):
    """Rendered pages: ROOT/manN/NAME.txt -> id manN/NAME."""
    docs = {}
    dropped_empty = []
    for section in sorted(os.listdir(root)):
        sdir = os.path.join(root, section)
        if not os.path.isdir(sdir):
            continue
        for name in sorted(os.listdir(sdir)):
            if not name.endswith(".txt"):
                continue
            doc_id = f"{section}/{name[:-len('.txt')]}"
            text = normalise(read_text(os.path.join(sdir, name)))
            if text:
                docs[doc_id] = text
            else:
                dropped_empty.append(doc_id)
    return docs, dropped_empty


def load_sotu(root):
    docs = {}
    dropped_empty = []
    for name in sorted(os.listdir(root)):
        if not name.endswith(".txt"):
            continue
        doc_id = name[: -len(".txt")]
        text = normalise(read_text(os.path.join(root, name)))
        if text:
            docs[doc_id] = text
        else:
            dropped_empty.append(doc_id)
    return docs, dropped_empty


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path, data):
    """Write bytes to a temp file in the same directory, fsync, rename."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def parse_sources(pairs):
    sources = {}
    for pair in pairs or []:
        name, sep, version = pair.partition("=")
        if not sep or not name or not version:
            raise SystemExit(f"prepare_corpora: --source expects NAME=VERSION, got {pair!r}")
        sources[name] = version
    return dict(sorted(sources.items()))


def write_corpus(out_dir, corpus, docs):
    files = {}
    by_split = {s: [] for s in SPLITS}
    for doc_id in sorted(docs):
        by_split[split_of(doc_id)].append(doc_id)
    for split in SPLITS:
        ids = by_split[split]
        if not ids:
            raise SystemExit(f"prepare_corpora: {corpus} {split} split would be empty")
        lines = [
            json.dumps({"id": doc_id, "text": docs[doc_id]}, ensure_ascii=False) + "\n"
            for doc_id in ids
        ]
        data = "".join(lines).encode("utf-8")
        name = f"{corpus}.{split}.jsonl"
        atomic_write(os.path.join(out_dir, name), data)
        files[name] = {
            "corpus": corpus,
            "split": split,
            "documents": len(ids),
            "characters": sum(len(docs[i]) for i in ids),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        print(
            f"  wrote {name}: {len(ids)} documents, "
            f"{files[name]['characters']} characters, {len(data)} bytes"
        )
    return files


def read_lines(path):
    if not path or not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return sorted(line.rstrip("\n") for line in f if line.strip())


def cmd_build(args):
    os.makedirs(args.out, exist_ok=True)
    sources = parse_sources(args.source)

    man_docs, man_empty = load_manpages(args.manpages_dir)
    sotu_docs, sotu_empty = load_sotu(args.sotu_dir)
    if not man_docs:
        raise SystemExit(f"prepare_corpora: no rendered man pages under {args.manpages_dir}")
    if not sotu_docs:
        raise SystemExit(f"prepare_corpora: no SOTU texts under {args.sotu_dir}")

    render_failures = read_lines(args.render_failures)
    render_warnings = read_lines(args.render_warnings)
    so_redirects = read_lines(args.so_redirects)

    files = {}
    files.update(write_corpus(args.out, "manpages", man_docs))
    files.update(write_corpus(args.out, "sotu", sotu_docs))

    manifest = {
        "format": MANIFEST_FORMAT,
        "split_rule": (
            f"int(sha256('{SPLIT_SALT}:' + id)) % 100: "
            "<90 train, <95 validation, else test"
        ),
        "sources": sources,
        "corpora": {
            "manpages": {
                "documents": len(man_docs),
                "dropped_empty": man_empty,
                "render_failures": render_failures,
                "render_warnings": render_warnings,
                "dropped_so_redirects": so_redirects,
            },
            "sotu": {
                "documents": len(sotu_docs),
                "dropped_empty": sotu_empty,
            },
        },
        "files": files,
    }
    atomic_write(
        os.path.join(args.out, "MANIFEST.json"),
        (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"),
    )
    print(f"  wrote MANIFEST.json ({len(files)} files)")
    return 0


def cmd_verify(args):
    """Exit 0 when MANIFEST.json exists, matches the wanted sources and every
    listed file has the recorded sha256; exit 1 (with the reason) otherwise."""
    path = os.path.join(args.out, "MANIFEST.json")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        print(f"corpora: {path}: missing")
        return 1
    except (OSError, ValueError) as e:
        print(f"corpora: {path}: unreadable ({e})")
        return 1
    if manifest.get("format") != MANIFEST_FORMAT:
        print("corpora: MANIFEST.json: format differs")
        return 1
    wanted = parse_sources(args.source)
    if manifest.get("sources") != wanted:
        print(f"corpora: MANIFEST.json: sources {manifest.get('sources')} != wanted {wanted}")
        return 1
    expected = {f"{c}.{s}.jsonl" for c in CORPORA for s in SPLITS}
    files = manifest.get("files", {})
    if set(files) != expected:
        print("corpora: MANIFEST.json: file list differs")
        return 1
    for name in sorted(files):
        fpath = os.path.join(args.out, name)
        if not os.path.isfile(fpath):
            print(f"corpora: {name}: missing")
            return 1
        if os.path.getsize(fpath) != files[name].get("bytes"):
            print(f"corpora: {name}: size differs from MANIFEST.json")
            return 1
        if sha256_file(fpath) != files[name].get("sha256"):
            print(f"corpora: {name}: sha256 differs from MANIFEST.json")
            return 1
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("build", help="split corpora and write MANIFEST.json")
    b.add_argument("--manpages-dir", required=True, help="rendered pages: DIR/manN/NAME.txt")
    b.add_argument("--sotu-dir", required=True, help="SOTU texts: DIR/*.txt")
    b.add_argument("--out", required=True, help="output directory (ASSETS_DIR/data)")
    b.add_argument("--source", action="append", metavar="NAME=VERSION", help="source package version, repeatable")
    b.add_argument("--render-failures", help="file listing pages that failed to render, one per line")
    b.add_argument("--render-warnings", help="file listing pages that rendered with warnings, one per line")
    b.add_argument("--so-redirects", help="file listing pages dropped as .so redirects, one per line")
    b.set_defaults(func=cmd_build)

    v = sub.add_parser("verify", help="check MANIFEST.json against the files on disk")
    v.add_argument("--out", required=True)
    v.add_argument("--source", action="append", metavar="NAME=VERSION")
    v.set_defaults(func=cmd_verify)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
