"""Tests that kill mutmut survivors of reprolib.tokens (see tests/MUTATION.md); real SD1.4 tokenizer."""
import pytest

from reprolib.tokens import TokenNotFoundError, resolve_nouns, word_spans, word_token_indices


def test_empty_noun_is_named_in_the_error(tokenizer):
    with pytest.raises(TokenNotFoundError, match="^noun '' has no tokens$"):
        word_token_indices(tokenizer, "a teddy bear", "")


def test_hash_marks_are_stripped_from_the_noun_as_the_original_does(tokenizer):
    # '#dog' is tokens '#', 'dog': the decoded tokens with '#' stripped spell 'dog', the noun stripped of '#' too
    assert word_token_indices(tokenizer, "a photo of #dog", "#dog") == [4, 5]


def test_only_spaces_are_removed_before_the_spelling_check(tokenizer):
    # The original removes " " only: a tab in the noun makes its spelling differ from the decoded tokens.
    with pytest.raises(TokenNotFoundError, match=r"^noun 'teddy\\tbear' decodes as 'teddybear' in prompt 'a teddy bear'$"):
        word_token_indices(tokenizer, "a teddy bear", "teddy\tbear")


def test_missing_noun_raises_unless_skipping_is_asked_for(tokenizer):
    with pytest.raises(TokenNotFoundError, match="noun 'cat' not found"):
        resolve_nouns(tokenizer, "a dog on a sofa", ["dog", "cat"])


def test_word_spans_fall_back_to_one_span_per_token(tokenizer):
    # '\x1c' splits words for str.split() but not for CLIP's tokenizer, which keeps it as a token of its own:
    # the per-word count (2) disagrees with the prompt's tokens (3), so every token becomes its own span.
    assert word_spans(tokenizer, "a\x1cdog") == [("a", [1]), ("", [2]), ("dog", [3])]
