"""Noun phrase → token positions in a prompt, exactly as the original training code finds them.

The original (``get_word_idx`` in TokenCompose's ``loss_utils.py``) lower-cases the phrase, encodes
prompt and phrase without the start/end tokens, takes the first position where the phrase's first
token matches and the following tokens match too, adds 1 for ``<|startoftext|>``, and asserts that
the decoded tokens spell the phrase (spaces and ``#`` removed). Its assertion becomes a
:class:`TokenNotFoundError` here, which callers may catch to skip the noun and count the skip.
One deliberate difference: a partial match running past the end of the prompt counts as no match
(the original raised ``IndexError`` there).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


class TokenNotFoundError(ValueError):
    """A noun phrase whose tokens do not occur (as a contiguous run) in the prompt."""


def word_token_indices(tokenizer, text: str, word: str) -> list[int]:
    """Positions (1-based after ``<|startoftext|>``) of `word`'s tokens at its first occurrence in `text`."""
    word = word.lower()
    enc_text = tokenizer.encode(text)
    body = enc_text[1:-1]
    target = tokenizer.encode(word)[1:-1]
    if not target:
        raise TokenNotFoundError(f"noun {word!r} has no tokens")
    first = -1
    for i in range(len(body)):
        if body[i] == target[0] and body[i:i + len(target)] == target:
            first = i
            break
    if first == -1:
        raise TokenNotFoundError(f"noun {word!r} not found in prompt {text!r}")
    idx = [first + 1 + j for j in range(len(target))]
    decoded = "".join(tokenizer.decode([enc_text[i]]).strip("#") for i in idx)
    if decoded != "".join(word.split(" ")).strip("#"):
        raise TokenNotFoundError(f"noun {word!r} decodes as {decoded!r} in prompt {text!r}")
    return idx


@dataclass
class ResolvedNouns:
    """Token positions of the nouns that resolved, and the nouns that did not."""
    indices: list[list[int]] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)      # positions in the input list that resolved
    skipped: list[str] = field(default_factory=list)


def resolve_nouns(tokenizer, text: str, nouns: Sequence[str], skip_missing: bool = False) -> ResolvedNouns:
    """Token positions for each noun; with ``skip_missing`` unresolvable nouns are skipped and listed."""
    out = ResolvedNouns()
    for k, noun in enumerate(nouns):
        try:
            out.indices.append(word_token_indices(tokenizer, text, noun))
            out.kept.append(k)
        except TokenNotFoundError:
            if not skip_missing:
                raise
            out.skipped.append(noun)
    return out


def word_spans(tokenizer, text: str) -> list[tuple[str, list[int]]]:
    """Split a prompt into words with their token positions (a word may span several tokens).

    Used to show one attention map per word. Words are whitespace-separated pieces of the prompt;
    tokens belong to the word whose characters they consume, in order.
    """
    ids = tokenizer.encode(text)[1:-1]
    spans: list[tuple[str, list[int]]] = []
    pos = 1
    for word in text.split():
        n = len(tokenizer.encode(word)[1:-1])
        if n:
            spans.append((word, list(range(pos, pos + n))))
        pos += n
    if pos - 1 != len(ids):
        # punctuation glued differently in context: fall back to one token per span
        spans = [(tokenizer.decode([t]).strip(), [i + 1]) for i, t in enumerate(ids)]
    return spans
