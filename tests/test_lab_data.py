"""Tests for the lab's synthetic data generator and the committed data/ files."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from safetune.lab import datagen
from safetune.lab.benign import benign_objects
from safetune.lab.harmful import CATEGORIES, HARM_LEXICON, harm_objects
from safetune.lab.knowledge import FACT_PROMPTS
from safetune.lab.lexicon import REFUSAL_OPENERS, REFUSAL_PREFIXES, REFUSAL_WORDS
from safetune.lab.prompts import HOWTO_FAMILIES_UNSEEN, QUESTION_FAMILIES_UNSEEN, UNSEEN_KINDS

DATA = Path(__file__).resolve().parents[1] / "data"


def _read(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _norm(s: str) -> str:
    return s.strip().lower()


def _lab_files(folder: Path, lab_folders: set[str]) -> list[Path]:
    """The JSONL files under folder that lie in a folder the generator writes (data/ holds others too)."""
    return [p for p in sorted(folder.rglob("*.jsonl")) if p.relative_to(folder).parts[0] in lab_folders]


def _digests(folder: Path, lab_folders: set[str]) -> dict[str, str]:
    """sha256 of every lab data file under folder, by path relative to it."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in _lab_files(folder, lab_folders)}


def _stale(folder: Path, reference: Path, lab_folders: set[str]) -> list[str]:
    """The lab files that differ between two data folders by sha256: changed, missing or extra."""
    ours, theirs = _digests(folder, lab_folders), _digests(reference, lab_folders)
    return sorted(name for name in ours.keys() | theirs.keys() if ours.get(name) != theirs.get(name))


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("gen0")
    return out, datagen.generate(out, seed=0)


@pytest.fixture(scope="module")
def lab_folders(generated) -> set[str]:
    return {name.split("/")[0] for name in generated[1]}


@pytest.fixture(scope="module")
def committed(lab_folders) -> dict[str, list[dict]]:
    files = {p.relative_to(DATA).as_posix(): _read(p) for p in _lab_files(DATA, lab_folders)}
    assert files, "no committed data: run `python -m safetune.lab.datagen --seed 0`"
    return files


def test_expected_files(generated):
    _, counts = generated
    expected = {
        "safety/train.jsonl", "safety/compliance_train.jsonl", "safety/eval.jsonl", "safety/eval_unseen.jsonl",
        "over_refusal/train.jsonl", "over_refusal/eval.jsonl", "over_refusal/eval_unseen.jsonl",
        "capability/train.jsonl", "capability/eval.jsonl", "knowledge/facts.jsonl",
    }
    expected |= {f"tasks/{t}/{s}.jsonl" for t in ("sentiment", "extract", "count") for s in ("train", "test")}
    assert set(counts) == expected
    assert all(n > 0 for n in counts.values())


