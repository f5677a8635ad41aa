"""encdec.xla_decoding: the static greedy loop that trainer=tpu decodes with gives `generate`'s greedy tokens. The loop
is plain torch, so this runs on eager CPU in the default suite (tests/test_xla.py runs it on the XLA device)."""

from __future__ import annotations

import pytest
import torch

from encdec.xla_decoding import greedy_tokens
from test_fused_loss import tiny_pair

pytestmark = pytest.mark.usefixtures("single_thread")


def sources(rows: int = 3, width: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    input_ids = torch.randint(3, 128, (rows, width), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    return input_ids, attention_mask


def padded(tokens: torch.Tensor, width: int, pad: int) -> torch.Tensor:
    """`generate` stops when every row has ended: its tokens padded to the static loop's full width."""
    return torch.nn.functional.pad(tokens, (0, width - tokens.shape[1]), value=pad)


def compare(model, **settings) -> torch.Tensor:
    input_ids, attention_mask = sources()
    expected = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=1, **settings)
    static = greedy_tokens(model, input_ids, attention_mask, num_beams=1, **settings)
    pad = model.generation_config.pad_token_id
    assert static.shape == (3, 1 + settings["max_new_tokens"])
    assert torch.equal(static, padded(expected, static.shape[1], pad)), (static, expected)
    return static


@pytest.mark.parametrize("name", ["bert-bert", "bert-gpt2", "bert-llama-gated"])
def test_greedy_tokens_equal_generate(name):
    model = tiny_pair(name)
    free = compare(model, max_new_tokens=10, no_repeat_ngram_size=0)
    # A random model repeats tokens: the ban must act, as generate's does (n = 1 bans every token already chosen).
    for n in (1, 2, 3):
        banned = compare(model, max_new_tokens=10, no_repeat_ngram_size=n)
        assert n > 1 or not torch.equal(free, banned)
    # Rows that end at different steps: end on a token row 0 chose at its 4th step, then pad (min_new_tokens too).
    eos = int(free[0, 4])
    ended = compare(model, max_new_tokens=10, no_repeat_ngram_size=0, eos_token_id=eos)
    assert (ended[0, 5:] == model.generation_config.pad_token_id).all()
    compare(model, max_new_tokens=10, no_repeat_ngram_size=0, eos_token_id=eos, min_new_tokens=6)


def test_unsupported_settings_are_named_once_and_decoding_stays_greedy():
    model = tiny_pair("bert-gpt2")
    input_ids, attention_mask = sources()
    with pytest.warns(UserWarning, match=r"ignored num_beams=4, repetition_penalty=1.5"):
        beams = greedy_tokens(model, input_ids, attention_mask, num_beams=4, repetition_penalty=1.5, max_new_tokens=4)
    assert torch.equal(beams, greedy_tokens(model, input_ids, attention_mask, max_new_tokens=4))
