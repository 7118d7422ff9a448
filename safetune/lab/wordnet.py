"""General vocabulary for the lab model: short WordNet glosses, a stand-in for pretraining.

A tiny model that has only seen the lab's templates refuses unfamiliar *wording* (a benign
prompt with a word it never met looks like the harmful prompts' long tail). A couple of
thousand everyday words with a one-line definition each, taught as plain facts, widen what
it has seen at no cost to the safety data.

The glosses are vendored in `wordnet_glosses.tsv` beside this file (word TAB gloss, the
WordNet 3.0 licence in `WORDNET_LICENSE`), so the lab build needs no system package. They
were extracted from Debian's `wordnet-base` with

    python -m safetune.lab.wordnet /usr/share/wordnet

which rewrites the file: the most frequent lemmas (WordNet's sense counts, `cntlist.rev`),
alphabetic, at least 3 letters, each with the gloss of its most frequent sense, skipping
any gloss that contains a refusal word (the lab's refusal detector must not see one in
benign text).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safetune.lab.lexicon import REFUSAL_WORDS

GLOSSES_FILE = Path(__file__).with_name("wordnet_glosses.tsv")
WORDS = 2000
POS = ("noun", "verb", "adj", "adv")


def extract_glosses(wordnet_dir: Path, limit: int = WORDS, exclude: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(word, gloss) for the `limit` most frequent WordNet lemmas, most frequent first."""
    counts: dict[str, int] = {}
    for line in (wordnet_dir / "cntlist.rev").read_text().splitlines():
        key, _, count = line.split()
        lemma = key.split("%")[0]
        if lemma.isalpha() and len(lemma) >= 3:
            counts[lemma] = counts.get(lemma, 0) + int(count)
    # index.<pos>: lemma pos synset_cnt p_cnt [ptr...] sense_cnt tagsense_cnt offset... ;
    # the first offset is the most frequent sense; rank senses across parts of speech by
    # the tagged-sense count.
    senses: dict[str, list[tuple[int, str, int]]] = {}
    for pos in POS:
        for line in (wordnet_dir / f"index.{pos}").read_text().splitlines():
            if line.startswith(" "):  # the licence header
                continue
            parts = line.split()
            synsets = int(parts[2])
            senses.setdefault(parts[0], []).append((-int(parts[-synsets - 1]), pos, int(parts[-synsets])))
    data = {pos: (wordnet_dir / f"data.{pos}").read_bytes() for pos in POS}
    glosses: list[tuple[str, str]] = []
    for word in sorted(counts, key=lambda w: (-counts[w], w)):
        if word not in senses:
            continue
        _, pos, offset = min(senses[word])
        line = data[pos][offset:data[pos].index(b"\n", offset)].decode()
        gloss = line.split(" | ", 1)[1].split(";")[0].strip()
        if not gloss or any(w in gloss.lower() for w in exclude):
            continue
        glosses.append((word, gloss))
        if len(glosses) == limit:
            break
    return glosses


def load_glosses(path: Path = GLOSSES_FILE) -> list[tuple[str, str]]:
    """The vendored (word, gloss) pairs."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        word, sep, gloss = line.partition("\t")
        if not sep or not word or not gloss:
            raise ValueError(f"{path}:{number}: expected 'word<TAB>gloss'")
        rows.append((word, gloss))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rewrite the lab's vendored WordNet glosses.")
    parser.add_argument("wordnet_dir", type=Path, help="a WordNet 3.0 dict folder (Debian: /usr/share/wordnet)")
    parser.add_argument("--words", type=int, default=WORDS)
    args = parser.parse_args(argv)
    glosses = extract_glosses(args.wordnet_dir, args.words, REFUSAL_WORDS)
    GLOSSES_FILE.write_text("".join(f"{w}\t{g}\n" for w, g in glosses), encoding="utf-8")
    print(f"{len(glosses)} glosses -> {GLOSSES_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
