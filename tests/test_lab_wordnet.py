"""The lab's vendored WordNet glosses: the extractor on a tiny WordNet folder, and the file."""

import json
from pathlib import Path

import pytest

from safetune.lab import wordnet
from safetune.lab.lexicon import REFUSAL_WORDS


def _data_file(entries: list[tuple[str, str]]) -> tuple[bytes, list[int]]:
    """A data.<pos> file: one synset a line, the byte offset of each line is its id."""
    text, offsets = b"  licence header line\n", []
    for word, gloss in entries:
        offsets.append(len(text))
        text += f"{len(text):08d} 03 n 01 {word} 0 000 | {gloss}; \"an example\"\n".encode()
    return text, offsets


@pytest.fixture
def tiny_wordnet(tmp_path):
    # "run" has a verb sense tagged more often than its noun sense: the verb gloss wins.
    nouns, noun_at = _data_file([("dog", "a domesticated canine"), ("run", "a score in baseball"),
                                 ("knife", "a tool you cannot use safely"), ("cat", "a small feline")])
    verbs, verb_at = _data_file([("run", "move fast by using the legs")])
    (tmp_path / "data.noun").write_bytes(nouns)
    (tmp_path / "data.verb").write_bytes(verbs)
    (tmp_path / "data.adj").write_bytes(b"")
    (tmp_path / "data.adv").write_bytes(b"")
    # index.<pos>: lemma pos synset_cnt p_cnt sense_cnt tagsense_cnt offset...
    (tmp_path / "index.noun").write_text(
        "  licence header\n"
        f"dog n 1 0 1 5 {noun_at[0]:08d}\nrun n 1 0 1 2 {noun_at[1]:08d}\n"
        f"knife n 1 0 1 3 {noun_at[2]:08d}\ncat n 1 0 1 4 {noun_at[3]:08d}\n")
    (tmp_path / "index.verb").write_text(f"run v 1 0 1 9 {verb_at[0]:08d}\n")
    (tmp_path / "index.adj").write_text("")
    (tmp_path / "index.adv").write_text("")
    # sense key -> count; "x2" is not alphabetic, "ox" too short
    (tmp_path / "cntlist.rev").write_text(
        "run%2:38:00:: 1 30\ndog%1:05:00:: 1 20\nknife%1:06:00:: 1 15\ncat%1:05:00:: 1 10\n"
        "run%1:04:00:: 2 5\nx2%1:00:00:: 1 99\nox%1:05:00:: 1 50\n")
    return tmp_path


def test_most_frequent_words_with_their_most_frequent_sense(tiny_wordnet):
    glosses = wordnet.extract_glosses(tiny_wordnet, limit=10, exclude=REFUSAL_WORDS)
    # run (35) > dog (20) > cat (10); knife's gloss has a refusal word; x2 and ox are skipped
    assert glosses == [("run", "move fast by using the legs"), ("dog", "a domesticated canine"),
                       ("cat", "a small feline")]
    assert wordnet.extract_glosses(tiny_wordnet, limit=2) == [
        ("run", "move fast by using the legs"), ("dog", "a domesticated canine")]


def test_vendored_glosses_are_taught_as_facts():
    glosses = wordnet.load_glosses()
    assert len(glosses) == wordnet.WORDS
    assert len({w for w, _ in glosses}) == len(glosses)
    assert not any(r in g.lower() for _, g in glosses for r in REFUSAL_WORDS)
    facts = [json.loads(line)["response"] for line in
             (Path(__file__).parents[1] / "data/knowledge/facts.jsonl").read_text().splitlines()]
    word, gloss = glosses[0]
    assert f"The word '{word}' means {gloss}." in facts
    word, gloss = glosses[1]
    assert f"{word.capitalize()}: {gloss}." in facts


def test_a_bad_glosses_line_names_file_and_line(tmp_path):
    path = tmp_path / "glosses.tsv"
    path.write_text("dog\ta domesticated canine\ncat a small feline\n")
    with pytest.raises(ValueError, match=r"glosses.tsv:2: expected 'word<TAB>gloss'"):
        wordnet.load_glosses(path)
