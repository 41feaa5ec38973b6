import pytest

from reprolib.tokens import TokenNotFoundError, resolve_nouns, word_spans, word_token_indices


def test_single_and_multi_token_nouns(tokenizer):
    text = "A teddy bear sits on a bed next to a teddy bear."
    assert word_token_indices(tokenizer, text, "teddy bear") == [2, 3]      # first occurrence
    assert word_token_indices(tokenizer, text, "bed") == [7]
    assert word_token_indices(tokenizer, text, "Teddy Bear") == [2, 3]      # case-insensitive


def test_word_split_into_several_tokens(tokenizer):
    text = "a photo of a surfboard and a skateboard"
    idx = word_token_indices(tokenizer, text, "skateboard")
    ids = tokenizer.encode(text)
    assert "".join(tokenizer.decode([ids[i]]) for i in idx) == "skateboard"


def test_missing_noun_is_a_catchable_error_and_can_be_skipped(tokenizer):
    text = "a dog on a sofa"
    with pytest.raises(TokenNotFoundError, match="noun 'cat' not found"):
        word_token_indices(tokenizer, text, "cat")
    r = resolve_nouns(tokenizer, text, ["dog", "cat", "sofa"], skip_missing=True)
    assert r.indices == [[2], [5]] and r.kept == [0, 2] and r.skipped == ["cat"]


def test_partial_match_at_end_is_not_a_match(tokenizer):
    # the phrase's first token ends the prompt: the original raised IndexError here
    with pytest.raises(TokenNotFoundError):
        word_token_indices(tokenizer, "a photo of a teddy", "teddy bear")


def test_word_spans_cover_every_token_once(tokenizer):
    spans = word_spans(tokenizer, "A tiger wearing an astronaut suit and drinking a cup of coffee")
    assert [w for w, _ in spans][:3] == ["A", "tiger", "wearing"]
    flat = [i for _, idx in spans for i in idx]
    assert flat == list(range(1, len(tokenizer.encode("A tiger wearing an astronaut suit and drinking a cup of coffee")) - 1))


def test_all_training_records_resolve(tokenizer, metadata_records):
    """Every (caption, noun) pair of the authors' 4,526 records, resolved as the training code does."""
    assert len(metadata_records) == 4526
    total = resolved = with_mask = with_mask_resolved = 0
    failures = []
    for rec in metadata_records:
        for noun, mask in rec["attn_list"]:
            total += 1
            with_mask += mask is not None
            try:
                word_token_indices(tokenizer, rec["text"], noun)
                resolved += 1
                with_mask_resolved += mask is not None
            except TokenNotFoundError:
                failures.append((rec["file_name"], noun))
    print(f"\nresolved (caption, noun) pairs: {resolved}/{total}; with a mask: {with_mask_resolved}/{with_mask}; "
          f"unresolved examples: {failures[:5]}")
    assert total == 15156 and with_mask == 13634
    assert resolved == total  # the original training asserts on any miss, so all must resolve
