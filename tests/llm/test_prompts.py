"""The LLM's vocabulary and the four task prompts on a hand-made three-item catalogue."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gr_jax.llm import prompts, vocab

TITLES = ["Nitrile lab gloves", "Glass beaker 250 ml", "Digital caliper"]
CATEGORIES = [("Science", "Safety"), ("Science", "Labware"), ("Tools",)]
CODES = np.array([[0, 1, 2, 3], [1, 0, 2, 3], [2, 2, 0, 1]])


@pytest.fixture(scope="module")
def setup():
    tokenizer = vocab.train_text_tokenizer(TITLES + prompts.template_texts(), vocab_size=300, min_frequency=1)
    codes = vocab.add_code_tokens(tokenizer, (4, 4, 4, 4))
    queries = prompts.build_queries(TITLES, CATEGORIES, seed=0, words=2)
    tables = prompts.make_tables(tokenizer, codes, CODES, TITLES, queries, max_title_tokens=48, max_query_tokens=48)
    builder = prompts.PromptBuilder(tables, history_items=2, num_candidates=3, num_items=3)
    batch = {"history": jnp.array([[0, 2, 1], [0, 0, 2]]), "history_mask": jnp.array([[False, True, True],
                                                                                     [False, False, True]]),
             "target": jnp.array([0, 1])}
    return tokenizer, codes, builder, batch, queries


def text(tokenizer, tokens, valid):
    return tokenizer.decode(np.asarray(tokens)[np.asarray(valid)].tolist(), skip_special_tokens=False)


def test_code_tokens_follow_lcrec_names_after_the_text_vocabulary(setup):
    tokenizer, codes, *_ = setup
    assert codes.offset == tokenizer.get_vocab_size(with_added_tokens=True) - 16
    assert tokenizer.token_to_id("<a_0>") == codes.offset
    assert tokenizer.token_to_id("<c_2>") == codes.offset + 8 + 2
    np.testing.assert_array_equal(codes.token_ids(np.array([1, 0, 3, 2])), codes.offset + np.array([1, 4, 11, 14]))
    # Text never splits into a code token, and a code token in text is one token.
    assert tokenizer.encode("<b_3>", add_special_tokens=False).ids == [codes.offset + 7]


def test_sequential_prompt_holds_the_last_history_items_and_answers_with_the_target_codes(setup):
    tokenizer, _, builder, batch, _ = setup
    ex = builder.seq(batch, None)
    assert text(tokenizer, ex.prompt[0], ex.prompt_valid[0]) == (
        "The user interacted with these items in order:<a_2><b_2><c_0><d_1><a_1><b_0><c_2><d_3>"
        "Predict the next item the user will interact with:")
    assert text(tokenizer, ex.prompt[1], ex.prompt_valid[1]).count("<a_") == 1  # one history item
    assert text(tokenizer, ex.response[0], ex.response_valid[0]) == "<a_0><b_1><c_2><d_3></s>"
    # Left-packed: padding first, every prompt ends with the template's last token.
    assert not ex.prompt_valid[1, 0] and bool(ex.prompt_valid[:, -1].all())
    assert int(ex.prompt[0, -1]) == int(ex.prompt[1, -1])


def test_text_tasks_map_titles_to_codes_and_back(setup):
    tokenizer, _, builder, batch, _ = setup
    ex = builder.item2code(batch, None)
    expected = 'An item is titled "Glass beaker 250 ml". What is its item code?'
    assert text(tokenizer, ex.prompt[1], ex.prompt_valid[1]) == expected
    assert text(tokenizer, ex.response[1], ex.response_valid[1]) == "<a_1><b_0><c_2><d_3></s>"
    ex = builder.code2item(batch, None)
    assert text(tokenizer, ex.prompt[0], ex.prompt_valid[0]) == "What is the title of the item<a_0><b_1><c_2><d_3>?"
    assert text(tokenizer, ex.response[0], ex.response_valid[0]) == "Nitrile lab gloves</s>"


def test_query_task_builds_an_intent_from_categories_and_title_words(setup):
    tokenizer, _, builder, batch, queries = setup
    assert queries[0].startswith("something in Safety, Science, like ")
    assert all(w in TITLES[0].split() for w in queries[0].split("like ")[1].split())
    ex = builder.query(batch, None)
    expected = f"A user searches for {queries[0]}. Which item fits the request?"
    assert text(tokenizer, ex.prompt[0], ex.prompt_valid[0]) == expected
    assert text(tokenizer, ex.response[0], ex.response_valid[0]) == "<a_0><b_1><c_2><d_3></s>"


def test_negative_task_lists_the_target_among_distinct_candidates(setup):
    tokenizer, codes, builder, batch, _ = setup
    for seed in range(5):
        candidates = np.asarray(builder.candidates(batch["target"], jax.random.PRNGKey(seed)))
        for row, target in zip(candidates, np.asarray(batch["target"])):
            assert sorted(row) == sorted(set(row)) and target in row and row.min() >= 0 and row.max() < 3
    ex = builder.negative(batch, jax.random.PRNGKey(0))
    prompt = text(tokenizer, ex.prompt[0], ex.prompt_valid[0])
    assert prompt.startswith("The user interacted with these items in order:<a_2><b_2><c_0><d_1><a_1><b_0><c_2><d_3>"
                             "Which of these candidates will the user choose next:")
    assert prompt.count("<a_") == 2 + 3 and "<a_0><b_1><c_2><d_3>" in prompt.split("next:")[1]
    assert text(tokenizer, ex.response[0], ex.response_valid[0]) == "<a_0><b_1><c_2><d_3></s>"


def test_task_rows_follow_the_weights_and_drop_zero_weights():
    rows = prompts.task_rows({"seq": 1.0, "item2code": 0.25, "code2item": 0.25, "query": 0.25, "negative": 0.0}, 14)
    assert rows == {"seq": 8, "item2code": 2, "code2item": 2, "query": 2}
    assert sum(prompts.task_rows({"seq": 1.0, "query": 1e-6}, 7).values()) == 7
    with pytest.raises(ValueError, match="at least one positive weight"):
        prompts.task_rows({"seq": 0.0}, 8)


def test_item_text_targets_average_the_title_token_rows(setup):
    tokenizer, *_ = setup
    table = vocab.random_token_embeddings(tokenizer.get_vocab_size(), 8, seed=0)
    ids, mask = vocab.encode_padded(tokenizer, TITLES, 48)
    targets = vocab.item_text_targets(table, ids, mask)
    first = tokenizer.encode(TITLES[0], add_special_tokens=False).ids
    np.testing.assert_allclose(targets[0], table[first].mean(0), rtol=1e-6)
