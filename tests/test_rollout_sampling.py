"""The shared sampling primitives (grpo.rollout.sampling): the one seed scheme and the one
position-ids rule, checked against the formulas each call site used before they were merged."""

import torch

from grpo.rollout.sampling import distinct_rows, left_pad, position_ids, row_seed


def test_row_seed_is_the_documented_scheme():
    n = 4
    seeds = [row_seed(100, p, n, k) for p in range(3) for k in range(n)]
    assert seeds == list(range(100, 112))  # prompt-major, one stream per row, no overlap
    # a vLLM request for prompt p: vLLM seeds its sample k with request_seed + k
    assert [row_seed(100, 2, n) + k for k in range(n)] == [row_seed(100, 2, n, k) for k in range(n)]
    assert row_seed(None, 2, n, 1) is None


def _masks():
    """Left padding, a real span, trailing padding: the shapes rollouts and batches have."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        b, length = int(torch.randint(1, 5, (1,), generator=gen)), 8
        mask = torch.zeros(b, length, dtype=torch.long)
        for row in range(b):
            start = int(torch.randint(0, length, (1,), generator=gen))
            end = int(torch.randint(start, length + 1, (1,), generator=gen))
            mask[row, start:end] = 1
        yield mask


def test_position_ids_equal_the_learner_rule_exactly():
    # the padded forward's batches: left-padded prompts, right-padded completions
    for mask in _masks():
        assert torch.equal(position_ids(mask), (mask.cumsum(-1) - 1).clamp(min=0))


def test_position_ids_on_left_padding_equal_the_decode_rules_exactly():
    for contexts in ([[5, 6, 7], [8]], [[1], [2, 3], [4, 5, 6, 7]]):
        _, mask = left_pad(contexts, pad_id=0)
        expected = mask.cumsum(-1) - 1
        assert torch.equal(position_ids(mask), expected.masked_fill(mask == 0, 0))  # own loop
        generate_rule = expected.masked_fill(mask == 0, 1)
        assert torch.equal(position_ids(mask, pad=1), generate_rule)


def test_left_pad_and_distinct_rows():
    ids, mask = left_pad([[5, 6], [7]], pad_id=0, extra_columns=1)
    assert ids.tolist() == [[5, 6, 0], [0, 7, 0]] and mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    first, index = distinct_rows(torch.tensor([3, 3, 9, 3, 9]))
    assert first.tolist() == [0, 2] and index.tolist() == [0, 0, 1, 0, 1]