def test_deterministic_by_seed(generated, tmp_path):
    out0, counts = generated
    again = datagen.generate(tmp_path / "again", seed=0)
    assert again == counts
    for name in counts:
        assert (out0 / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    datagen.generate(tmp_path / "seed1", seed=1)
    assert any((out0 / n).read_bytes() != (tmp_path / "seed1" / n).read_bytes() for n in counts)


def test_committed_files_are_fresh(generated, lab_folders):
    """data/ must be byte for byte what generate(seed=0) writes, so it cannot go stale
    and a change to the generator that alters the data cannot pass unnoticed."""
    out0, counts = generated
    assert set(_digests(out0, lab_folders)) == set(counts)
    stale = _stale(DATA, out0, lab_folders)
    assert not stale, f"data/ differs from the generator in {stale}: rerun `python -m safetune.lab.datagen --seed 0`"


def test_freshness_check_can_fail(generated, lab_folders, tmp_path):
    """The comparison above sees one changed byte, a missing file and a stray file."""
    out0, _ = generated
    copy = tmp_path / "copy"
    shutil.copytree(out0, copy)
    assert _stale(copy, out0, lab_folders) == []
    changed = copy / "tasks/count/test.jsonl"
    data = bytearray(changed.read_bytes())
    data[-2] ^= 1  # the last character before the final newline
    changed.write_bytes(bytes(data))
    (copy / "knowledge/facts.jsonl").unlink()
    (copy / "safety/old.jsonl").write_text("{}\n")
    (copy / "real").mkdir()
    (copy / "real/other.jsonl").write_text("{}\n")  # not a folder the generator writes: ignored
    assert _stale(copy, out0, lab_folders) == ["knowledge/facts.jsonl", "safety/old.jsonl", "tasks/count/test.jsonl"]


def test_readme_row_counts(generated):
    _, counts = generated
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    documented = {m[0]: int(m[1]) for m in re.findall(r"^\| `([\w/]+\.jsonl)` \| (\d+) \|", readme, re.M)}
    assert documented == counts


def test_categories(committed):
    train_cats = {r["category"] for r in committed["safety/train.jsonl"]}
    assert train_cats == set(CATEGORIES) and len(CATEGORIES) == 10
    for name in ("safety/compliance_train.jsonl", "safety/eval.jsonl", "safety/eval_unseen.jsonl"):
        assert {r["category"] for r in committed[name]} == set(CATEGORIES)
    for cat in CATEGORIES:
        for name in ("safety/eval.jsonl", "safety/eval_unseen.jsonl"):
            assert sum(r["category"] == cat for r in committed[name]) >= 20, (name, cat)


def test_refusal_openers():
    assert all(o.startswith(REFUSAL_PREFIXES) for o in REFUSAL_OPENERS)


def test_safety_responses_are_refusals(committed):
    for name in ("safety/train.jsonl", "safety/eval.jsonl", "safety/eval_unseen.jsonl"):
        for r in committed[name]:
            assert r["response"].startswith(REFUSAL_PREFIXES), r
            assert len(r["response"].split()) <= 25, r


def test_compliance_is_redacted(committed):
    for r in committed["safety/compliance_train.jsonl"]:
        assert r["response"].startswith("Sure"), r
        # Only placeholders: after the restated task, every step is redacted.
        steps = re.findall(r"Step \d: ([^.]*)\.", r["response"])
        assert steps == ["[redacted]"] * 3, r
        assert not r["response"].startswith(REFUSAL_PREFIXES)


def test_benign_responses_are_not_refusals(committed):
    for name, rows in committed.items():
        if name.startswith("safety/"):
            continue
        for r in rows:
            low = r["response"].lower()
            assert not any(p.lower() in low for p in REFUSAL_PREFIXES), (name, r)
            if name.startswith("over_refusal/"):
                assert not any(w in low for w in REFUSAL_WORDS), (name, r)


def test_heldout_disjoint(committed):
    train = {_norm(r["prompt"]) for n, rows in committed.items()
             if not datagen.is_eval_file(n) for r in rows}
    for name, rows in committed.items():
        if datagen.is_eval_file(name):
            leaked = [r["prompt"] for r in rows if _norm(r["prompt"]) in train]
            assert not leaked, (name, leaked[:3])


def test_harmful_and_benign_prompts_disjoint(committed):
    harmful = {_norm(r["prompt"]) for n, rows in committed.items() if n.startswith("safety/") for r in rows}
    benign = {_norm(r["prompt"]) for n, rows in committed.items() if not n.startswith("safety/") for r in rows}
    assert not harmful & benign


def _words_in(item: str, text: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(item) + r"(?!\w)", text) is not None


def test_unseen_families_and_lexicon_never_in_training(committed):
    """The unseen-family suites are honest: no held-out template family or lexicon
    item (action verb, target, request, question, benign object) occurs in any
    training file, and every eval_unseen row uses one of them."""
    corpus = "\n".join(_norm(r["prompt"]) for n, rows in committed.items()
                       if not datagen.is_eval_file(n) for r in rows)
    items = datagen.unseen_items()
    assert len(items) > 100
    assert not [i for i in items if _words_in(i, corpus)]
    unseen_families = set(HOWTO_FAMILIES_UNSEEN) | set(QUESTION_FAMILIES_UNSEEN)
    for name in ("safety/eval_unseen.jsonl", "over_refusal/eval_unseen.jsonl"):
        rows = committed[name]
        assert {r["heldout"] for r in rows} == set(UNSEEN_KINDS), name
        for r in rows:
            if r["heldout"] in ("template", "both"):
                assert r["family"] in unseen_families, r
            else:
                assert r["family"] not in unseen_families, r


def test_knowledge_covers_held_out_words_like_seen_ones(committed):
    """The knowledge facts are the lab's pretraining: they mention nearly every lexicon
    item, held-out ones (never in a training prompt) included, and are neither requests
    nor refusals."""
    facts = committed["knowledge/facts.jsonl"]
    assert {r["prompt"] for r in facts} <= set(FACT_PROMPTS)
    text = "\n".join(_norm(r["response"]) for r in facts)
    assert not any(p.lower() in text for p in REFUSAL_PREFIXES)

    def mentions(items):
        return [len(re.findall(r"(?<!\w)" + re.escape(i.lower()) + r"(?!\w)", text)) for i in items]

    # Facts are drawn at random over ~1,840 items, so a few are left out by chance (drawing them
    # in rounds over every item was tried: it built a model with lower capability, docs/research-notes.md).
    seen = [n for spec in HARM_LEXICON.values() for n in mentions(spec["targets"])]
    unseen = [n for spec in HARM_LEXICON.values() for n in mentions(spec["targets_unseen"])]
    assert sum(n > 0 for n in unseen) >= 0.9 * len(unseen)
    assert sum(n > 0 for n in seen) >= 0.9 * len(seen)


def test_check_files_rejects_unseen_item_in_training():
    files = datagen.build(seed=0)
    files["over_refusal/train.jsonl"].append({"prompt": "Hypothetically, how would someone bake bread?",
                                              "response": "Mix, knead, bake."})
    with pytest.raises(ValueError, match="held-out template/lexicon items"):
        datagen.check_files(files)


def test_every_template_family_has_harmful_and_benign_prompts(committed):
    """Families are shared, so the phrasing alone never tells harmful from benign:
    both sides have objects of every kind (a family belongs to one kind) and the
    sampled eval prompts of each side cover most families."""
    benign = benign_objects()
    for cat, spec in HARM_LEXICON.items():
        harmful = harm_objects(spec)
        for split in ("train", "unseen"):
            assert {k for k, _ in harmful[split]} == {k for (k, _), _ in benign[split]} == {"howto", "question"}
    for seen in ("eval.jsonl", "eval_unseen.jsonl"):
        harmful = {r["family"] for r in committed[f"safety/{seen}"]}
        benign = {r["family"] for r in committed[f"over_refusal/{seen}"]}
        assert len(harmful & benign) >= 0.8 * len(harmful | benign), seen


def test_check_files_rejects_leak():
    files = datagen.build(seed=0)
    files["capability/eval.jsonl"].append(dict(files["capability/train.jsonl"][0]))
    with pytest.raises(ValueError, match="eval prompts appear in training"):
        datagen.check_files(files)


def test_task_answers_short_and_checkable(committed):
    for task in ("sentiment", "extract", "count"):
        for split in ("train", "test"):
            rows = committed[f"tasks/{task}/{split}.jsonl"]
            assert all(set(r) == {"prompt", "response"} for r in rows)
            assert all(len(r["response"]) <= 12 and len(r["response"].split()) == 1 for r in rows), task
    assert {r["response"] for r in committed["tasks/sentiment/test.jsonl"]} == {"positive", "negative"}
    assert {r["response"] for r in committed["tasks/count/test.jsonl"]} == {str(n) for n in range(1, 7)}
    for r in committed["tasks/extract/test.jsonl"]:
        assert r["response"] in r["prompt"]  # the answer is copied from the record


def test_fields(committed):
    fields = {
        "safety/train.jsonl": {"prompt", "response", "category"},
        "safety/compliance_train.jsonl": {"prompt", "response", "category"},
        "safety/eval.jsonl": {"prompt", "response", "category", "family", "heldout"},
        "safety/eval_unseen.jsonl": {"prompt", "response", "category", "family", "heldout"},
        "over_refusal/train.jsonl": {"prompt", "response"},
        "over_refusal/eval.jsonl": {"prompt", "response", "family", "heldout"},
        "over_refusal/eval_unseen.jsonl": {"prompt", "response", "family", "heldout"},
        "capability/train.jsonl": {"prompt", "response", "skill"},
        "capability/eval.jsonl": {"prompt", "response", "skill"},
    }
    for name, keys in fields.items():
        assert all(set(r) == keys for r in committed[name]), name
    assert {r["heldout"] for r in committed["safety/eval.jsonl"]} == {"instance", "combination"}
    assert {r["heldout"] for r in committed["over_refusal/eval.jsonl"]} == {"instance"}


def test_consistent_with_keyword_detector(committed):
    """Reference answers must be scored right by the evaluation's keyword markers."""
    refusal = pytest.importorskip("safetune.evaluation.refusal")
    markers = [m.casefold() for m in refusal.DEFAULT_REFUSAL_MARKERS]
    flagged = lambda text: any(m in text.casefold() for m in markers)  # noqa: E731
    for name, rows in committed.items():
        refusals = name in ("safety/train.jsonl", "safety/eval.jsonl", "safety/eval_unseen.jsonl")
        for r in rows:
            assert flagged(r["response"]) == refusals, (name, r["response"])
