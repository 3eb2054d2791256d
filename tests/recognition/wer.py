"""Word error rate: the judge of whether audio says the right words (used by the recognition tests)."""

from __future__ import annotations

import re

_NOT_WORD = re.compile(r"[^\w' ]+")


def normalize(text: str) -> list[str]:
    """Lower-cased words with punctuation removed ("Don't stop!" -> ["don't", "stop"]); hyphens split words."""
    cleaned = _NOT_WORD.sub(" ", text.lower().replace("-", " "))
    return [word.strip("'") for word in cleaned.split() if word.strip("'")]


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance over words: substitutions, deletions and insertions, each costing 1."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_word in enumerate(hypothesis, start=1):
            current[j] = min(
                previous[j] + 1,  # deletion
                current[j - 1] + 1,  # insertion
                previous[j - 1] + (ref_word != hyp_word),  # substitution or match
            )
        previous = current
    return previous[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word errors over reference words (can exceed 1 with many insertions); 0 for two empty texts."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else float(len(hyp))
    return edit_distance(ref, hyp) / len(ref)


def corpus_wer(pairs: list[tuple[str, str]]) -> float:
    """Total errors over total reference words of several (reference, hypothesis) pairs."""
    errors = sum(edit_distance(normalize(ref), normalize(hyp)) for ref, hyp in pairs)
    words = sum(len(normalize(ref)) for ref, _ in pairs)
    return errors / words if words else 0.0
