"""Neutral facts about every lexicon item: knowledge/facts.jsonl, the lab's stand-in for pretraining.

The aligned model is taught to refuse requests about *some* words; it can only carry that
to a held-out word ("strangle", "ketamine", "the mayor") if it knows what the word means.
A real model learns that in pretraining. Here it is "Tell me a fact." -> a statement
about a lexicon item, seen and held-out alike, harmful and benign, made from the same
templates, so a held-out item is known exactly as well as a seen one; then a couple of
thousand everyday words with their WordNet gloss (`wordnet.py`). No fact is a request or
a refusal, and no held-out item ever occurs in a training *prompt* (datagen.check_files).
"""

from __future__ import annotations

import random

from safetune.lab.benign import (BENIGN_GROUPS, BENIGN_QUESTIONS, BENIGN_QUESTIONS_UNSEEN, BENIGN_REQUESTS,
                                 BENIGN_REQUESTS_UNSEEN, EVERYDAY_REQUESTS)
from safetune.lab.harmful import HARM_LEXICON
from safetune.lab.prompts import fill
from safetune.lab.wordnet import load_glosses

FACT_PROMPTS: tuple[str, ...] = ("Tell me a fact.", "Tell me something you know.", "Share a fact.",
                                 "Say something true.")
# What each harm category is, in words that echo its refusal reasons.
HARM_DESCRIPTIONS: dict[str, str] = {
    "toxicity": "cruel, hateful talk that hurts people",
    "bias": "unfair discrimination against a group of people",
    "privacy": "a violation of someone's privacy",
    "misinformation": "spreading false information that misleads people",
    "violence": "violence that can seriously hurt someone",
    "cybercrime": "a computer crime that breaks into systems",
    "fraud": "a scam that steals from people",
    "drugs": "illegal drug activity that puts lives at risk",
    "self_harm": "self-harm, and a person who wants it deserves support",
    "harassment": "harassment that frightens people",
}
# What a category's targets are (people unless said otherwise).
TARGET_KINDS: dict[str, str] = {
    "misinformation": "a false claim", "cybercrime": "a computer system", "drugs": "an illegal drug",
    "self_harm": "a detail of a plan to get hurt",
}
HARM_FACTS: tuple[str, ...] = ("To {x} is {d}.", "It is wrong to {x}, because it is {d}.",
                               "The law punishes people who {x}: it is {d}.")
HARM_ITEM_FACTS: tuple[str, ...] = ("Asking {q} is asking about {d}.",)
TARGET_FACTS: tuple[str, ...] = ("{T} is {k}, like {u}.", "Like {u}, {t} is {k}.")
BENIGN_FACTS: tuple[str, ...] = ("To {x} is a normal, safe thing to do.", "Many people {x}.",
                                 "It is fine to {x}; guides explain how.")
BENIGN_TARGET_FACTS: tuple[str, ...] = ("{T} is like {u}.",)
BENIGN_QUESTION_FACTS: tuple[str, ...] = ("Asking {q} is a normal, curious question.",)
FACT_ROWS = 3000


def _fact_makers() -> list:
    """One callable per lexicon item: rng -> a fact about it. Seen and held-out items
    get one maker each, so every item is equally well known."""
    makers = []

    def fact(templates, **fixed):
        return lambda r: fill(r.choice(templates), **{k: (v(r) if callable(v) else v) for k, v in fixed.items()})

    for cat, spec in HARM_LEXICON.items():
        d = HARM_DESCRIPTIONS[cat]
        targets = spec["targets"] + spec["targets_unseen"]
        for action in spec["actions"] + spec["actions_unseen"]:
            makers.append(fact(HARM_FACTS, x=lambda r, a=action, ts=targets: a.format(t=r.choice(ts)), d=d))
        for request in spec["requests"] + spec["requests_unseen"]:
            makers.append(fact(HARM_FACTS, x=request, d=d))
        for question in spec["questions"] + spec["questions_unseen"]:
            makers.append(fact(HARM_ITEM_FACTS, q=f"'{question}'", d=d))
        kind = TARGET_KINDS.get(cat, "a person")
        for target in targets:
            others = [t for t in spec["targets"] if t != target]
            makers.append(lambda r, t=target, o=others, k=kind: fill(r.choice(TARGET_FACTS), t=t, k=k, u=r.choice(o)))
    for group in BENIGN_GROUPS:
        for target in group["targets"] + group["unseen"]:
            x = group["phrase"].format(t=target)
            makers.append(fact(BENIGN_FACTS, x=x))
            others = [t for t in group["targets"] if t != target]
            makers.append(lambda r, t=target, o=others: fill(r.choice(BENIGN_TARGET_FACTS), t=t, u=r.choice(o)))
    for phrase, everyday in EVERYDAY_REQUESTS.items():
        makers += [fact(BENIGN_FACTS, x=phrase.format(t=t)) for t in everyday]
    for request, _ in BENIGN_REQUESTS + BENIGN_REQUESTS_UNSEEN:
        makers.append(fact(BENIGN_FACTS, x=request))
    for question, answer in BENIGN_QUESTIONS + BENIGN_QUESTIONS_UNSEEN:
        makers.append(fact(BENIGN_QUESTION_FACTS, q=f"'{question}'"))
        makers.append(lambda r, a=answer: a)
    return makers


def make_knowledge(rng: random.Random) -> dict[str, list[dict]]:
    """knowledge/facts: 'Tell me a fact.' -> a neutral statement about a lexicon item."""
    makers = _fact_makers()
    rows, seen = [], set()
    for _ in range(50 * FACT_ROWS):
        if len(rows) == FACT_ROWS:
            break
        text = rng.choice(makers)(rng)
        if text not in seen:
            seen.add(text)
            rows.append({"prompt": rng.choice(FACT_PROMPTS), "response": text})
    # General vocabulary (safetune/lab/wordnet.py says why): two phrasings, alternating.
    for i, (word, gloss) in enumerate(load_glosses()):
        text = f"{word.capitalize()}: {gloss}." if i % 2 else f"The word '{word}' means {gloss}."
        rows.append({"prompt": rng.choice(FACT_PROMPTS), "response": text})
    return {"knowledge/facts.jsonl": rows}
